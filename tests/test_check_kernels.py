"""``fastbert check-kernels``: AOT compiles for sm_80/sm_90 on a machine without a GPU."""

import os
import subprocess
import sys
import types

import pytest

pytest.importorskip("triton")

from fastbert import check_kernels as ck  # noqa: E402
from fastbert import cli  # noqa: E402
from tests import _aot_kernels as k  # noqa: E402

VARIANTS = [("test", v) for v in (k.CLEAN, k.BIG_SMEM, k.SPILLS, k.BROKEN)]
CLI = [sys.executable, "-m", "fastbert.cli", "check-kernels"]


@pytest.fixture(scope="module")
def rows():
    """Every test variant compiled for both archs in one pool (``spawn`` workers where conftest set
    TRITON_INTERPRET before triton loaded)."""
    return {(r.label, r.arch): r for r in ck.check_variants(VARIANTS, archs=(80, 90), jobs=2)}


@pytest.fixture
def registry(monkeypatch):
    """An empty registry; ``fastbert.kernels`` is replaced so that nothing else registers."""
    monkeypatch.setattr(ck, "_REGISTRY", {})
    monkeypatch.setitem(sys.modules, "fastbert.kernels", types.ModuleType("fastbert.kernels"))


@pytest.mark.parametrize("arch", [80, 90])
def test_clean_dot_kernel_uses_tensor_cores_and_passes(rows, arch):
    r = rows[k.CLEAN.label, arch]
    assert (r.ok, r.error, r.kernel, r.tensor_cores) == (True, None, "matmul_kernel", True)
    assert r.spill_bytes == r.local_bytes == 0
    assert 0 < r.regs <= 255
    assert 0 < r.shared_bytes <= r.smem_limit == ck.SMEM_LIMITS[arch]


@pytest.mark.parametrize("arch", [80, 90])
def test_spilling_kernel_fails(rows, arch):
    r = rows[k.SPILLS.label, arch]
    assert not r.ok and r.spill_bytes > 0 and r.local_bytes > 0
    assert r.error.startswith("spills ")
    assert not r.tensor_cores


@pytest.mark.parametrize("arch", [80, 90])
def test_too_much_shared_memory_fails(rows, arch):
    r = rows[k.BIG_SMEM.label, arch]
    assert not r.ok and r.spill_bytes == 0
    assert r.shared_bytes > ck.SMEM_LIMITS[arch]
    assert r.error == f"smem {r.shared_bytes} B > {ck.SMEM_LIMITS[arch]} B"


@pytest.mark.parametrize("arch", [80, 90])
def test_compile_error_is_a_failed_row(rows, arch):
    r = rows[k.BROKEN.label, arch]
    assert not r.ok and r.regs == 0
    assert r.error.splitlines()[0] == "compile error: N must be negative"


def test_report_lists_every_build_and_the_failures(rows):
    report = ck.format_report(list(rows.values()))
    assert report.splitlines()[0].split()[:3] == ["op", "kernel", "variant"]
    assert report.count("FAIL(") == 6
    assert "FAIL(compile error: N must be negative)" in report and 'tl.static_assert(N < 0' in report
    assert report.splitlines()[-1].startswith("4 variants compiled for sm_80, sm_90: 6 of 8 builds FAILED: ")
    clean = [rows[k.CLEAN.label, 80], rows[k.CLEAN.label, 90]]
    regs = max(r.regs for r in clean)
    expected = f"1 variant compiled for sm_80, sm_90: all OK, max regs {regs}, zero spills, max smem "
    assert ck.summary(clean).startswith(expected)


