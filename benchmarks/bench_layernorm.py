"""Fused residual + dropout + LayerNorm against PyTorch's unfused ``dropout -> add -> F.layer_norm`` (GPU only).

Forward+backward at 4096..65536 rows of hidden 768 and 1024, bf16, dropout 0.1, with bias. Both sides
are credited with the bytes the fused op must move (:func:`moved_bytes`: forward reads x and residual
and writes y; backward reads dy, x and residual and writes dx and dresidual; the per-row statistics
and per-column parameters are counted too), and every row is set against the device's copy bandwidth
measured in the same run (one large ``copy_``). Timing: ``triton.testing.do_bench``.
Goals: >= 2x PyTorch, and >= 80% of the copy bandwidth.
Run: ``python -m benchmarks.bench_layernorm [--out DIR]``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .report import copy_bandwidth, gpu_args, median_ms, write_report

ROWS = (4096, 16384, 65536)
HIDDENS = (768, 1024)
DROPOUT = 0.1


def moved_bytes(rows: int, hidden: int, element_size: int) -> int:
    """Bytes a fused forward+backward must move: 3 row tensors forward, 5 backward, plus fp32 mean/rstd
    (written, then read) and the hidden-sized parameters and their gradients."""
    activations = 8 * rows * hidden * element_size
    statistics = 2 * 2 * rows * 4
    parameters = 6 * hidden * element_size
    return activations + statistics + parameters


def unfused(x, bias, residual, weight, beta, eps, p):
    """PyTorch's unfused equivalent: ``F.layer_norm(dropout(x + bias) + residual)``."""
    return F.layer_norm(F.dropout(x + bias, p, training=True) + residual, (x.shape[-1],), weight, beta, eps)


def measure(rows: int, hidden: int, dtype, device, peak_gbs: float) -> dict:
    from fastbert import ops

    gen = torch.Generator(device=device).manual_seed(rows + hidden)
    make = lambda *shape: torch.randn(*shape, generator=gen, device=device, dtype=dtype).requires_grad_()  # noqa: E731
    x, residual, bias, beta = make(rows, hidden), make(rows, hidden), make(hidden), make(hidden)
    weight = (1.0 + 0.1 * torch.randn(hidden, generator=gen, device=device, dtype=dtype)).requires_grad_()
    dy = torch.randn(rows, hidden, generator=gen, device=device, dtype=dtype)
    seed = ops.new_seed(device)
    leaves = [x, residual, bias, beta, weight]

    def ours():
        ops.residual_layernorm(x, bias, residual, weight, beta, 1e-12, DROPOUT, seed).backward(dy)

    def theirs():
        unfused(x, bias, residual, weight, beta, 1e-12, DROPOUT).backward(dy)

    result = {"rows": rows, "hidden": hidden, "dtype": str(dtype).replace("torch.", ""),
              "bytes": moved_bytes(rows, hidden, x.element_size()), "copy_gbs": peak_gbs}
    for name, fn in (("fastbert", ours), ("pytorch", theirs)):
        ms = median_ms(fn, grad_to_none=leaves)
        result[f"{name}_ms"] = ms
        result[f"{name}_gbs"] = result["bytes"] / ms / 1e6
    result["speedup"] = result["pytorch_ms"] / result["fastbert_ms"]
    result["fraction_of_copy"] = result["fastbert_gbs"] / peak_gbs
    return result


def _table(results: list[dict]) -> str:
    lines = ["| rows | hidden | fastbert GB/s | PyTorch GB/s | speed-up (goal 2x) | of copy bandwidth (goal 80%) |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']} | {r['hidden']} | {r['fastbert_gbs']:.0f} | {r['pytorch_gbs']:.0f} "
                     f"| {r['speedup']:.2f}x | {100 * r['fraction_of_copy']:.0f}% |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = gpu_args(argv, __doc__, "bench_layernorm", "it measures GB/s against the device's copy bandwidth "
                    "and needs a GPU")
    if args is None:
        return 0
    device = torch.device("cuda")
    peak = copy_bandwidth(device)
    results = [measure(rows, hidden, torch.bfloat16, device, peak) for hidden in HIDDENS for rows in ROWS]
    table = _table(results)
    print(f"copy bandwidth {peak:.0f} GB/s\n{table}")
    write_report(args.out, "bench_layernorm", table, results, copy_gbs=peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
