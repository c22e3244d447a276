"""XLM-RoBERTa (multilingual-e5, bge-m3, bge-reranker) on fastbert's encoder core: RoBERTa's adapter on
transformers' XLM-RoBERTa classes (its 250k-token vocabulary is only a larger table)."""

from transformers.models.xlm_roberta import modeling_xlm_roberta as hf

from fastbert.families import bert_shaped_family
from fastbert.families.roberta import HEADS, RobertaModelCore

bert_shaped_family(hf, "XLMRoberta", globals(), {f"XLMRoberta{name}": options for name, options in HEADS.items()},
                   model_core=RobertaModelCore)
