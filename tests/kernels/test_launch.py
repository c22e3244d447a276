"""The launch layer shared by every kernel (kernels/launch.py): device guard, thread-safe autotuning,
fixed tiles where no benchmark may run, the ``tl.dot`` precision helpers."""

from __future__ import annotations

import contextlib
import inspect
import re
import threading
import time

import pytest
import torch
import triton
from triton.runtime.jit import KernelInterface

from conftest import DEVICE
from fastbert.kernels import attention, embeddings, ffn, launch, layernorm, qkv, rows


# ============================================================================= device guard
class _OnCuda1(torch.Tensor):
    """A CPU tensor that says it lives on ``cuda:1`` (the guard only reads ``.device``)."""

    @property
    def device(self):
        return torch.device("cuda", 1)


def _fake_cuda(monkeypatch, current: int):
    entered = []

    @contextlib.contextmanager
    def device(d):
        entered.append(torch.device(d))
        yield

    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "device", device)
    return entered


def test_launcher_runs_under_its_inputs_device(monkeypatch):
    entered = _fake_cuda(monkeypatch, current=0)
    seen = []
    launcher = launch.on_input_device(lambda x, y=None: seen.append(x.device) or "done")
    on_cuda1 = torch.Tensor._make_subclass(_OnCuda1, torch.zeros(2))
    assert launcher(on_cuda1) == "done"
    assert entered == [torch.device("cuda", 1)]
    launcher(torch.zeros(2), y=on_cuda1)  # the first CUDA tensor decides, keyword or not
    assert entered == [torch.device("cuda", 1)] * 2
    launcher(torch.zeros(2))  # CPU: no device switch
    assert len(entered) == 2


def test_no_switch_when_the_inputs_device_is_current(monkeypatch):
    entered = _fake_cuda(monkeypatch, current=1)
    launch.on_input_device(lambda x: None)(torch.Tensor._make_subclass(_OnCuda1, torch.zeros(2)))
    assert entered == []


@pytest.mark.parametrize("module", [attention, embeddings, ffn, layernorm, qkv, rows])
def test_every_launcher_is_guarded(module):
    """Each public function of a kernel module that launches a kernel (``kernel[grid](...)`` or a tuned
    launch) goes through the device guard."""
    launchers = []
    for name, fn in vars(module).items():
        if name.startswith("_") or not inspect.isfunction(fn) or fn.__module__ != module.__name__:
            continue
        source = inspect.getsource(inspect.unwrap(fn))
        subscripted = re.findall(r"\b(\w+)\[[^\]]*\]\(", source)  # kernel[grid](...)
        if "_launch(" in source or any(hasattr(getattr(module, n, None), "arg_names") for n in subscripted):
            launchers.append(name)
            assert hasattr(fn, "__wrapped__"), f"{module.__name__}.{name} launches without the device guard"
    assert launchers


# ============================================================================= thread-safe autotuning
class _SlowKernel(KernelInterface):
    """Stands in for a JIT function: records its launches and takes a while, so threads interleave."""

    arg_names = ["X", "n", "BLOCK"]

    def __init__(self):
        self.fn = _SlowKernel.run
        self.launches = []
        self._lock = threading.Lock()

    def run(self, *args, grid, warmup, **kwargs):
        time.sleep(0.001 * (1 + args[1] % 3))
        with self._lock:
            self.launches.append((args[1], kwargs["BLOCK"]))


CONFIGS = [triton.Config({"BLOCK": b}, num_warps=4, num_stages=1) for b in (16, 32, 64)]


def _timed(fn, quantiles=None, **_):
    """A benchmark that runs the call twice and says 1 ms."""
    fn()
    fn()
    return [1.0, 1.0, 1.0]


def _hammer(launch_one, threads: int = 8) -> list:
    """``launch_one(thread, round)`` from ``threads`` threads at once, 3 rounds each; the exceptions raised."""
    errors = []
    start = threading.Barrier(threads)

    def worker(i):
        start.wait()
        try:
            for j in range(3):
                launch_one(i, j)
        except Exception as e:  # noqa: BLE001 - the test reports every failure
            errors.append(e)

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return errors


def _slow_prune(configs, named_args, **meta):
    time.sleep(0.05)  # tuning a new key takes a while; another thread launches meanwhile
    return configs


