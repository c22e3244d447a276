"""Host overhead: what a layer costs when compute is negligible.

A 12-layer BERT of hidden 64 on a batch of 2 x 16 tokens (one row padded), where the time is the
host's: Python, dispatch and kernel launches. fastbert and transformers-sdpa on the same weights, run
interleaved run by run; each figure is a median, the ratio the median of the run-by-run ratios. Also the
operations per layer: ATen calls dispatched (every one a kernel launch on a GPU, except views), counted
with a dispatch mode on any device, and on CUDA the kernels the profiler sees launched (Triton's included).
And fastbert's launches per layer on the Triton backend (:func:`launches_per_layer`): Triton's launch hook
on a GPU, the interpreter's kernel runs on a CPU, plus the ATen calls outside them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import transformers
from torch.utils._python_dispatch import TorchDispatchMode

import fastbert
from fastbert.ops import interpreting

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
    return {"fastbert": ours, "transformers-sdpa": reference}, *_batch(config.vocab_size, BATCH, SEQLEN, device)


def _batch(vocab_size: int, batch: int, seqlen: int, device) -> tuple:
    """Random ids ``(batch, seqlen)`` and a mask whose last row is padded from 3/4 of its length on."""
    ids = torch.randint(1, vocab_size, (batch, seqlen), device=device)
    mask = torch.ones(batch, seqlen, dtype=torch.long, device=device)
    mask[-1, seqlen * 3 // 4:] = 0
    return ids, mask


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


class Launches(TorchDispatchMode):
    """Counts, inside a ``with`` block, what runs as a GPU launch on the Triton backend: ``triton``, Triton
    kernel launches (Triton's launch hook on a GPU; under ``TRITON_INTERPRET=1`` the interpreter's kernel
    runs), and ``aten``, ATen calls outside them, shape-only ones left out (cuBLAS GEMMs, copies)."""

    def __enter__(self):
        self.triton = self.aten = 0
        self._inside = False
        self._undo = _count_triton_launches(self)
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._undo()

    @property
    def count(self) -> int:
        return self.triton + self.aten

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not self._inside and func.__name__.split(".")[0] not in _VIEWS:
            self.aten += 1
        return func(*args, **(kwargs or {}))


def _count_triton_launches(counter: Launches):
    """Makes every Triton launch add one to ``counter.triton``; returns the function that undoes it."""
    if interpreting():
        from triton.runtime.interpreter import InterpretedFunction

        run = InterpretedFunction.run

        def counted(kernel, *args, **kwargs):
            counter.triton, counter._inside = counter.triton + 1, True
            try:
                return run(kernel, *args, **kwargs)
            finally:
                counter._inside = False
        InterpretedFunction.run = counted
        return lambda: setattr(InterpretedFunction, "run", run)

    def hook(*args, **kwargs):
        counter.triton += 1

    from triton import knobs

    hooks = knobs.runtime.launch_enter_hook
    if hasattr(hooks, "add"):  # a HookChain (triton 3.6, the oldest CI checks, and later)
        hooks.add(hook)
        return lambda: hooks.remove(hook)
    previous = hooks  # older: one callable or None, called with the launch metadata

    def chained(metadata):
        hook()
        if previous is not None:
            previous(metadata)
    knobs.runtime.launch_enter_hook = chained
    return lambda: setattr(knobs.runtime, "launch_enter_hook", previous)


LAUNCH_GOALS = {"inference": 6, "training forward": 6, "backward": 14}  # issue 15's, per layer
# What launches are counted on: CONFIG (its layer count aside) and its batch, with dropout in training. The
# count does not depend on the sizes short of the routing thresholds (attention's one-kernel backward up to
# 128 tokens); a test counts on a smaller model, which the interpreter runs faster.
LAUNCH_COUNT = {"config": {k: v for k, v in CONFIG.items() if k != "num_hidden_layers"}, "batch": BATCH,
                "seqlen": SEQLEN}


def _launches(layers: int, device, count: dict) -> dict:
    """Launches (:class:`Launches`) of a ``layers``-layer model of ``count["config"]`` on a
    ``count["batch"] x count["seqlen"]`` batch (one row padded), on ``device`` and the current backend:
    ``{"inference", "training forward", "backward"}``."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):  # the caller's RNG untouched
        torch.manual_seed(0)
        config = transformers.BertConfig(**{**count["config"], "num_hidden_layers": layers})
        model = fastbert.BertModel(config).to(device)
        return _count_passes(model, *_batch(config.vocab_size, count["batch"], count["seqlen"], device))


