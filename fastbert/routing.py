"""Which backend each fused op runs on, as a pure function of (op, compute capability, dtype).

``FASTBERT_BACKEND=auto`` routes every call by :func:`route`:

- below sm_80 Triton emits no tensor-core instructions for ``tl.dot`` (``_ffn_fwd`` for sm_75 compiles
  to FFMA only), so the dot-based ops (attention, the feed-forward GEMMs) run PyTorch there (cuBLAS,
  SDPA), while the normalization/elementwise kernels stay on Triton;
- bf16 needs sm_80 in the Triton kernels: below it bf16 runs PyTorch, or is a clear error where
  PyTorch cannot run bf16 on the device either;
- float64 (and any dtype without a kernel) runs PyTorch; so does a device older than
  :data:`TRITON_MIN_CAPABILITY`.

``FASTBERT_BACKEND=triton`` forces the kernels where they are built for the device (the dot kernels are
not built below sm_80, where their tiles would run on FFMA and spill: those ops run PyTorch, with a
warning) and raises a ``ValueError`` where they cannot run (bf16 below sm_80). Nothing here imports triton.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

OPS = ("attention", "qkv", "residual_layernorm", "linear_gelu", "ffn", "embeddings")
DOT_OPS = frozenset({"attention", "qkv", "linear_gelu", "ffn"})
KERNEL_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
TENSOR_CORE_CAPABILITY = (8, 0)  # tl.dot lowers to tensor-core instructions from here on
BF16_CAPABILITY = (8, 0)
TRITON_MIN_CAPABILITY = (7, 5)  # the oldest arch fastbert check-kernels proves (T4)

# The most shared memory one block may opt in to (cudaDevAttrMaxSharedMemoryPerBlockOptin), by compute
# capability major*10+minor; a capability missing here takes the next lower one's.
SMEM_LIMITS = {70: 98304, 75: 65536, 80: 166912, 86: 101376, 87: 166912, 89: 101376, 90: 232448,
               100: 232448, 103: 232448, 120: 101376, 121: 101376}


# The architectures fastbert check-kernels compiles for: T4, A100, A10/RTX 30, L4/L40/RTX 40, H100/H200,
# B200, RTX 50. A device runs the binaries proven for the nearest one at or below its capability.
CHECKED_ARCHS = (75, 80, 86, 89, 90, 100, 120)


def checked_arch(capability: tuple) -> int:
    """The arch of :data:`CHECKED_ARCHS` whose proof covers a device of ``capability`` (e.g. (8, 7) -> 80)."""
    arch = capability[0] * 10 + capability[1]
    return max([a for a in CHECKED_ARCHS if a <= arch], default=CHECKED_ARCHS[0])


def smem_limit(arch: int) -> int:
    """Shared memory one block may use on compute capability ``arch`` (e.g. 86), in bytes."""
    known = [a for a in SMEM_LIMITS if a <= arch]
    return SMEM_LIMITS[max(known)] if known else 49152


@dataclass(frozen=True)
class Route:
    """Where one op runs: ``backend`` is ``"triton"`` or ``"torch"``; ``reason`` says why, when not Triton."""

    backend: str
    reason: Optional[str] = None


def route(op: str, capability: Optional[tuple], dtype: torch.dtype, requested: str = "auto",
          torch_runs_bf16: bool = True) -> Route:
    """The backend of ``op`` on a CUDA device of ``capability`` (``(major, minor)``; None for a CPU) with
    inputs of ``dtype``, for ``FASTBERT_BACKEND=requested``.

    ``torch_runs_bf16``: whether PyTorch runs bf16 on the device (``torch.cuda.is_bf16_supported``).
    On a CPU ``auto`` is PyTorch and ``triton`` the interpreter (the caller checks it is on).
    Raises ``ValueError`` naming the op, dtype and capability where neither backend can run the call.
    """
    if op not in OPS:
        raise ValueError(f"route: op must be one of {OPS}, got {op!r}")
    if requested == "torch":
        return Route("torch", "FASTBERT_BACKEND=torch")
    if dtype not in KERNEL_DTYPES:
        return Route("torch", f"dtype {dtype}")
    if capability is None:
        return Route("triton") if requested == "triton" else Route("torch", "not a CUDA device")
    arch = f"sm_{capability[0]}{capability[1]}"
    if dtype == torch.bfloat16 and tuple(capability) < BF16_CAPABILITY:
        if not torch_runs_bf16:
            raise ValueError(f"{op}: bfloat16 does not run on {arch}, in Triton (needs sm_80) nor in PyTorch; "
                             "use float16 or float32")
        if requested == "triton":
            raise ValueError(f"{op}: FASTBERT_BACKEND=triton cannot run bfloat16 on {arch} (the kernels need "
                             "sm_80); use FASTBERT_BACKEND=auto (PyTorch) or float16")
        return Route("torch", f"bfloat16 in Triton needs sm_80, this is {arch}")
    if tuple(capability) < TRITON_MIN_CAPABILITY:
        if requested == "triton":
            raise ValueError(f"{op}: FASTBERT_BACKEND=triton needs compute capability "
                             f"{TRITON_MIN_CAPABILITY[0]}.{TRITON_MIN_CAPABILITY[1]} or newer, this is {arch}")
        return Route("torch", f"the Triton kernels are built for sm_75 and newer, this is {arch}")
    if op in DOT_OPS and tuple(capability) < TENSOR_CORE_CAPABILITY:
        # Forced or not: there tl.dot is FFMA, several times slower than cuBLAS, and its tiles spill.
        return Route("torch", f"no tensor cores for tl.dot on {arch}: cuBLAS/SDPA are faster")
    return Route("triton")


def routing_table(capability: Optional[tuple], requested: str = "auto", torch_runs_bf16: bool = True) -> str:
    """A text table: for each op and kernel dtype, the backend (and why not Triton), as ``fastbert info``
    prints it for the current device."""
    names = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}
    rows = [("op", *names.values())]
    for op in OPS:
        cells = []
        for dtype in names:
            try:
                r = route(op, capability, dtype, requested, torch_runs_bf16)
                cells.append(r.backend if r.reason is None else f"{r.backend} ({r.reason})")
            except ValueError as e:
                cells.append(f"error ({e})")
        rows.append((op, *cells))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])
