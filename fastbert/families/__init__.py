"""The BERT family's other members on fastbert's one encoder core (:mod:`fastbert.modeling`).

Each module here is a thin adapter: the family's embeddings and position ids, its module names, its heads.
Importing this package registers every family, so :func:`fastbert.optimize` and ``fastbert.AutoModel*``
know them all.
"""

from __future__ import annotations

from types import ModuleType
from typing import Optional

# Nothing here imports torch at load time: the commands' checks read FAMILY_MODULES before any work.

# config.model_type -> the module of the family that runs it
FAMILY_MODULES = {
    "bert": "fastbert.modeling",
    "roberta": "fastbert.families.roberta",
    "xlm-roberta": "fastbert.families.xlm_roberta",
    "camembert": "fastbert.families.camembert",
    "electra": "fastbert.families.electra",
    "distilbert": "fastbert.families.distilbert",
}

# The families whose position ids count from the padding index (RoBERTa's embeddings): one architecture,
# so their checkpoints load into each other's classes as in transformers.
POSITIONS_FROM_PADDING = ("roberta", "xlm-roberta", "camembert")


def position_offset(config) -> int:
    """The first position id of a sequence: ``pad_token_id + 1`` for the families of
    ``POSITIONS_FROM_PADDING``, 0 for the rest."""
    return config.pad_token_id + 1 if getattr(config, "model_type", None) in POSITIONS_FROM_PADDING else 0


def longest_sequence(config) -> int:
    """The most tokens a sequence without padding may hold: ``config.max_position_embeddings`` less the
    position ids before its first token's (RoBERTa: 514 positions take 512 tokens)."""
    return config.max_position_embeddings - position_offset(config)


def bert_shaped_family(hf_module: ModuleType, prefix: str, namespace: dict, heads: dict,
                       model_core: Optional[type] = None) -> None:
    """Defines, in ``namespace`` (a family module's globals), the fastbert classes of a family whose
    modules carry BERT's names (RoBERTa, XLM-RoBERTa, ELECTRA): each subclasses transformers' class of that
    name in ``hf_module`` with the core's forward.

    heads: head class name -> :func:`fastbert.modeling.head_forward` options (None: transformers' forward
    as it is); model_core: the base model's core (the family's position ids, embeddings, outputs; BERT's
    by default)."""
    from fastbert.modeling import (STACK_READERS, AttentionCore, BertModelCore, DenseResidualLayerNormCore,
                                   EmbeddingsCore, EncoderCore, IntermediateCore, LayerCore, PreTrainedCore,
                                   SelfAttentionCore, bert_layer_reader, converts, finish_family, head_forward)

    model_core = BertModelCore if model_core is None else model_core

    def define(name: str, bases: tuple, role: Optional[str] = None, register: bool = True,
               attributes: Optional[dict] = None) -> type:
        hf_class = getattr(hf_module, name)
        cls = type(name, (*bases, hf_class), {"__module__": namespace["__name__"], "__qualname__": name,
                                              "__doc__": f"transformers' ``{name}`` on fastbert's fused ops.",
                                              **(attributes or {})})
        if register:
            converts(hf_class, role)(cls)
        namespace[name] = cls
        return cls

    embeddings_and_encoder = [("Embeddings", EmbeddingsCore, "embeddings"),
                              ("SelfAttention", SelfAttentionCore, "self_attention"),
                              ("SelfOutput", DenseResidualLayerNormCore, "self_output"),
                              ("Output", DenseResidualLayerNormCore, "output"),
                              ("Attention", AttentionCore, "attention"),
                              ("Intermediate", IntermediateCore, "intermediate"),
                              ("Layer", LayerCore, "layer"),
                              ("Encoder", EncoderCore, "encoder")]
    made = {role: define(prefix + suffix, (core,), role) for suffix, core, role in embeddings_and_encoder}
    STACK_READERS[made["layer"]] = bert_layer_reader(made["attention"], made["intermediate"], made["output"],
                                                     made["self_attention"], made["self_output"])
    pretrained = define(f"{prefix}PreTrainedModel", (PreTrainedCore,), register=False)
    define(f"{prefix}Model", (model_core, pretrained))
    for name, options in heads.items():
        forward = {"forward": head_forward(getattr(hf_module, name), **options)} if options is not None else {}
        define(name, (pretrained,), attributes=forward)
    finish_family(namespace)


def load_all() -> None:
    """Imports every family module (registering its classes)."""
    import importlib

    for module in FAMILY_MODULES.values():
        importlib.import_module(module)
