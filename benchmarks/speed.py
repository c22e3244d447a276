"""End-to-end speed: inference over a grid of batch sizes and lengths, and one training step.

Every case runs each implementation on the same weights and inputs: transformers ``eager`` and
``sdpa``, ``torch.compile`` of transformers, fastbert, and on CUDA ``torch.compile(fastbert,
mode="reduce-overhead")``. Timing: ``triton.testing.do_bench`` on CUDA (its median, warm-up, L2 flushed
between runs), the speed-up the ratio of the medians; on the CPU the implementations run interleaved, run
by run, and each figure is the median, with the speed-up the median of the run-by-run ratios against
transformers ``sdpa``. Every row says how it was timed (:func:`timing`): the fastbert backend
(``FASTBERT_BACKEND``) and, on the CPU, the number of timed runs its median is of.
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch
import transformers

import fastbert

REFERENCE = "transformers-sdpa"


def make_batch(kind: str, batch: int, max_len: int, vocab: int, seed: int = 0):
    """``(input_ids, attention_mask)``: every sequence ``max_len`` long (``full``), or lengths uniform in
    ``[max_len/4, max_len]`` (``variable``, right-padded, the longest one full)."""
    gen = torch.Generator().manual_seed(seed + batch + max_len)
    if kind == "full":
        lengths = torch.full((batch,), max_len)
    else:
        lengths = torch.randint(max(1, max_len // 4), max_len + 1, (batch,), generator=gen)
        lengths[0] = max_len
    ids = torch.randint(1000, vocab, (batch, max_len), generator=gen)
    mask = (torch.arange(max_len)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def inference_models(reference: transformers.BertModel, device, compile_models: bool,
                     compile_backend: str = "inductor") -> dict:
    """name -> callable(ids, mask), all on ``reference``'s weights, in eval mode.

    ``compile_backend`` is torch.compile's backend; ``"eager"`` (Dynamo tracing only, seconds instead of
    minutes) walks the compiled path on machines where inductor's timings are not the point.
    ``compile(fastbert)`` runs where it means something: on CUDA (inductor, CUDA graphs), or with a
    backend other than inductor."""
    def hf(impl):
        model = copy.deepcopy(reference)
        model.config._attn_implementation = impl
        return model.to(device).eval()

    sdpa = hf("sdpa")
    models = {"transformers-eager": hf("eager"), REFERENCE: sdpa}
    if compile_models:
        models["compile(transformers)"] = torch.compile(hf("sdpa"), dynamic=True, backend=compile_backend)
    models["fastbert"] = fastbert.optimize(hf("sdpa"))
    if compile_models and compile_backend != "inductor":
        models["compile(fastbert)"] = torch.compile(fastbert.optimize(hf("sdpa")), backend=compile_backend)
    elif compile_models and device.type == "cuda":
        models["compile(fastbert)"] = torch.compile(fastbert.optimize(hf("sdpa")), mode="reduce-overhead")
    return {name: (lambda m: lambda ids, mask: m(input_ids=ids, attention_mask=mask))(m) for name, m in models.items()}


def time_callables(fns: dict[str, Callable[[], object]], device, repeats: int) -> dict:
    """``{name: {"ms": median, "runs": [...]}}``, plus ``"speedup"`` against :data:`REFERENCE` per name."""
    if device.type == "cuda":
        from .report import median_ms

        results = {name: {"ms": median_ms(fn)} for name, fn in fns.items()}
        for r in results.values():
            r["speedup"] = results[REFERENCE]["ms"] / r["ms"]
        return results
    runs = {name: [] for name in fns}
    for fn in fns.values():  # warm-up (and compilation)
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append((time.perf_counter() - start) * 1e3)
    return {name: {"ms": statistics.median(t), "runs": t,
                   "speedup": statistics.median(a / b for a, b in zip(runs[REFERENCE], t))}
            for name, t in runs.items()}


def timing(timed: dict) -> dict:
    """The fields every speed row carries about how it was measured: ``fastbert_backend`` (the
    ``FASTBERT_BACKEND`` it ran under) and, for CPU timings (:func:`time_callables` keeps their runs),
    ``repeats``, the number of timed runs of each implementation."""
    from fastbert import ops

    runs = next(iter(timed.values()), {}).get("runs")
    return {"fastbert_backend": ops.backend_name(), **({"repeats": len(runs)} if runs is not None else {})}


def inference_grid(reference, device, batches, lengths, repeats: int, compile_models: bool, progress=None,
                   kinds=("full", "variable"), compile_backend: str = "inductor", on_case=None) -> list:
    """One row per (batch, max length, full/variable, implementation); ``progress()`` after each case and
    ``on_case(rows)`` with that case's rows (to keep partial results)."""
    models = inference_models(reference, device, compile_models, compile_backend)
    rows = []
    for batch in batches:
        for max_len in lengths:
            for kind in kinds:
                ids, mask = (t.to(device) for t in make_batch(kind, batch, max_len, reference.config.vocab_size))
                tokens = int(mask.sum())
                with torch.inference_mode():
                    timed = time_callables({n: (lambda f: lambda: f(ids, mask))(f) for n, f in models.items()},
                                           device, repeats)
                how = timing(timed)
                case = [{"batch": batch, "max_len": max_len, "lengths": kind, "impl": name,
                         "ms": t["ms"], "tokens_per_s": tokens / t["ms"] * 1e3, "speedup": t["speedup"],
                         "real_tokens": tokens, "padded_tokens": mask.numel(), **how} for name, t in timed.items()]
                rows += case
                if progress:
                    progress()
                if on_case:
                    on_case(case)
    return rows


def training_callables(layers: int, batch: int, max_len: int, device, kind: str, dtype=torch.float32,
                       vocab_size: int | None = None) -> dict:
    """name -> one training step (forward, backward, AdamW) at BERT-base geometry with ``layers`` layers
    (and ``vocab_size`` words, where given: tiny runs), for transformers ``sdpa`` and fastbert on the same
    weights (dropout on, as in fine-tuning)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=layers, attn_implementation="sdpa", num_labels=2,
                                     **({"vocab_size": vocab_size} if vocab_size else {}))
    base = transformers.BertForSequenceClassification(config).to(device, dtype)
    models = {REFERENCE: copy.deepcopy(base).train(), "fastbert": fastbert.optimize(copy.deepcopy(base)).train()}
    ids, mask = (t.to(device) for t in make_batch(kind, batch, max_len, config.vocab_size))
    labels = torch.arange(batch, device=device) % 2

    def step(model):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def run():
            model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        return run

    return {name: step(model) for name, model in models.items()}


def training_step(layers: int, batch: int, max_len: int, device, repeats: int, dtype=torch.float32,
                  vocab_size: int | None = None) -> list:
    """Rows for :func:`training_callables`, full and variable lengths; on CUDA also the peak memory."""
    from .memory import peak_training_memory

    rows = []
    for kind in ("full", "variable"):
        steps = training_callables(layers, batch, max_len, device, kind, dtype, vocab_size)
        timed = time_callables(steps, device, repeats)
        tokens = int(make_batch(kind, batch, max_len, 2000)[1].sum())
        how = timing(timed)
        for name, t in timed.items():
            rows.append({"layers": layers, "batch": batch, "max_len": max_len, "lengths": kind, "impl": name,
                         "dtype": str(dtype)[6:], "ms": t["ms"], "tokens_per_s": tokens / t["ms"] * 1e3,
                         "speedup": t["speedup"], "peak_bytes": peak_training_memory(steps[name], device), **how})
    return rows
