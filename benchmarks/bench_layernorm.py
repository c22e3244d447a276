"""Fused residual + dropout + LayerNorm against PyTorch's unfused ``dropout -> add -> F.layer_norm`` (GPU only).

Forward+backward, and the backward alone, at 4096..65536 rows of hidden 768 (BERT-base) and 1024, bf16,
dropout 0.1, with bias. Both sides are credited with the bytes the fused op must move
(:func:`moved_bytes`: forward reads x and residual and writes y; backward reads dy, x and residual and
writes dx and dresidual; the per-row statistics and per-column parameters are counted too;
:func:`backward_bytes` the backward's share), and every row is set against the device's copy bandwidth
measured in the same run (one large ``copy_``). The backward also runs on the grid of the 256 programs
it had before its program count came from the SM count (``programs_256_ms``), so one run shows what
filling the device gains. Timing: ``triton.testing.do_bench``.
Goals: >= 2x PyTorch, and >= 80% of the copy bandwidth.
Run: ``python -m benchmarks.bench_layernorm [--out DIR]``.
"""

from __future__ import annotations

import contextlib
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


def backward_bytes(rows: int, hidden: int, element_size: int) -> int:
    """Bytes a fused backward must move: dy, x, residual read and dx, dresidual written, fp32 mean/rstd
    read, weight and bias read and the gradients of weight, beta and bias written."""
    return 5 * rows * hidden * element_size + 2 * rows * 4 + 5 * hidden * element_size


def unfused(x, bias, residual, weight, beta, eps, p):
    """PyTorch's unfused equivalent: ``F.layer_norm(dropout(x + bias) + residual)``."""
    return F.layer_norm(F.dropout(x + bias, p, training=True) + residual, (x.shape[-1],), weight, beta, eps)


@contextlib.contextmanager
def planned_for(sms: int):
    """The Triton backward plans its programs for a device of ``sms`` SMs meanwhile."""
    from fastbert.kernels import layernorm

    device_sms = layernorm.device_sms
    layernorm.device_sms = lambda device: sms
    try:
        yield
    finally:
        layernorm.device_sms = device_sms


def measure(rows: int, hidden: int, dtype, device, peak_gbs: float) -> dict:
    from fastbert import ops
    from fastbert.kernels import layernorm

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

    sms = layernorm.device_sms(device)
    programs, column_blocks, rows_per_program = layernorm.bwd_grid(rows, hidden, dtype, sms)
    result = {"rows": rows, "hidden": hidden, "dtype": str(dtype).replace("torch.", ""),
              "bytes": moved_bytes(rows, hidden, x.element_size()), "copy_gbs": peak_gbs,
              "backward_bytes": backward_bytes(rows, hidden, x.element_size()), "sms": sms,
              "backward_programs": programs * column_blocks, "backward_rows_per_program": rows_per_program}
    for name, fn in (("fastbert", ours), ("pytorch", theirs)):
        ms = median_ms(fn, grad_to_none=leaves)
        result[f"{name}_ms"] = ms
        result[f"{name}_gbs"] = result["bytes"] / ms / 1e6
    result["speedup"] = result["pytorch_ms"] / result["fastbert_ms"]
    result["fraction_of_copy"] = result["fastbert_gbs"] / peak_gbs

    # the backward alone, on graphs kept for it
    y_ours = ops.residual_layernorm(x, bias, residual, weight, beta, 1e-12, DROPOUT, seed)
    y_theirs = unfused(x, bias, residual, weight, beta, 1e-12, DROPOUT)
    grads = lambda y: torch.autograd.grad(y, leaves, dy, retain_graph=True)  # noqa: E731
    result["fastbert_bwd_ms"] = median_ms(lambda: grads(y_ours))
    result["pytorch_bwd_ms"] = median_ms(lambda: grads(y_theirs))
    with planned_for(256 // layernorm.BWD_PROGRAMS_PER_SM):  # 256 programs, the grid before
        result["programs_256_bwd_ms"] = median_ms(lambda: grads(y_ours))
    result["fastbert_bwd_gbs"] = result["backward_bytes"] / result["fastbert_bwd_ms"] / 1e6
    result["bwd_speedup"] = result["pytorch_bwd_ms"] / result["fastbert_bwd_ms"]
    result["bwd_gain_over_256_programs"] = result["programs_256_bwd_ms"] / result["fastbert_bwd_ms"]
    result["bwd_fraction_of_copy"] = result["fastbert_bwd_gbs"] / peak_gbs
    return result


def _table(results: list[dict]) -> str:
    lines = ["| rows | hidden | fastbert GB/s | PyTorch GB/s | speed-up (goal 2x) | of copy bandwidth (goal 80%) "
             "| backward programs | backward GB/s | backward speed-up | backward vs 256 programs "
             "| backward of copy bandwidth |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['rows']} | {r['hidden']} | {r['fastbert_gbs']:.0f} | {r['pytorch_gbs']:.0f} "
                     f"| {r['speedup']:.2f}x | {100 * r['fraction_of_copy']:.0f}% "
                     f"| {r['backward_programs']} x {r['backward_rows_per_program']} rows "
                     f"| {r['fastbert_bwd_gbs']:.0f} | {r['bwd_speedup']:.2f}x "
                     f"| {r['bwd_gain_over_256_programs']:.2f}x | {100 * r['bwd_fraction_of_copy']:.0f}% |")
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
