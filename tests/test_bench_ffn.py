"""The FFN benchmark compares equal work, counts saved bytes, and says why it skips without a GPU."""

import torch

from benchmarks import bench_ffn as B


def test_without_gpu_it_says_it_skipped(capsys):
    if torch.cuda.is_available():
        return
    assert B.main(["--out", "unused"]) == 0
    assert "skipped" in capsys.readouterr().out


def _block(tokens=10, hidden=8, inter=24):
    gen = torch.Generator().manual_seed(0)
    shapes = [(tokens, hidden), (inter, hidden), (inter,), (hidden, inter), (hidden,)]
    return [torch.randn(*s, generator=gen).requires_grad_() for s in shapes]


def test_fused_and_unfused_compute_the_same_block(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    args = _block()
    torch.testing.assert_close(B.fused(*args), B.unfused(*args))


def test_saved_bytes_fused_keep_one_intermediate_tensor_unfused_two(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    args = _block()
    inter_row = 24 * 4
    # both keep x (hidden floats per token); PyTorch keeps z and gelu(z), fastbert only z
    assert B.saved_bytes_per_token(B.unfused, 10, *args) == 8 * 4 + 2 * inter_row
    assert B.saved_bytes_per_token(B.fused, 10, *args) == 8 * 4 + inter_row
