"""fastbert: BERT-family encoders on fused Triton kernels, HF-exact and padding-free.

Swap one import (``from fastbert import BertForSequenceClassification``) or call
``fastbert.optimize(model)`` on a transformers/sentence-transformers model you already have.
"""

from transformers import AutoTokenizer, BertConfig, BertTokenizer, BertTokenizerFast

from fastbert.modeling import (
    BertForMaskedLM,
    BertForMultipleChoice,
    BertForNextSentencePrediction,
    BertForPreTraining,
    BertForQuestionAnswering,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    BertPreTrainedModel,
)
from fastbert.patch import optimize
from fastbert.warmup import warmup

__version__ = "0.1.0"

__all__ = [
    "AutoTokenizer",
    "BertConfig",
    "BertForMaskedLM",
    "BertForMultipleChoice",
    "BertForNextSentencePrediction",
    "BertForPreTraining",
    "BertForQuestionAnswering",
    "BertForSequenceClassification",
    "BertForTokenClassification",
    "BertModel",
    "BertPreTrainedModel",
    "BertTokenizer",
    "BertTokenizerFast",
    "optimize",
    "warmup",
]
