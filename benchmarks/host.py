"""Host overhead: what a layer costs when compute is negligible.

A 12-layer BERT of hidden 64 on a batch of 2 x 16 tokens (one row padded), where the time is the
host's: Python, dispatch and kernel launches. fastbert and transformers-sdpa on the same weights, run
interleaved run by run; each figure is a median, the ratio the median of the run-by-run ratios. Also the
operations per layer: ATen calls dispatched (every one a kernel launch on a GPU, except views), counted
with a dispatch mode on any device, and on CUDA the kernels the profiler sees launched (Triton's included).
"""

from __future__ import annotations

import statistics
import time

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import fastbert

LAYERS = 12
CONFIG = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=LAYERS, num_attention_heads=2,
              intermediate_size=256, max_position_embeddings=64, attn_implementation="sdpa")
BATCH, SEQLEN = 2, 16
# Shape-only ATen ops: no kernel runs for them.
_VIEWS = {"view", "_unsafe_view", "reshape", "expand", "transpose", "t", "permute", "unsqueeze", "squeeze",
          "select", "slice", "split", "split_with_sizes", "unbind", "as_strided", "alias", "detach", "unflatten",
          "flatten", "chunk", "narrow", "empty", "empty_like", "new_empty", "empty_strided", "lift_fresh",
          "_reshape_alias", "view_as", "expand_as"}


def models(device):
    """``{"fastbert": ..., "transformers-sdpa": ...}`` with the same random weights, and one batch."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**CONFIG)
    reference = transformers.BertModel(config).to(device)
    ours = fastbert.BertModel(config).to(device)
    ours.load_state_dict(reference.state_dict())
    ids = torch.randint(1, config.vocab_size, (BATCH, SEQLEN), device=device)
    mask = torch.ones(BATCH, SEQLEN, dtype=torch.long, device=device)
    mask[1, SEQLEN * 3 // 4:] = 0
    return {"fastbert": ours, "transformers-sdpa": reference}, ids, mask


def _inference(model, ids, mask):
    def run():
        with torch.no_grad():
            model(input_ids=ids, attention_mask=mask)
    return run


def _training_step(model, ids, mask):
    def run():
        model(input_ids=ids, attention_mask=mask).last_hidden_state.float().square().mean().backward()
    return run


def _synchronized(fn, device):
    def run():
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    return run


def interleaved_us(fns: dict, repeats: int) -> dict:
    """``{name: {"us": median, "ratio": median of run-by-run ratios against transformers}}``."""
    for fn in fns.values():
        fn()
    runs = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            runs[name].append((time.perf_counter() - start) * 1e6)
    reference = runs["transformers-sdpa"]
    return {name: {"us": statistics.median(t), "ratio": statistics.median(a / b for a, b in zip(t, reference))}
            for name, t in runs.items()}


class _CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.__name__.split(".")[0] not in _VIEWS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def ops_per_layer(fn) -> float:
    """ATen operations dispatched by ``fn`` (shape-only ones left out), per layer."""
    with _CountOps() as counter:
        fn()
    return counter.count / LAYERS


def kernels_per_layer(fn) -> float:
    """CUDA kernels launched by ``fn`` (cuBLAS, ATen and Triton alike), per layer, from the profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(kernels) / LAYERS


def host_section(device, repeats: int = 30) -> dict:
    """Host microseconds per layer (median) for inference and a training step, the ratios fastbert /
    transformers, and operations (and on CUDA kernels) per layer."""
    named, ids, mask = models(device)
    result = {"config": {**CONFIG, "batch": BATCH, "seqlen": SEQLEN}, "repeats": repeats,
              "threads": torch.get_num_threads()}
    for case, make, train in (("inference", _inference, False), ("training_step", _training_step, True)):
        for model in named.values():
            model.train(train)
        fns = {name: _synchronized(make(model, ids, mask), device) for name, model in named.items()}
        timed = interleaved_us(fns, repeats)
        result[case] = {name: {"us_per_layer": t["us"] / LAYERS, "ratio": t["ratio"],
                               "ops_per_layer": ops_per_layer(fns[name])} for name, t in timed.items()}
        if device.type == "cuda":
            for name, fn in fns.items():
                result[case][name]["kernels_per_layer"] = kernels_per_layer(fn)
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    from .plots import host_table

    print("\n".join(host_table(host_section(torch.device("cuda" if torch.cuda.is_available() else "cpu")))))


def cuda_graphs_section(device, repeats: int = 20, layers: int = LAYERS) -> dict:
    """fastbert eager against ``fastbert.optimize(model, cuda_graphs=True)`` (captured on CUDA; on the CPU the
    same static buffers without a graph) at small batches: the largest difference on real tokens and the
    median time per forward of each, for three batch shapes (the second and third in one bucket)."""
    torch.manual_seed(0)
    config = transformers.BertConfig(**{**CONFIG, "num_hidden_layers": layers, "hidden_size": 384,
                                        "num_attention_heads": 12, "intermediate_size": 1536})
    eager = fastbert.BertModel(config).to(device).eval()
    graphed = fastbert.optimize(fastbert.BertModel(config).to(device).eval(), cuda_graphs=True)
    graphed.load_state_dict(eager.state_dict())
    rows = []
    for batch, seqlen in ((1, 16), (8, 64), (7, 60)):
        ids = torch.randint(1, config.vocab_size, (batch, seqlen), device=device)
        mask = torch.ones(batch, seqlen, dtype=torch.long, device=device)
        mask[batch // 2:, seqlen * 2 // 3:] = 0
        with torch.no_grad():
            want = eager(input_ids=ids, attention_mask=mask).last_hidden_state
            got = graphed(input_ids=ids, attention_mask=mask).last_hidden_state
            fns = {name: _synchronized(lambda m=m: m(input_ids=ids, attention_mask=mask), device)
                   for name, m in (("fastbert", eager), ("fastbert-cuda-graphs", graphed))}
            timed = {name: statistics.median(_times(fn, repeats)) for name, fn in fns.items()}
        rows.append({"batch": batch, "seqlen": seqlen, "max_abs_diff": float((want - got)[mask.bool()].abs().max()),
                     "eager_us": timed["fastbert"], "graphs_us": timed["fastbert-cuda-graphs"],
                     "speedup": timed["fastbert"] / timed["fastbert-cuda-graphs"]})
    return {"layers": layers, "hidden": config.hidden_size, "rows": rows}


def _times(fn, repeats: int) -> list:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e6)
    return times
