"""Low-precision error criteria shared by the kernel tests."""

import torch


def max_err(actual, expected) -> float:
    assert torch.isfinite(actual).all(), "non-finite values (an unwritten element?)"
    return (actual.double() - expected.double()).abs().max().item()


def assert_lowp_error(ours, theirs, exact, what):
    """RMS error at most 2x PyTorch's; max error at most 2x PyTorch's plus one rounding step (ulp) of
    the largest value: at bf16's 8 bits a max error is mostly which element lands one ulp off."""
    rms = lambda t: (t.double() - exact).pow(2).mean().sqrt().item()  # noqa: E731
    assert rms(ours) <= 2 * rms(theirs), f"{what}: RMS error {rms(ours):.3g} vs PyTorch's {rms(theirs):.3g}"
    ulp = torch.finfo(ours.dtype).eps * 2.0 ** torch.log2(exact.abs().max()).floor().item()
    err, err_torch = max_err(ours, exact), max_err(theirs, exact)
    assert err <= 2 * err_torch + ulp, f"{what}: max error {err:.3g} vs PyTorch's {err_torch:.3g} (ulp {ulp:.3g})"