def _count_passes(model, ids, mask) -> dict:
    counts = {}
    for train in (False, True):
        model.train(train)
        with torch.set_grad_enabled(train):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state  # tuning and caches out of the way
            if train:
                out.float().square().mean().backward()
                model.zero_grad(set_to_none=True)  # the counted backward assigns its gradients, as a first one
            with Launches() as launches:
                out = model(input_ids=ids, attention_mask=mask).last_hidden_state
            counts["training forward" if train else "inference"] = launches.count
            if train:
                with Launches() as launches:
                    out.float().square().mean().backward()
                counts["backward"] = launches.count
    return counts


def launches_per_layer(device, count: dict | None = None) -> dict:
    """fastbert's launches per layer on the Triton backend, the difference between a 3-layer and a 2-layer
    model (``count``: :data:`LAUNCH_COUNT`'s keys, that constant by default): ``{"inference",
    "training forward", "backward"}``. Counted in this process on CUDA or under the interpreter, otherwise
    in a child process under ``TRITON_INTERPRET=1`` on the CPU (triton reads it when it loads)."""
    count = count or LAUNCH_COUNT
    if device.type == "cuda" or interpreting():
        previous = os.environ.get("FASTBERT_BACKEND")
        os.environ["FASTBERT_BACKEND"] = "triton"
        try:
            two, three = _launches(2, device, count), _launches(3, device, count)
        finally:
            if previous is None:
                del os.environ["FASTBERT_BACKEND"]
            else:
                os.environ["FASTBERT_BACKEND"] = previous
        return {case: three[case] - two[case] for case in two}
    # The child imports this module by the name it has here, on this process's import path.
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    module = __spec__.name if __spec__ is not None else "fastbert.benchmarks.host"
    try:
        done = subprocess.run([sys.executable, "-m", module, "--launches", json.dumps(count)], env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(done.stderr[-2000:])
        return json.loads(done.stdout.strip().splitlines()[-1])
    except (RuntimeError, subprocess.TimeoutExpired, IndexError, ValueError) as e:
        raise RuntimeError(f"counting launches under Triton's interpreter (python -m {module} --launches) "
                           f"failed: {e}") from None


def triton_available() -> bool:
    """Whether triton can be imported here (fastbert runs without it on a CPU; the launch count needs it)."""
    return importlib.util.find_spec("triton") is not None


def host_section(device, repeats: int = 30, count_launches: bool = True) -> dict:
    """Host microseconds per layer (median) for inference and a training step, the ratios fastbert /
    transformers, operations (and on CUDA kernels) per layer, and with ``count_launches`` (where triton is
    installed) fastbert's launches per layer on the Triton backend (:func:`launches_per_layer`, with
    :data:`LAUNCH_GOALS`)."""
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
    if count_launches and triton_available():
        result["launches_per_layer"] = launches_per_layer(device)
        result["launch_goals"] = LAUNCH_GOALS
        result["launches_counted_by"] = "Triton's launch hook" if device.type == "cuda" else "Triton's interpreter"
    return result


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


if __name__ == "__main__":
    torch.set_num_threads(1)
    here = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if sys.argv[1:2] == ["--launches"]:  # the child process of launches_per_layer
        print(json.dumps(launches_per_layer(here, json.loads(sys.argv[2]))))
        raise SystemExit(0)
    from .plots import host_table

    print("\n".join(host_table(host_section(here))))
