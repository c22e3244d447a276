"""The Triton attention kernel against ``torch.nn.functional.scaled_dot_product_attention`` (GPU only).

Batch 32, 12 heads, head dim 64, max length 128/256/512, fp16 and bf16:
- ``full``: every sequence max-length long (SDPA without a mask, so its flash backend);
- ``variable``: lengths uniform in [max/4, max]; SDPA gets padded tensors and a key mask (its best
  backend that takes a mask), fastbert the packed tokens.
Both sides are credited with the same useful FLOPs (real tokens only): forward ``4 * sum(L^2) * H * D``,
backward 2.5x that. Timing: ``triton.testing.do_bench`` (median, warm-up, L2 flushed).
Goals: >= 1.0x SDPA at full length, >= 1.5x on variable lengths.
Up to ``SHORT_BWD_MAX_SEQLEN`` (128) fastbert's backward alone is also timed both ways: the one-program
kernel it runs there, and the three-kernel backward (preprocess, dK/dV, dQ) that it runs above.
Run: ``python -m benchmarks.bench_attention [--out DIR] [--dtypes float16,bfloat16] [--max-lens 128,256,512]``.
"""

from __future__ import annotations

import contextlib
import sys

import torch
import torch.nn.functional as F

from .report import gpu_args, int_list, matmul_peak, median_ms, write_report

BATCH, HEADS, HEAD_DIM = 32, 12, 64
MAX_LENS = (128, 256, 512)
GOALS = {"full": 1.0, "variable": 1.5}


