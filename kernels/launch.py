"""What every kernel launch shares: the device guard, thread-safe autotuning, shared-memory limits and
the ``tl.dot`` helpers.

- **Device guard.** Triton launches on ``torch.cuda.current_device()`` and its current stream, not on
  the tensors' device; :func:`on_input_device` runs a launcher under its first CUDA input's device, so
  a model on ``cuda:1`` launches there, on that device's current stream.
- **Autotuning.** Triton's ``Autotuner`` keeps per-call state on the shared object (``nargs``), so two
  threads tuning one kernel at once (``nn.DataParallel``, autograd's per-device backward threads)
  crash. :class:`TunedKernel` serializes tuning per kernel until the key is chosen, then launches the
  chosen config straight on the JIT function without touching the autotuner. It never benchmarks
  during CUDA-graph capture (it takes the chosen config or the default one there), nor in
  deterministic mode or the interpreter (the default, first, tile). Timings are cached on disk across
  processes (Triton's autotune cache) unless ``FASTBERT_AUTOTUNE_CACHE=0``.
- **Shared memory.** Each kernel module estimates the shared memory of its tiles (an upper bound that
  ``fastbert check-kernels`` verifies on every arch); tiles over the running device's limit are never
  tried.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Callable, Optional, Sequence

import torch
import triton
import triton.language as tl

from fastbert.ops import interpreting
from fastbert.routing import checked_arch, smem_limit

@functools.lru_cache(maxsize=None)
def _device_smem(index: int) -> int:
    props = torch.cuda.get_device_properties(index)
    optin = getattr(props, "shared_memory_per_block_optin", 0)
    return optin or smem_limit(props.major * 10 + props.minor)


def device_arch(device: torch.device) -> Optional[int]:
    """The checked arch (:func:`fastbert.routing.checked_arch`) of a CUDA device, None elsewhere (and in
    the interpreter, where tiles are left out if they spill on any arch)."""
    if device.type != "cuda" or interpreting():
        return None
    return checked_arch(_capability(device.index if device.index is not None else torch.cuda.current_device()))


def device_smem_limit(device: torch.device) -> Optional[int]:
    """The running device's shared memory per block, or None where there is no limit (interpreter)."""
    if device.type != "cuda" or interpreting():
        return None
    return _device_smem(device.index if device.index is not None else torch.cuda.current_device())


# ============================================================================= device guard
def _first_cuda_device(args, kwargs) -> Optional[torch.device]:
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor) and a.device.type == "cuda":
            return a.device
    return None


def on_input_device(launcher: Callable) -> Callable:
    """Run ``launcher`` under the device of its first CUDA tensor argument (and so on that device's
    current stream); a no-op for CPU tensors and when that device is already the current one."""
    @functools.wraps(launcher)
    def guarded(*args, **kwargs):
        device = _first_cuda_device(args, kwargs)
        if device is None or device.index is None or device.index == torch.cuda.current_device():
            return launcher(*args, **kwargs)
        with torch.cuda.device(device):
            return launcher(*args, **kwargs)
    return guarded


# ============================================================================= autotuning
def use_autotune(device: torch.device) -> bool:
    """Whether launches on ``device`` may benchmark tiles: not in the interpreter, not in deterministic
    mode (different tiles sum in different orders; one fixed tile keeps results equal across
    processes), not while a CUDA graph is being captured."""
    return (device.type == "cuda" and not interpreting() and not torch.are_deterministic_algorithms_enabled()
            and not torch.cuda.is_current_stream_capturing())


def _disk_cache() -> bool:
    """Tuning results kept on disk across processes (never in the interpreter, where nothing is timed)."""
    return os.environ.get("FASTBERT_AUTOTUNE_CACHE", "1") not in ("", "0") and not interpreting()


class TunedKernel:
    """A Triton kernel autotuned over ``configs``, safe to launch from several threads.

    ``allowed(named_args, meta) -> list[Config]`` gives the tiles proven for a launch (its dtype,
    precision, sizes and the device's shared memory), best guess first; ``key`` names the arguments the
    choice depends on. :meth:`launch` tunes under a per-kernel lock the first time a key is seen and
    remembers the choice; later launches with that key take no lock.
    """

    def __init__(self, kernel, configs: Sequence[triton.Config], key: Sequence[str],
                 allowed: Callable[[dict, dict], list], do_bench: Optional[Callable] = None):
        self.kernel = kernel
        self.key = tuple(key)
        self.allowed = allowed
        self._configs = list(configs)
        self._do_bench = do_bench
        self._lock = threading.Lock()
        self._chosen: dict[tuple, triton.Config] = {}
        # One Triton autotuner per device: its cache keys on the arguments only, and a tile tuned on
        # an A100 may not fit an L4's shared memory in the same process.
        self._tuners: dict[Optional[int], object] = {}

    def _tuner(self, device: torch.device):
        if device.index not in self._tuners:
            self._tuners[device.index] = triton.autotune(
                self._configs, key=list(self.key), cache_results=_disk_cache(), do_bench=self._do_bench,
                prune_configs_by={"early_config_prune": self._prune})(self.kernel)
        return self._tuners[device.index]

    def _prune(self, configs, named_args, **meta):
        keys = {_config_key(c) for c in self.allowed(named_args, meta)}
        return [c for c in configs if _config_key(c) in keys]

    def _named(self, args, meta) -> dict:
        return {**dict(zip(self.kernel.arg_names, args)), **meta}

    def _launch_key(self, named: dict, device: torch.device) -> tuple:
        dtypes = tuple(str(v.dtype) for v in named.values() if isinstance(v, torch.Tensor))
        return (device.index, *(named[k] for k in self.key), *dtypes)

    def default_config(self, args, meta) -> triton.Config:
        """The first allowed tile: what the interpreter, deterministic mode and an untuned shape under
        CUDA-graph capture run."""
        allowed = self.allowed(self._named(args, meta), meta)
        if not allowed:
            name = getattr(self.kernel, "__name__", type(self.kernel).__name__)
            raise ValueError(f"{name}: no tile fits this device's shared memory")
        return allowed[0]

    def launch(self, grid_of: Callable[[dict], tuple], *args, device: torch.device, **meta) -> None:
        """Launch on ``grid_of(config kwargs + meta)`` with the tuned tile: tuned now if the key is new
        and :func:`use_autotune` allows it; during a capture the tile tuned before, else the default;
        in deterministic mode and the interpreter always the default."""
        if not use_autotune(device):
            config = None
            if device.type == "cuda" and not torch.are_deterministic_algorithms_enabled():
                config = self._chosen.get(self._launch_key(self._named(args, meta), device))
            self.run_config(config or self.default_config(args, meta), grid_of, args, meta)
            return
        key = self._launch_key(self._named(args, meta), device)
        config = self._chosen.get(key)
        if config is None:
            with self._lock:
                config = self._chosen.get(key)
                if config is None:
                    tuner = self._tuner(device)
                    tuner[grid_of](*args, **meta)
                    self._chosen[key] = tuner.best_config
                    return
        self.run_config(config, grid_of, args, meta)

    def run_config(self, config: triton.Config, grid_of, args, meta) -> None:
        """Launch ``config`` directly on the JIT function."""
        full = {**meta, **config.all_kwargs()}
        self.kernel[grid_of(full)](*args, **full)

    def chosen(self) -> dict:
        """Key -> tuned config, as far as tuned in this process."""
        return dict(self._chosen)


