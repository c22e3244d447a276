"""``fastbert.warmup``: tune the kernels for every batch shape a run will meet, before it starts.

The Triton kernels are autotuned per shape bucket (the next power of two of the longest sequence for
attention, of the token count for the feed-forward GEMMs), the first time a bucket is seen. Tuning
takes a moment, and must not happen inside a CUDA-graph capture or in the middle of a latency-bound
service; the timings are kept on disk (Triton's autotune cache), so later processes skip it.
"""

from __future__ import annotations

import time
from typing import Optional

import torch
from torch import nn

from fastbert.families import longest_sequence


def warmup_shapes(max_tokens: int, max_seqlen: int, min_seqlen: int = 16) -> list[tuple[int, int]]:
    """``(batch, seqlen)`` shapes that cover every tuning bucket up to ``max_tokens`` tokens per batch
    and ``max_seqlen`` tokens per sequence: single sequences of 1, 2, 4 and 8 tokens, then each
    power-of-two length from ``min_seqlen`` (and ``max_seqlen`` itself), each with every power-of-two
    token count it can fill."""
    if max_tokens < 1 or max_seqlen < 1:
        raise ValueError(f"warmup: max_tokens and max_seqlen must be >= 1, got {max_tokens} and {max_seqlen}")
    # one short sequence per token bucket below min_seqlen (short queries: 1, 2, 4, 8 tokens)
    shapes = [(1, n) for n in (1, 2, 4, 8) if n < min_seqlen and n <= min(max_tokens, max_seqlen)]
    lengths, length = [], min(min_seqlen, max_seqlen)
    while length < max_seqlen:
        lengths.append(length)
        length *= 2
    lengths.append(max_seqlen)
    for length in lengths:
        batch = 1
        while batch * length <= max_tokens:
            shapes.append((batch, length))
            batch *= 2
        if shapes[-1][1] != length:
            shapes.append((1, length))  # one sequence longer than max_tokens still gets its length bucket
    return shapes


def _encoder(model: nn.Module):
    """The encoder itself (``base_model``: no task head, which may want other input shapes, e.g.
    multiple choice, or vocabulary-sized outputs) of the first transformers model in ``model``."""
    from transformers import PreTrainedModel

    found = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if found is None:
        raise TypeError(f"warmup: model must be or contain a transformers model, got {type(model).__name__}")
    return found.base_model


def warmup(model: nn.Module, max_tokens: int = 8192, dtype: Optional[torch.dtype] = None,
           max_seqlen: Optional[int] = None, train: Optional[bool] = None) -> dict:
    """Run ``model`` once on each shape of :func:`warmup_shapes`, so every kernel is tuned (and compiled)
    for the batches that follow; the model's mode, gradients and RNG state are left as they were.

    Args:
        model: a fastbert model, a transformers model converted by ``fastbert.optimize``, or a module
            holding one (e.g. a sentence-transformers model).
        max_tokens: the most real tokens a batch will hold.
        dtype: the dtype it will run in (autocast when it differs from the weights'); default the weights'.
        max_seqlen: the longest sequence (default the most the model's positions take:
            ``max_position_embeddings``, less 2 for RoBERTa's).
        train: also run backward (default: whether the model is in training mode).
    Returns:
        ``{"shapes": [(batch, seqlen), ...], "seconds": float}``.
    """
    encoder = _encoder(model)
    config = encoder.config
    longest = longest_sequence(config)
    max_seqlen = max_seqlen or longest
    if max_seqlen > longest:
        raise ValueError(f"warmup: max_seqlen {max_seqlen} exceeds the {longest} tokens the model's "
                         f"max_position_embeddings={config.max_position_embeddings} take")
    weight = next(encoder.parameters())
    device, dtype = weight.device, dtype or weight.dtype
    train = model.training if train is None else train
    shapes = warmup_shapes(max_tokens, max_seqlen)
    grads = {p: p.grad for p in encoder.parameters()}  # set aside: backward would add into them in place
    for p in grads:
        p.grad = None
    rng = torch.random.get_rng_state(), (torch.cuda.get_rng_state_all() if device.type == "cuda" else None)
    modes = {m: m.training for m in encoder.modules()}
    start = time.perf_counter()
    try:
        encoder.train(train)  # dropout on when training: its kernels are tuned apart
        for batch, length in shapes:
            _run_once(encoder, batch, length, config.vocab_size, device, dtype, weight.dtype, train)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    finally:
        for m, training in modes.items():
            m.training = training
        for p, g in grads.items():
            p.grad = g
        torch.random.set_rng_state(rng[0])
        if rng[1] is not None:
            torch.cuda.set_rng_state_all(rng[1])
    return {"shapes": shapes, "seconds": time.perf_counter() - start}


def _run_once(encoder, batch: int, length: int, vocab: int, device, dtype, weight_dtype, train: bool) -> None:
    ids = torch.randint(0, vocab, (batch, length), device=device)
    mask = torch.ones(batch, length, dtype=torch.long, device=device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != weight_dtype)
    with torch.set_grad_enabled(train), autocast:
        first = encoder(input_ids=ids, attention_mask=mask)[0]
    if train:
        first.float().sum().backward()
