"""The attention benchmark compares equal work and says why it skips without a GPU."""

import torch
import torch.nn.functional as F

from benchmarks import bench_attention as B
from fastbert import ops


def test_without_gpu_it_says_it_skipped(capsys):
    if torch.cuda.is_available():
        return
    assert B.main(["--out", "unused"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_lengths_and_flops():
    assert B.sample_lengths("full", 256) == [256] * B.BATCH
    variable = B.sample_lengths("variable", 256)
    assert len(variable) == B.BATCH and min(variable) >= 64 and max(variable) <= 256 and len(set(variable)) > 8
    assert B.attention_flops([2, 3], heads=2, head_dim=4, backward=False) == 4 * (4 + 9) * 2 * 4
    assert B.attention_flops([2], 1, 1, backward=True) == 3.5 * B.attention_flops([2], 1, 1, backward=False)


def test_sdpa_on_padded_inputs_computes_what_the_packed_op_computes(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    lengths = [5, 16, 9]
    qkv, cu, max_len, (q, k, v), mask = B._inputs(lengths, torch.float32, torch.device("cpu"))
    padded = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2)  # (batch, L, heads, dim)
    valid = torch.arange(max_len)[None, :] < torch.tensor(lengths)[:, None]
    torch.testing.assert_close(padded[valid], ops.attention(qkv, cu, max_len), atol=1e-5, rtol=1e-5)


def test_three_kernel_switch_and_the_backward_column():
    """``three_kernel_backward`` sends every length to the three-kernel backward for as long as it is open;
    the table shows the fused/three-kernel backward where both were timed and "-" elsewhere."""
    from fastbert.kernels import attention as A

    route = lambda: A._short_key_block(128, 64, torch.float16, "tf32", False, torch.device("cpu"))  # noqa: E731
    assert route() == 128
    with B.three_kernel_backward():
        assert route() == 0
    assert route() == 128
    tflops = {f"{who}_{direction}_tflops": 1.0 for who in ("fastbert", "sdpa") for direction in ("fwd", "fwd_bwd")}
    row = {"dtype": "bfloat16", "kind": "full", "max_len": 128, "speedup_fwd": 1.0, "speedup_fwd_bwd": 1.0, **tflops}
    timed = {**row, "fastbert_bwd_fused_ms": 0.5, "fastbert_bwd_3kernel_ms": 0.8, "speedup_bwd_fused": 1.6}
    lines = B._table([timed, {**row, "max_len": 512}], peak=100.0).splitlines()
    assert lines[2].endswith("| 0.500 / 0.800 (1.60x) |") and lines[3].endswith("| - |")
