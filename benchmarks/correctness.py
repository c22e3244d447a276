"""How exact fastbert is: its error against a float64 reference next to transformers' own error.

For one model (the real checkpoint on real sentences, or BERT-base geometry with random weights), one
dtype and one fastbert backend: the max abs error of the last hidden states (real tokens only) and of
the pooled output, and the max error of the parameter gradients of one training step relative to the
largest gradient, each for fastbert and for transformers (``sdpa``) in that dtype, both against the
same weights run by transformers in float64. Dropout is off so both compute the same function.
"""

from __future__ import annotations

import copy
import os

import torch
import transformers

import fastbert


def _errors(model, exact_out, exact_grads, ids, mask, dtype) -> dict:
    model = model.to(dtype)
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, attention_mask=mask)
    keep = mask.bool()
    hidden = (out.last_hidden_state.double() - exact_out.last_hidden_state)[keep].abs().max().item()
    loss = out.last_hidden_state[keep].float().pow(2).mean()
    pooled = None  # ELECTRA and DistilBERT have no pooler
    if _pooled(exact_out) is not None:
        pooled = (out.pooler_output.double() - exact_out.pooler_output).abs().max().item()
        loss = loss + out.pooler_output.float().sum()
    loss.backward()
    scale = max(g.abs().max().item() for g in exact_grads.values())
    grads = max((p.grad.double() - exact_grads[n]).abs().max().item()
                for n, p in model.named_parameters() if p.grad is not None) / scale
    return {"hidden": hidden, "pooled": pooled, "grad": grads}


def compare(reference: transformers.BertModel, ids, mask, dtype, backend: str) -> dict:
    """Errors of fastbert and of transformers in ``dtype`` against ``reference`` run in float64."""
    exact = copy.deepcopy(reference).double().train()
    _disable_dropout(exact)
    exact_out = exact(input_ids=ids, attention_mask=mask)
    keep = mask.bool()
    loss = exact_out.last_hidden_state[keep].pow(2).mean()
    (loss + exact_out.pooler_output.sum() if _pooled(exact_out) is not None else loss).backward()
    exact_grads = {n: p.grad for n, p in exact.named_parameters() if p.grad is not None}

    theirs = copy.deepcopy(reference).train()
    _disable_dropout(theirs)
    ours = fastbert.optimize(copy.deepcopy(theirs))
    saved = os.environ.get("FASTBERT_BACKEND")
    os.environ["FASTBERT_BACKEND"] = backend
    try:
        result = {"fastbert": _errors(ours, exact_out, exact_grads, ids, mask, dtype)}
    finally:
        if saved is None:
            os.environ.pop("FASTBERT_BACKEND")
        else:
            os.environ["FASTBERT_BACKEND"] = saved
    result["transformers"] = _errors(theirs, exact_out, exact_grads, ids, mask, dtype)
    return result


def _pooled(out):
    return getattr(out, "pooler_output", None)


def _disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


def real_checkpoint_batch(path: str, sentences: list[str], device):
    """The checkpoint as a transformers ``sdpa`` base model (BERT or another family fastbert runs) and a
    padded batch of ``sentences``."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    model = transformers.AutoModel.from_pretrained(path, attn_implementation="sdpa").to(device)
    return model, batch["input_ids"].to(device), batch["attention_mask"].to(device)


def random_bert_base(layers: int, batch: int, seqlen: int, device, seed: int = 0):
    """BERT-base geometry (hidden 768, 12 heads, intermediate 3072) with random weights, and a batch
    with lengths uniform in [seqlen/4, seqlen], right-padded."""
    return random_model({}, layers, batch, seqlen, device, seed)


def random_model(geometry: dict, layers: int, batch: int, seqlen: int, device, seed: int = 0):
    """A ``sdpa`` BertModel with random weights at ``geometry`` (``BertConfig`` fields; BERT-base where
    left out) and ``layers`` layers, and a batch with lengths uniform in [seqlen/4, seqlen], right-padded
    (the first one full)."""
    torch.manual_seed(seed)
    config = transformers.BertConfig(**{**geometry, "num_hidden_layers": layers}, attn_implementation="sdpa")
    model = transformers.BertModel(config).to(device)
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(max(1, seqlen // 4), seqlen + 1, (batch,), generator=gen)
    lengths[0] = seqlen
    ids = torch.randint(1000, config.vocab_size, (batch, seqlen), generator=gen)
    mask = (torch.arange(seqlen)[None, :] < lengths[:, None]).long()
    return model, (ids * mask).to(device), mask.to(device)