def test_registry_and_match(registry, monkeypatch):
    def variants():
        return [k.CLEAN, k.BROKEN]

    ck.register_aot("test", variants)
    ck.register_aot("test", variants)
    assert ck.registered_variants() == [("test", k.CLEAN), ("test", k.BROKEN)]
    monkeypatch.setattr(ck, "check_variants", lambda variants, archs, jobs, on_row: (list(variants), archs, jobs))
    assert ck.check_kernels((80,), 3, "static_assert") == ([("test", k.BROKEN)], (80,), 3)
    assert ck.check_kernels(match="broken_kernel")[0] == [("test", k.BROKEN)]
    assert ck.check_kernels(match="tes")[0] == [("test", k.CLEAN), ("test", k.BROKEN)]
    assert ck.check_kernels(match="no such kernel")[0] == []


def test_cli_exit_codes(rows, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    calls = []

    def check_kernels(archs, jobs, match, on_row):
        calls.append((archs, jobs, match))
        return [r for r in rows.values() if match in r.label]

    monkeypatch.setattr(ck, "check_kernels", check_kernels)
    assert cli.main(["check-kernels", "--match", "no such kernel"]) == 2
    assert "no Triton kernel variants matching 'no such kernel' are registered" in capsys.readouterr().out
    assert cli.main(["check-kernels", "--arch", "90,80", "--jobs", "3", "--match", k.CLEAN.label]) == 0
    assert "1 variant compiled for sm_80, sm_90: all OK" in capsys.readouterr().out
    assert cli.main(["check-kernels", "--match", "fp"]) == 1
    assert "3 variants compiled for sm_80, sm_90: 4 of 6 builds FAILED" in capsys.readouterr().out
    assert calls == [((80, 90), None, "no such kernel"), ((90, 80), 3, k.CLEAN.label), ((80, 90), None, "fp")]


@pytest.mark.parametrize("arch", ["75", "80,86", "sm_80", ""])
def test_bad_arch_is_an_argparse_error(arch, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["check-kernels", "--arch", arch])
    assert raised.value.code == 2
    assert "argument --arch" in capsys.readouterr().err


def test_cli_recompiles_outside_the_interpreter():
    """The registered kernels, from a process where TRITON_INTERPRET=1: the command re-runs itself without
    it, where workers fork. Every tile of every kernel for one dtype and head dim (the first two words of
    the first label, e.g. "fp16 d64"), or every variant with FASTBERT_CHECK_ALL_KERNELS=1 (minutes)."""
    variants = ck.registered_variants()
    if not variants:
        pytest.skip("no kernel registers AOT variants yet (fastbert.check_kernels.register_aot)")
    subset = " ".join(variants[0][1].label.split()[:2])
    match = [] if os.environ.get("FASTBERT_CHECK_ALL_KERNELS") == "1" else ["--match", subset]
    done = subprocess.run([*CLI, "--arch", "80,90", *match], env={**os.environ, "TRITON_INTERPRET": "1"},
                          capture_output=True, text=True, timeout=3600)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = done.stdout.strip().splitlines()[-1]
    assert " compiled for sm_80, sm_90: all OK, max regs " in summary and "zero spills" in summary
    progress = [line for line in done.stderr.splitlines() if line.startswith("[")]
    assert progress[-1].startswith(f"[{len(progress)}/{len(progress)}] ") and "UserWarning" not in done.stderr


def test_signature_of_types_each_argument_as_the_launcher_passes_it():
    from fastbert.check_kernels import signature_of
    from fastbert.kernels import layernorm

    sig = signature_of(layernorm._residual_layernorm_bwd_terms, {"BLOCK_N": 1024, "HAS_BIAS": True,
                                                                 "HAS_DROPOUT": False},
                       "bf16", fp32_pointers=("Mean", "Rstd", "Terms"), i64_pointers=("Seed",), ints=("hidden",))
    assert sig["DY"] == sig["X"] == sig["Weight"] == "*bf16"
    assert sig["Mean"] == sig["Terms"] == "*fp32" and sig["Seed"] == "*i64"
    assert sig["hidden"] == "i32" and sig["dropout_p"] == "fp32" and sig["BLOCK_N"] == "constexpr"
