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


def test_backward_bytes_count_five_row_tensors_the_statistics_and_the_parameters():
    assert B.backward_bytes(10, 4, 2) == 5 * 10 * 4 * 2 + 2 * 10 * 4 + 5 * 4 * 2


def test_measure_times_forward_backward_and_the_backward_on_two_grids(monkeypatch):
    """Every timing runs its function (here once, in the interpreter), the backward also on the grid of
    256 programs, which is put back afterwards."""
    from fastbert.kernels import layernorm

    monkeypatch.setenv("FASTBERT_BACKEND", "triton")
    calls = []

    def once(fn, **kwargs):
        calls.append(layernorm.device_sms(torch.device("cpu")))
        fn()
        return 1.0
    monkeypatch.setattr(B, "median_ms", once)
    result = B.measure(12, 32, torch.float32, torch.device("cpu"), peak_gbs=100.0)
    assert calls == [layernorm.REFERENCE_SMS] * 4 + [256 // layernorm.BWD_PROGRAMS_PER_SM]
    assert layernorm.device_sms(torch.device("cpu")) == layernorm.REFERENCE_SMS
    assert result["backward_programs"] == 1 and result["bwd_gain_over_256_programs"] == 1.0
    assert "| 12 | 32 |" in B._table([result])