def _tune_while_another_thread_launches(launch_new, launch_cached) -> list:
    """Thread A tunes a new key (its pruning takes 50 ms) while thread B launches an already tuned key;
    the exceptions raised."""
    errors = []

    def run(fn, delay):
        time.sleep(delay)
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - the test reports every failure
            errors.append(e)

    threads = [threading.Thread(target=run, args=(launch_new, 0.0)),
               threading.Thread(target=run, args=(launch_cached, 0.01))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def test_bare_triton_autotuner_is_not_thread_safe():
    """The failure the lock exists for: Triton's Autotuner keeps the call's arguments (``nargs``) on the
    shared object, and a second thread's launch clears them while the first one is still tuning."""
    tuned = triton.autotune(CONFIGS, key=["n"], do_bench=_timed,
                            prune_configs_by={"early_config_prune": _slow_prune})(_SlowKernel())
    x = torch.zeros(4)
    tuned[(1,)](x, 1)
    errors = _tune_while_another_thread_launches(lambda: tuned[(1,)](x, 2), lambda: tuned[(1,)](x, 1))
    assert errors, "Triton's autotuner became thread-safe: TunedKernel's lock could go"


def test_tuned_kernel_tunes_while_another_thread_launches(monkeypatch):
    monkeypatch.setattr(launch, "use_autotune", lambda device: True)
    kernel = _SlowKernel()
    tuned = launch.TunedKernel(kernel, CONFIGS, ["n"], lambda named, meta: _slow_prune(CONFIGS, named),
                               do_bench=_timed)
    x, cpu, grid = torch.zeros(4), torch.device("cpu"), lambda m: (1,)
    tuned.launch(grid, x, 1, device=cpu)
    errors = _tune_while_another_thread_launches(lambda: tuned.launch(grid, x, 2, device=cpu),
                                                 lambda: tuned.launch(grid, x, 1, device=cpu))
    assert errors == [] and set(tuned.chosen()) == {(None, 1, "torch.float32"), (None, 2, "torch.float32")}


def test_tuned_kernel_tunes_each_key_once_from_many_threads(monkeypatch):
    monkeypatch.setattr(launch, "use_autotune", lambda device: True)
    kernel = _SlowKernel()
    tuned = launch.TunedKernel(kernel, CONFIGS, ["n"], lambda named, meta: CONFIGS, do_bench=_timed)
    x = torch.zeros(4)
    errors = _hammer(lambda i, j: tuned.launch(lambda m: (1,), x, 100 + i % 4, device=torch.device("cpu")))
    assert errors == []
    assert set(tuned.chosen()) == {(None, 100 + i, "torch.float32") for i in range(4)}
    for n in range(100, 104):  # tuned once per key (2 runs per config), then 6 threads x 3 launches on it
        runs = [block for key, block in kernel.launches if key == n]
        assert len(runs) == 2 * len(CONFIGS) + 1 + (2 * 3 - 1)


def test_capture_takes_the_tile_tuned_before_and_each_device_tunes_its_own(monkeypatch):
    kernel = _SlowKernel()
    speed = {16: 3.0, 32: 1.0, 64: 2.0}  # BLOCK 32 is the fastest, 16 the default

    def bench(fn, quantiles=None, **_):
        fn()
        return [speed[kernel.launches[-1][1]]] * 3

    tuned = launch.TunedKernel(kernel, CONFIGS, ["n"], lambda named, meta: CONFIGS, do_bench=bench)
    x, grid, gpu0, gpu1 = torch.zeros(4), (lambda m: (1,)), torch.device("cuda", 0), torch.device("cuda", 1)

    def block_of_launch(n, device):
        tuned.launch(grid, x, n, device=device)
        return kernel.launches[-1][1]

    monkeypatch.setattr(launch, "use_autotune", lambda device: True)
    assert block_of_launch(5, gpu0) == 32
    benched = len(kernel.launches)
    monkeypatch.setattr(launch, "use_autotune", lambda device: False)  # as under CUDA-graph capture
    assert block_of_launch(5, gpu0) == 32 and block_of_launch(6, gpu0) == 16  # tuned before, or the default
    assert block_of_launch(5, gpu1) == 16  # cuda:1 has tuned nothing yet
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    assert block_of_launch(5, gpu0) == 16
    monkeypatch.undo()
    monkeypatch.setattr(launch, "use_autotune", lambda device: True)
    assert block_of_launch(5, gpu1) == 32 and len(kernel.launches) > benched + 4  # tuned again, on its own
    assert len(tuned._tuners) == 2 and set(tuned.chosen()) == {(0, 5, "torch.float32"), (1, 5, "torch.float32")}


def test_no_benchmark_where_tuning_may_not_run(monkeypatch):
    """Interpreter, deterministic mode and CUDA-graph capture launch the first allowed tile, untimed."""
    kernel = _SlowKernel()
    benched = []
    tuned = launch.TunedKernel(kernel, CONFIGS, ["n"], lambda named, meta: CONFIGS[1:],
                               do_bench=lambda fn, **_: benched.append(1) or [1.0, 1.0, 1.0])
    tuned.launch(lambda m: (1,), torch.zeros(4), 7, device=DEVICE)  # on the CPU: use_autotune is False
    assert kernel.launches == [(7, 32)] and benched == [] and tuned.chosen() == {}
    assert not launch.use_autotune(torch.device("cpu"))


def test_no_tile_fits_is_a_clear_error():
    tuned = launch.TunedKernel(_SlowKernel(), CONFIGS, ["n"], lambda named, meta: [])
    with pytest.raises(ValueError, match="no tile fits"):
        tuned.launch(lambda m: (1,), torch.zeros(4), 7, device=torch.device("cpu"))


def test_shared_memory_filter():
    configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": 64, "BLOCK_K": 32}, num_stages=3) for m in (32, 64, 128)]
    sizes = [ffn.smem_bytes(c, torch.float16) for c in configs]
    assert sizes == [2 * 32 * (m + 64) * 3 for m in (32, 64, 128)]
    assert launch.fitting(configs, lambda c: ffn.smem_bytes(c, torch.float16), sizes[1]) == configs[:2]
    assert launch.fitting(configs, lambda c: 0, None) == configs
    assert launch.device_smem_limit(torch.device("cpu")) is None


# ============================================================================= tl.dot helpers
def test_fp32_follows_pytorchs_tf32_setting():
    matmul = torch.backends.cuda.matmul
    saved = matmul.fp32_precision
    try:
        matmul.fp32_precision = "ieee"
        assert launch.input_precision(torch.float32) == "ieee"
        matmul.fp32_precision = "tf32"
        assert launch.input_precision(torch.float32) == "tf32"
        matmul.fp32_precision = "none"  # inherits torch.backends.fp32_precision
        want = "tf32" if torch.backends.fp32_precision == "tf32" else "ieee"
        assert launch.input_precision(torch.float32) == want
    finally:
        matmul.fp32_precision = saved


def test_interpreter_bf16_workaround_is_probed():
    """The bf16 upcast is on exactly when the interpreter's bf16 dot is broken, and never on a GPU."""
    if DEVICE.type == "cuda":
        assert not launch.upcast(torch.bfloat16)
        return
    a = torch.randn(16, 16).to(torch.bfloat16)
    out = torch.empty(16, 16)
    launch._bf16_dot_probe[(1,)](a, out)
    broken = not torch.allclose(out, a.float() @ a.float(), rtol=1e-2, atol=1e-2)
    assert launch.upcast(torch.bfloat16) == broken
    assert not launch.upcast(torch.float16) and not launch.upcast(torch.float32)


# ============================================================================= on a GPU (gpu_run.sh's kernel tests)
needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU (the CPU covers the logic above)")


@pytest.mark.cuda
@needs_gpu
def test_threads_autotune_one_kernel_at_once_on_gpu():
    """Four threads (as nn.DataParallel's replicas) launch the FFN on new tuning keys at the same time."""
    from fastbert import ops

    torch.manual_seed(0)
    w1, w2 = torch.randn(512, 128, device="cuda") / 12, torch.randn(128, 512, device="cuda") / 22
    inputs = [torch.randn(64 * 3 ** i, 128, device="cuda") for i in range(4)]
    outs, errors = [None] * 4, []

    def work(i):
        try:
            outs[i] = ops.ffn(inputs[i].half(), w1.half(), None, w2.half())
        except Exception as e:  # noqa: BLE001 - the test reports every failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    for x, out in zip(inputs, outs):
        ref = torch.nn.functional.gelu(x @ w1.t()) @ w2.t()
        assert (out.float() - ref).abs().max() < 5e-2


@pytest.mark.cuda
@needs_gpu
def test_capture_of_an_untuned_shape_takes_the_default_tile_on_gpu():
    """No benchmark inside a CUDA-graph capture: a new tuning key there launches the default tile, and
    the replay equals the eager result."""
    from fastbert import ops

    torch.manual_seed(0)
    x = torch.randn(777, 96, device="cuda", dtype=torch.float16)
    w1 = torch.randn(200, 96, device="cuda", dtype=torch.float16) / 10
    w2 = torch.randn(96, 200, device="cuda", dtype=torch.float16) / 14
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.stream(stream), torch.cuda.graph(graph, stream=stream):
        captured = ops.ffn(x, w1, None, w2)
    graph.replay()
    torch.cuda.synchronize()
    eager = ops.ffn(x, w1, None, w2)
    assert (captured.float() - eager.float()).abs().max() < 1e-2


@pytest.mark.cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_model_on_the_second_gpu_launches_there():
    from fastbert import ops

    x = torch.randn(33, 64, device="cuda:1")
    w, b = torch.ones(64, device="cuda:1"), torch.zeros(64, device="cuda:1")
    with torch.cuda.device(0):
        y = ops.residual_layernorm(x, None, x, w, b, 1e-12)
    torch.cuda.synchronize(1)
    ref = torch.nn.functional.layer_norm(2 * x, (64,), w, b, 1e-12)
    assert y.device == x.device and (y - ref).abs().max() < 1e-4
