"""CamemBERT on fastbert's encoder core: RoBERTa's adapter on transformers' CamemBERT classes."""

from transformers.models.camembert import modeling_camembert as hf

from fastbert.families import bert_shaped_family
from fastbert.families.roberta import HEADS, RobertaModelCore

bert_shaped_family(hf, "Camembert", globals(), {f"Camembert{name}": options for name, options in HEADS.items()},
                   model_core=RobertaModelCore)
