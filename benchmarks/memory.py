"""Memory of a training step: the bytes each encoder layer keeps for backward, and the device's peak.

``saved_bytes_per_token_per_layer`` counts, with ``torch.autograd.graph.saved_tensors_hooks``, every
tensor autograd keeps while the encoder layers run forward (parameters excluded, a tensor saved twice
counted once per storage), divided by layers and tokens. It works on any device; the goal is that fastbert keeps
at most 0.6x what transformers keeps (dropout on, training mode).
"""

from __future__ import annotations

import torch
from torch import nn


def saved_bytes(run, exclude=(), counting=lambda: True) -> int:
    """Bytes of the tensors autograd keeps for backward while ``run()`` executes, per storage (views of
    one buffer, e.g. q/k/v of a packed QKV, count once), leaving out the storages of the tensors in
    ``exclude`` (parameters) and whatever is saved while ``counting()`` is false."""
    excluded = {t.untyped_storage().data_ptr() for t in exclude}
    kept: dict = {}

    def pack(t):
        storage = t.untyped_storage()
        if counting() and storage.data_ptr() not in excluded:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return sum(kept.values())


def saved_bytes_per_token_per_layer(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> float:
    """Bytes kept for backward per real token and encoder layer by one training forward of ``model``."""
    layers = _encoder_layers(model)
    inside = []

    def enter(*_):
        inside.append(True)

    def leave(*_):
        inside.pop()

    handles = []
    for layer in layers:
        handles.append(layer.register_forward_pre_hook(enter))
        handles.append(layer.register_forward_hook(leave))
    was_training = model.training
    try:
        model.train()
        total = saved_bytes(lambda: model(input_ids=input_ids, attention_mask=attention_mask),
                            exclude=list(model.parameters()), counting=lambda: bool(inside))
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return total / int(attention_mask.sum()) / len(layers)


def _encoder_layers(model: nn.Module) -> list:
    encoder = next(m for m in model.modules() if hasattr(m, "layer") and isinstance(m.layer, nn.ModuleList))
    return list(encoder.layer)


def peak_training_memory(step, device: torch.device) -> int | None:
    """Peak device memory in bytes while ``step()`` runs (CUDA); None elsewhere."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device)