def _config_key(c: triton.Config) -> tuple:
    return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages


def fitting(configs: list, smem_of: Callable[[triton.Config], int], limit: Optional[int]) -> list:
    """The configs whose shared-memory estimate fits ``limit`` (all of them when it is None)."""
    return configs if limit is None else [c for c in configs if smem_of(c) <= limit]


# ============================================================================= tl.dot helpers
@triton.jit
def dot(a, b, INPUT_PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    """``tl.dot`` with fp32 accumulation. UPCAST: bf16 operands computed in fp32 (exact products, fp32
    accumulation, as the tensor cores do), only for the Triton interpreter, whose bf16 ``tl.dot`` is
    broken in some versions (see :func:`interpreter_needs_upcast`)."""
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=INPUT_PRECISION)


@triton.jit
def _bf16_dot_probe(A, Out):
    idx = tl.arange(0, 16)[:, None] * 16 + tl.arange(0, 16)[None, :]
    a = tl.load(A + idx)
    tl.store(Out + idx, tl.dot(a, a))


@functools.lru_cache(maxsize=None)
def interpreter_needs_upcast() -> bool:
    """Whether the interpreter's bf16 ``tl.dot`` is wrong (triton 3.9.0 multiplies the raw bits):
    probed once on a 16x16 product, so a fixed triton stops the workaround by itself."""
    a = torch.arange(256, dtype=torch.float32).reshape(16, 16).div(64).to(torch.bfloat16)
    out = torch.empty(16, 16, dtype=torch.float32)
    _bf16_dot_probe[(1,)](a, out)
    with torch.autocast("cpu", enabled=False):  # the first probe may run inside a caller's autocast
        return not torch.allclose(out, a.float() @ a.float(), rtol=1e-3, atol=1e-3)


def upcast(dtype: torch.dtype) -> bool:
    """The ``UPCAST`` constexpr of :func:`dot` for operands of ``dtype``."""
    return dtype == torch.bfloat16 and interpreting() and interpreter_needs_upcast()


def tf32_allowed() -> bool:
    """PyTorch's TF32 setting for CUDA matmuls, read through the precision API where it exists (reading
    the legacy ``allow_tf32`` raises once the new API was used)."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(matmul, "fp32_precision", None)
    if precision is None:
        return bool(matmul.allow_tf32)
    if precision == "none":  # inherits the global setting
        precision = getattr(torch.backends, "fp32_precision", "none")
    return precision == "tf32"


def input_precision(dtype: torch.dtype, device: Optional[torch.device] = None) -> str:
    """``tl.dot``'s precision: fp32 operands use TF32 only when PyTorch allows it for matmuls and the
    device has it (sm_80 on)."""
    if dtype == torch.float32 and (not tf32_allowed() or not _has_tf32(device)):
        return "ieee"
    return "tf32"  # ignored for fp16/bf16 operands


def _has_tf32(device: Optional[torch.device]) -> bool:
    if device is None or device.type != "cuda" or interpreting():
        return True
    return _capability(device.index if device.index is not None else torch.cuda.current_device()) >= (8, 0)


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple:
    return torch.cuda.get_device_capability(index)


INTERPRET = tl.constexpr(interpreting())  # Triton's interpreter runs no PTX


@triton.jit
def cast_rne(x, dtype: tl.constexpr):
    """fp32 ``x.to(dtype)``, rounding to nearest even as the GPU does. The interpreter's fp32 -> bf16
    truncates, so there the rounding is done on the bits first (NaN stays NaN)."""
    if INTERPRET:
        if dtype == tl.bfloat16:
            bits = x.to(tl.int32, bitcast=True)
            bits = (bits + (0x7FFF + ((bits >> 16) & 1))) & -65536
            x = tl.where(x != x, x, bits.to(tl.float32, bitcast=True))
    return x.to(dtype)