def sample_lengths(kind: str, max_len: int, batch: int = BATCH, seed: int = 0) -> list[int]:
    if kind == "full":
        return [max_len] * batch
    gen = torch.Generator().manual_seed(seed + max_len)
    return torch.randint(max_len // 4, max_len + 1, (batch,), generator=gen).tolist()


def attention_flops(lengths, heads: int, head_dim: int, backward: bool) -> float:
    """Useful FLOPs: two ``L x L x D`` matmuls forward, five backward (2.5x)."""
    forward = 4.0 * sum(n * n for n in lengths) * heads * head_dim
    return forward * 3.5 if backward else forward


@contextlib.contextmanager
def three_kernel_backward():
    """Attention backward on the three-kernel path at every length (as before the one-program kernel for
    short sequences), to time the two against each other."""
    from fastbert.kernels import attention

    saved = attention.SHORT_BWD_MAX_SEQLEN
    attention.SHORT_BWD_MAX_SEQLEN = 0
    try:
        yield
    finally:
        attention.SHORT_BWD_MAX_SEQLEN = saved


def _inputs(lengths, dtype, device):
    total, max_len = sum(lengths), max(lengths)
    qkv = torch.randn(total, 3, HEADS, HEAD_DIM, device=device, dtype=dtype)
    cu = torch.tensor([0] + torch.tensor(lengths).cumsum(0).tolist(), dtype=torch.int32, device=device)
    padded = torch.zeros(len(lengths), max_len, 3, HEADS, HEAD_DIM, device=device, dtype=dtype)
    valid = torch.arange(max_len, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    padded[valid] = qkv
    q, k, v = (t.transpose(1, 2).contiguous() for t in padded.unbind(2))  # (batch, heads, max_len, dim)
    mask = None if all(n == max_len for n in lengths) else valid[:, None, None, :]
    return qkv, cu, max_len, (q, k, v), mask


def measure(kind: str, max_len: int, dtype, device) -> dict:
    """TFLOP/s of fastbert and SDPA, forward and forward+backward, for one case; up to
    ``SHORT_BWD_MAX_SEQLEN`` also the ms of fastbert's backward alone, one-program and three-kernel."""
    from fastbert import ops
    from fastbert.kernels import attention

    lengths = sample_lengths(kind, max_len)
    qkv, cu, max_seqlen, (q, k, v), mask = _inputs(lengths, dtype, device)
    qkv.requires_grad_(True)
    for t in (q, k, v):
        t.requires_grad_(True)
    dout_packed = torch.randn(qkv.shape[0], HEADS, HEAD_DIM, device=device, dtype=dtype)
    dout_padded = torch.randn_like(q)

    def ours():
        return ops.attention(qkv, cu, max_seqlen, check_values=False)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)

    result = {"kind": kind, "max_len": max_len, "dtype": str(dtype).replace("torch.", ""),
              "real_tokens": sum(lengths), "padded_tokens": len(lengths) * max_len}
    for direction, backward in (("fwd", False), ("fwd_bwd", True)):
        flops = attention_flops(lengths, HEADS, HEAD_DIM, backward)
        for name, fn, dout in (("fastbert", ours, dout_packed), ("sdpa", sdpa, dout_padded)):
            if backward:
                run = lambda fn=fn, dout=dout: fn().backward(dout)  # noqa: E731
            else:
                run = lambda fn=fn: fn()  # noqa: E731
            with torch.set_grad_enabled(backward):
                ms = median_ms(run, grad_to_none=[qkv, q, k, v])
            result[f"{name}_{direction}_ms"] = ms
            result[f"{name}_{direction}_tflops"] = flops / ms / 1e9
        result[f"speedup_{direction}"] = result[f"sdpa_{direction}_ms"] / result[f"fastbert_{direction}_ms"]
    if max_seqlen <= attention.SHORT_BWD_MAX_SEQLEN:
        out = ours()  # one forward; each timed run is a backward through it
        for path, context in (("fused", contextlib.nullcontext), ("3kernel", three_kernel_backward)):
            with context():
                result[f"fastbert_bwd_{path}_ms"] = median_ms(lambda: out.backward(dout_packed, retain_graph=True),
                                                              grad_to_none=[qkv])
        result["speedup_bwd_fused"] = result["fastbert_bwd_3kernel_ms"] / result["fastbert_bwd_fused_ms"]
    return result


def _backward_cell(r: dict) -> str:
    """fastbert's backward ms, one-program kernel / three kernels (their ratio), where both ran."""
    if "speedup_bwd_fused" not in r:
        return "-"
    return f"{r['fastbert_bwd_fused_ms']:.3f} / {r['fastbert_bwd_3kernel_ms']:.3f} ({r['speedup_bwd_fused']:.2f}x)"


def _table(results: list[dict], peak: float) -> str:
    lines = [f"| dtype | lengths | max | fwd TFLOP/s (fastbert / SDPA) | fwd x | fwd+bwd TFLOP/s | fwd+bwd x | goal "
             f"| fastbert fwd+bwd of the {peak:.0f} TFLOP/s matmul peak | fastbert bwd ms, fused / 3 kernels |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        lines.append(
            f"| {r['dtype']} | {r['kind']} | {r['max_len']} | {r['fastbert_fwd_tflops']:.0f} / {r['sdpa_fwd_tflops']:.0f} "
            f"| {r['speedup_fwd']:.2f} | {r['fastbert_fwd_bwd_tflops']:.0f} / {r['sdpa_fwd_bwd_tflops']:.0f} "
            f"| {r['speedup_fwd_bwd']:.2f} | >= {GOALS[r['kind']]} | {100 * r['fastbert_fwd_bwd_tflops'] / peak:.0f}% "
            f"| {_backward_cell(r)} |")
    return "\n".join(lines)


def _arguments(parser) -> None:
    parser.add_argument("--dtypes", default="float16,bfloat16")
    parser.add_argument("--max-lens", type=int_list, default=MAX_LENS, help="comma-separated (default 128,256,512)")


def main(argv=None) -> int:
    args = gpu_args(argv, __doc__, "bench_attention", "it times the Triton kernel against SDPA's CUDA "
                    "kernels and needs a GPU", _arguments)
    if args is None:
        return 0
    device = torch.device("cuda")
    torch.manual_seed(0)
    results = [measure(kind, max_len, getattr(torch, name), device)
               for name in args.dtypes.split(",") for max_len in args.max_lens for kind in ("full", "variable")]
    peak = matmul_peak(device)
    table = _table(results, peak)
    print(table)
    write_report(args.out, "bench_attention", table, results, matmul_peak_tflops=peak)
    return 0


if __name__ == "__main__":
    sys.exit(main())
