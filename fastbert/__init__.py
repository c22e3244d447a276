"""fastbert: BERT-family encoders on fused Triton kernels, HF-exact and padding-free.

Swap one import (``from fastbert import BertForSequenceClassification``, ``RobertaModel``,
``AutoModelForTokenClassification``, ...) or call ``fastbert.optimize(model)`` on a
transformers/sentence-transformers model you already have (BERT, RoBERTa, XLM-RoBERTa, ELECTRA, DistilBERT).

The names below load on first use (``import fastbert`` alone imports neither torch nor transformers,
so the ``fastbert`` command answers ``--help`` at once).
"""

from fastbert._lazy import lazy_exports

__version__ = "0.1.0"

# name -> the module it comes from
_EXPORTS = {
    **dict.fromkeys(("AutoTokenizer", "BertConfig", "BertTokenizer", "BertTokenizerFast"), "transformers"),
    **dict.fromkeys(("BertForMaskedLM", "BertForMultipleChoice", "BertForNextSentencePrediction",
                     "BertForPreTraining", "BertForQuestionAnswering", "BertForSequenceClassification",
                     "BertForTokenClassification", "BertModel", "BertPreTrainedModel"), "fastbert.modeling"),
    **{f"{prefix}{suffix}": module
       for prefix, module in (("Roberta", "fastbert.families.roberta"), ("XLMRoberta", "fastbert.families.xlm_roberta"),
                              ("Camembert", "fastbert.families.camembert"))
       for suffix in ("Model", "PreTrainedModel", "ForSequenceClassification", "ForTokenClassification",
                      "ForQuestionAnswering", "ForMaskedLM", "ForMultipleChoice")},
    **dict.fromkeys(("ElectraModel", "ElectraPreTrainedModel", "ElectraForSequenceClassification",
                     "ElectraForTokenClassification", "ElectraForQuestionAnswering", "ElectraForPreTraining",
                     "ElectraForMaskedLM", "ElectraForMultipleChoice"), "fastbert.families.electra"),
    **dict.fromkeys(("DistilBertModel", "DistilBertPreTrainedModel", "DistilBertForSequenceClassification",
                     "DistilBertForTokenClassification", "DistilBertForQuestionAnswering", "DistilBertForMaskedLM",
                     "DistilBertForMultipleChoice"), "fastbert.families.distilbert"),
    **dict.fromkeys(("AutoModel", "AutoModelForSequenceClassification", "AutoModelForTokenClassification",
                     "AutoModelForQuestionAnswering", "AutoModelForMaskedLM", "AutoModelForMultipleChoice",
                     "AutoModelForPreTraining", "AutoModelForNextSentencePrediction"), "fastbert.auto"),
    "optimize": "fastbert.patch",
    "warmup": "fastbert.tuning",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports("fastbert", _EXPORTS, globals())
