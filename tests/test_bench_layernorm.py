"""The LayerNorm benchmark compares equal work and says why it skips without a GPU."""

import torch

from benchmarks import bench_layernorm as B
from fastbert import ops


def test_without_gpu_it_says_it_skipped(capsys):
    if torch.cuda.is_available():
        return
    assert B.main(["--out", "unused"]) == 0
    assert "skipped" in capsys.readouterr().out


def test_moved_bytes_counts_eight_row_tensors_and_the_small_ones():
    assert B.moved_bytes(10, 4, 2) == 8 * 10 * 4 * 2 + 4 * 10 * 4 + 6 * 4 * 2


def test_the_unfused_baseline_computes_what_the_op_computes(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    gen = torch.Generator().manual_seed(0)
    x, residual = torch.randn(6, 32, generator=gen), torch.randn(6, 32, generator=gen)
    bias, weight, beta = torch.randn(32, generator=gen), torch.rand(32, generator=gen), torch.randn(32, generator=gen)
    torch.testing.assert_close(B.unfused(x, bias, residual, weight, beta, 1e-12, 0.0),
                               ops.residual_layernorm(x, bias, residual, weight, beta, 1e-12))
