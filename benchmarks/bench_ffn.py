"""The fused feed-forward kernels against PyTorch (GPU only).

At 4096 and 16384 tokens, hidden -> intermediate 768 -> 3072 and 1024 -> 4096, bf16:
1. the first linear with bias and exact GELU fused (``_ffn_fwd``) against ``torch.matmul`` alone on the
   same shapes: the goal is at most 1.05x its time (GELU for free);
2. the whole block ``Linear -> GELU -> Linear`` forward+backward, ``fastbert.ops.ffn`` (plus the second
   bias, which the model fuses into the LayerNorm after it) against PyTorch's modules: goal >= 1.2x;
3. the bytes each keeps for backward per token (``saved_tensors_hooks``).
Every row also gives TFLOP/s next to the device's measured matmul peak (one large bf16 matmul in the
same run). Timing: ``triton.testing.do_bench``.
Run: ``python -m benchmarks.bench_ffn [--out DIR]``.
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from .memory import saved_bytes
from .report import gpu_args, matmul_peak, median_ms, write_report

TOKENS = (4096, 16384)
SIZES = ((768, 3072), (1024, 4096))


def unfused(x, w1, b1, w2, b2):
    """PyTorch's ``Linear -> GELU -> Linear``."""
    return F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2)


def fused(x, w1, b1, w2, b2):
    """fastbert's block; the second bias added here as the model adds it inside the LayerNorm."""
    from fastbert import ops

    return ops.ffn(x, w1, b1, w2) + b2


def saved_bytes_per_token(fn, tokens: int, x, *params) -> float:
    """Bytes of non-parameter tensors kept for backward by ``fn(x, *params)``, per token."""
    return saved_bytes(lambda: fn(x, *params), exclude=params) / tokens


def measure(tokens: int, hidden: int, intermediate: int, dtype, device, peak: float) -> dict:
    from fastbert.kernels import ffn as kernels

    gen = torch.Generator(device=device).manual_seed(tokens + hidden)
    rand = lambda *shape, scale=1.0: (scale * torch.randn(*shape, generator=gen, device=device)).to(dtype)  # noqa: E731
    x = rand(tokens, hidden).requires_grad_()
    w1 = rand(intermediate, hidden, scale=hidden ** -0.5).requires_grad_()
    w2 = rand(hidden, intermediate, scale=intermediate ** -0.5).requires_grad_()
    b1, b2 = rand(intermediate).requires_grad_(), rand(hidden).requires_grad_()
    dy = rand(tokens, hidden)
    leaves = [x, w1, b1, w2, b2]
    flops_first = 2 * tokens * hidden * intermediate

    result = {"tokens": tokens, "hidden": hidden, "intermediate": intermediate, "dtype": str(dtype)[6:],
              "matmul_peak_tflops": peak}
    with torch.no_grad():
        result["gelu_gemm_ms"] = median_ms(lambda: kernels.linear_gelu(x, w1, b1)[0])
        result["matmul_ms"] = median_ms(lambda: torch.matmul(x, w1.t()))
    result["gelu_gemm_over_matmul"] = result["gelu_gemm_ms"] / result["matmul_ms"]
    result["gelu_gemm_tflops"] = flops_first / result["gelu_gemm_ms"] / 1e9
    for name, fn in (("fastbert", fused), ("pytorch", unfused)):
        result[f"{name}_block_ms"] = median_ms(lambda: fn(*leaves).backward(dy), grad_to_none=leaves)
        result[f"{name}_block_tflops"] = 3 * 2 * flops_first / result[f"{name}_block_ms"] / 1e9
        result[f"{name}_saved_bytes_per_token"] = saved_bytes_per_token(fn, tokens, *leaves)
    result["block_speedup"] = result["pytorch_block_ms"] / result["fastbert_block_ms"]
    return result


def _table(results: list[dict]) -> str:
    lines = ["| tokens | hidden -> inter | GEMM+GELU / matmul (goal <= 1.05) | GEMM+GELU TFLOP/s (of peak) "
             "| block fwd+bwd speed-up (goal 1.2x) | saved bytes/token fastbert / PyTorch |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['tokens']} | {r['hidden']} -> {r['intermediate']} | {r['gelu_gemm_over_matmul']:.3f} "
            f"| {r['gelu_gemm_tflops']:.0f} ({100 * r['gelu_gemm_tflops'] / r['matmul_peak_tflops']:.0f}%) "
            f"| {r['block_speedup']:.2f}x | {r['fastbert_saved_bytes_per_token']:.0f} / "
            f"{r['pytorch_saved_bytes_per_token']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = gpu_args(argv, __doc__, "bench_ffn", "it times the kernels against cuBLAS and needs a GPU")
    if args is None:
        return 0
    device = torch.device("cuda")
    peak = matmul_peak(device)
    results = [measure(tokens, hidden, inter, torch.bfloat16, device, peak)
               for hidden, inter in SIZES for tokens in TOKENS]
    table = _table(results)
    print(f"bf16 matmul peak {peak:.0f} TFLOP/s\n{table}")
    write_report(args.out, "bench_ffn", table, results, matmul_peak_tflops=peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
