"""``fastbert.optimize``: convert a model the user already has, in place."""

from __future__ import annotations

import warnings
from typing import Optional

from torch import nn
from transformers.modeling_utils import PreTrainedModel

from fastbert import families
from fastbert.modeling import FASTBERT_CLASSES, EncoderModelCore, PreTrainedCore, convert_modules


def optimize(model: nn.Module, cuda_graphs: Optional[bool] = None) -> nn.Module:
    """Runs a transformers BERT-family model on fastbert's fused ops; returns the same object.

    ``cuda_graphs=True`` also replays its inference calls on CUDA through CUDA graphs, captured once per
    bucket of (tokens, sequences, longest length), each the next power of two
    (:mod:`fastbert.cuda_graphs`); training and other calls run as without. ``False`` turns them off;
    None (default) leaves them as they are.

    Accepts a transformers BERT, RoBERTa, XLM-RoBERTa, CamemBERT, ELECTRA or DistilBERT model (the base
    model or any of the heads fastbert has) or any module containing one (a sentence-transformers
    ``SentenceTransformer``, a custom wrapper). The conversion happens in place: the same parameter objects
    stay (weights, device, dtype, ``requires_grad``, optimizer references), and so do train/eval mode and
    hooks. Calling it again is a no-op. A base model inside a transformers head fastbert does not have
    (``RobertaForCausalLM``, ``BertLMHeadModel``, a ``BertPreTrainedModel`` subclass of one's own) runs on the
    fused ops without packing, since that head may read padded positions; a warning says so.

    Raises:
        TypeError: ``model`` is not an ``nn.Module`` or holds no model of a supported family.
        ValueError: the config uses a setting fastbert cannot run exactly (decoder, cross-attention,
            non-absolute positions, an activation other than exact GELU).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fastbert.optimize expects a torch.nn.Module, got {type(model).__name__}")
    families.load_all()
    has_model = any(isinstance(m, PreTrainedCore) or (isinstance(m, PreTrainedModel) and type(m) in FASTBERT_CLASSES)
                    for m in model.modules())
    if not has_model:
        raise TypeError(f"fastbert.optimize expects a BERT-family model (BERT, RoBERTa, XLM-RoBERTa, CamemBERT, "
                        f"ELECTRA or DistilBERT: the base model, a head, or a module containing one), "
                        f"got {type(model).__name__}")
    if convert_modules(model):
        for head in model.modules():
            base = getattr(head, "base_model", None)
            if isinstance(base, EncoderModelCore) and getattr(base, "_exact_for_head", None) == type(head).__name__:
                warnings.warn(f"fastbert.optimize: {type(head).__name__} is not a head fastbert has, so its "
                              f"{type(base).__name__} runs without packing (transformers' values at padded "
                              f"positions, which that head may read)", stacklevel=2)
    if cuda_graphs is not None:
        for module in model.modules():
            if isinstance(module, EncoderModelCore):
                module.use_cuda_graphs(cuda_graphs)
    return model
