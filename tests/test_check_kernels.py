"""``fastbert check-kernels``: AOT compiles for every GPU architecture on a machine without a GPU."""

import os
import subprocess
import sys
import types

import pytest
import torch

pytest.importorskip("triton")

from fastbert import check_kernels as ck  # noqa: E402
from fastbert import cli  # noqa: E402
from tests import _aot_kernels as k  # noqa: E402

VARIANTS = [("test", v) for v in (k.CLEAN, k.BIG_SMEM, k.SPILLS, k.BROKEN)]
ARCHS = (75, 80, 86, 90)
CLI = [sys.executable, "-m", "fastbert.cli", "check-kernels"]


@pytest.fixture(scope="module")
def rows():
    """Every test variant compiled for both archs in one pool (``spawn`` workers where conftest set
    TRITON_INTERPRET before triton loaded)."""
    rows = ck.check_variants(VARIANTS, archs=(80, 90), jobs=2)
    rows += ck.check_variants([("test", k.CLEAN), ("test", k.NO_TENSOR_CORES)], archs=ARCHS, jobs=2)
    return {(r.label, r.arch): r for r in rows}


@pytest.fixture
def registry(monkeypatch):
    """An empty registry; ``fastbert.kernels`` is replaced so that nothing else registers."""
    monkeypatch.setattr(ck, "_REGISTRY", {})
    monkeypatch.setitem(sys.modules, "fastbert.kernels", types.ModuleType("fastbert.kernels"))


@pytest.mark.parametrize("arch", [80, 86, 90])
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


def test_dot_kernel_without_tensor_cores_fails_from_sm80(rows):
    assert rows[k.NO_TENSOR_CORES.label, 75].ok  # Turing's tl.dot has none to give
    assert rows[k.CLEAN.label, 75].smem_limit == 65536 and not rows[k.CLEAN.label, 75].tensor_cores
    for arch in (80, 86, 90):
        r = rows[k.NO_TENSOR_CORES.label, arch]
        assert not r.ok and not r.tensor_cores and r.error == "no tensor-core instruction"


def test_report_lists_every_build_and_the_failures(rows):
    rows = {key: r for key, r in rows.items() if key[1] in (80, 90) and key[0] != k.NO_TENSOR_CORES.label}
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
    def variants(arch):
        return [k.CLEAN, k.BROKEN]

    ck.register_aot("test", variants)
    ck.register_aot("test", variants)
    assert ck.registered_variants(80) == [("test", k.CLEAN), ("test", k.BROKEN)]
    monkeypatch.setattr(ck, "_compile_tasks", lambda tasks, jobs, on_row: (tasks, jobs))
    assert ck.check_kernels((80,), 3, "static_assert") == ([("test", k.BROKEN, 80)], 3)
    assert ck.check_kernels(match="broken_kernel")[0] == [("test", k.BROKEN, 80), ("test", k.BROKEN, 90)]
    assert ck.check_kernels((86,), match="tes")[0] == [("test", k.CLEAN, 86), ("test", k.BROKEN, 86)]
    assert ck.check_kernels(match="no such kernel")[0] == []


def test_each_arch_gets_the_variants_registered_for_it(registry):
    ck.register_aot("test", lambda arch: [k.CLEAN] if arch >= 80 else [k.SPILLS])
    assert ck.registered_variants(75) == [("test", k.SPILLS)]
    assert ck.registered_variants(120) == [("test", k.CLEAN)]


def test_cli_exit_codes(rows, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(ck, "supported_archs", lambda archs: tuple(a for a in archs if a != 120))
    calls = []

    def check_kernels(archs, jobs, match, on_row):
        calls.append((archs, jobs, match))
        return [r for r in rows.values() if match in r.label and r.arch in archs and r.label != k.NO_TENSOR_CORES.label]

    monkeypatch.setattr(ck, "check_kernels", check_kernels)
    assert cli.main(["check-kernels", "--match", "no such kernel"]) == 2
    assert "no Triton kernel variants matching 'no such kernel' are registered" in capsys.readouterr().out
    assert cli.main(["check-kernels", "--arch", "90,80", "--jobs", "3", "--match", k.CLEAN.label]) == 0
    assert "1 variant compiled for sm_80, sm_90: all OK" in capsys.readouterr().out
    assert cli.main(["check-kernels", "--match", "fp"]) == 1
    assert "3 variants compiled for sm_80, sm_90: 4 of 6 builds FAILED" in capsys.readouterr().out
    assert calls == [((80, 90), None, "no such kernel"), ((90, 80), 3, k.CLEAN.label), ((80, 90), None, "fp")]
    assert cli.main(["check-kernels", "--arch", "86,120"]) == 2  # an arch this triton cannot compile for
    assert "cannot compile for sm_120" in capsys.readouterr().err and len(calls) == 3


def test_arch_list_and_all():
    parser_arch = cli._archs
    assert parser_arch("all") == ck.ALL_ARCHS == (75, 80, 86, 89, 90, 100, 120)
    assert parser_arch("120,75,75") == (120, 75)
    assert set(ck.supported_archs((75, 90))) <= {75, 90}


@pytest.mark.parametrize("arch", ["70", "80,85", "sm_80", ""])
def test_bad_arch_is_an_argparse_error(arch, capsys):
    with pytest.raises(SystemExit) as raised:
        cli.main(["check-kernels", "--arch", arch])
    assert raised.value.code == 2
    assert "argument --arch" in capsys.readouterr().err


def test_cli_recompiles_outside_the_interpreter():
    """The registered kernels, from a process where TRITON_INTERPRET=1: the command re-runs itself without
    it, where workers fork. The tiles of the first label's first three words (e.g. "fp16 d32 M64"), or
    every variant with FASTBERT_CHECK_ALL_KERNELS=1 (an hour)."""
    variants = ck.registered_variants(80)
    if not variants:
        pytest.skip("no kernel registers AOT variants yet (fastbert.check_kernels.register_aot)")
    subset = " ".join(variants[0][1].label.split()[:3])
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


def test_registered_variants_follow_each_arch():
    """What the launchers may run on each arch: no bf16 and no TF32 before sm_80, tiles within the arch's
    shared memory, tensor cores promised by every dot kernel but the exact-fp32 ones, and the row
    kernels' hidden size marked divisible by 16 as the JIT specializes BERT's sizes."""
    from fastbert.kernels import ffn

    at75, at86, at90 = (ck.registered_variants(a) for a in (75, 86, 90))
    assert not any("bf16" in v.label or "fp32-tf32" in v.label for _, v in at75)
    assert any("bf16" in v.label for _, v in at90) and len(at75) < len(at86)
    # More shared memory on sm_90 admits at least sm_86's tiles, except in the short attention backward,
    # whose tensor-core tiles run only 64-row query steps there (wgmma) by design.
    def tiled(variants):
        return [v for _, v in variants if ck._kernel_name(v.kernel) != "_attention_bwd_short"]
    assert len(tiled(at86)) <= len(tiled(at90))
    short90 = [v for _, v in at90 if ck._kernel_name(v.kernel) == "_attention_bwd_short" and v.tensor_cores]
    assert short90 and all(min(v.constexprs["BLOCK_M"], v.constexprs["BLOCK_N"]) >= 64 for v in short90)
    dots = [v for op, v in at90 if op in ("attention", "ffn") and "preprocess" not in ck._kernel_name(v.kernel)]
    assert dots and all(v.tensor_cores == ("ieee" not in v.label) for v in dots)
    for op, v in at90:
        if op in ("residual_layernorm", "embeddings"):
            assert "hidden" in v.divisible_by_16 and not v.tensor_cores, v.label
    for op, v in at86:
        if op == "ffn":
            config = types.SimpleNamespace(kwargs=v.constexprs, num_stages=v.num_stages)
            dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[v.label[:4]]
            assert ffn.smem_bytes(config, dtype) <= ck.SMEM_LIMITS[86], v.label


# ============================================================================= main-loop counts
COUNTS_HEADER = ["op", "kernel", "variant", "arch", "warps/stages", "body", "instr", "MMA", "result"]


def _sass(*body: str, function: str = "kernel") -> str:
    """cuobjdump-style SASS of ``body``: one instruction per line, each 16 bytes after the last, with the
    encoding lines cuobjdump interleaves; a ``label:`` entry becomes a line of its own (nvdisasm style)."""
    lines, address = [f"\t\tFunction : {function}"], 0
    for text in body:
        if text.endswith(":"):
            lines.append(text)
            continue
        lines += [f"        /*{address:04x}*/                   {text} ;    /* 0x000fe40000000f00 */",
                  "                                                      /* 0x000fe40000000f00 */"]
        address += 16
    return "\n".join(lines)


def test_loop_body_is_from_the_branch_target_through_the_backward_branch():
    sass = _sass("MOV R1, c[0x0][0x28]", "@!P0 BRA 0x70", "LDG.E R2, [R4.64]",  # 0x00-0x20: forward branch
                 "HMMA.16816.F32 R8, R12, R14, R8", "IADD3 R4, R4, 0x10, RZ",  # 0x30-0x40: the loop
                 "ISETP.GE.AND P0, PT, R4, R5, PT", "@!P0 BRA 0x30",  # 0x50-0x60
                 "STG.E [R6.64], R8", "EXIT", "BRA 0x90", "NOP")
    assert ck.loop_body(sass) == ck.LoopBody(instructions=4, mma=1, loop=True)


def test_loop_body_takes_the_largest_innermost_loop():
    """Two sibling loops inside an outer one (nvdisasm labels): the larger inner one counts."""
    sass = _sass(".L_x_0:", "MOV R0, RZ",
                 ".L_x_1:", "HGMMA.64x64x16.F32 R24, gdesc[UR4], R24", "@P1 BRA `(.L_x_1)",
                 ".L_x_2:", "FFMA R1, R2, R3, R1", "MUFU.EX2 R1, R1", "UTCHMMA gdesc[UR8], gdesc[UR10], tmem[UR4]",
                 "@P2 BRA `(.L_x_2)",
                 "@P0 BRA `(.L_x_0)", "EXIT", ".L_x_3:", "BRA `(.L_x_3)")
    assert ck.loop_body(sass) == ck.LoopBody(4, 1, True)


def test_without_a_loop_the_whole_kernel_counts_up_to_the_trap():
    sass = _sass("S2R R0, SR_TID.X", "@P0 BRA 0x30", "IMMA.16816.S32.S8 R4, R8, R10, R4", "EXIT", "BRA 0x40",
                 "NOP", "NOP")
    assert ck.loop_body(sass) == ck.LoopBody(4, 1, False)
    assert ck.loop_body("") == ck.LoopBody(0, 0, False)


def test_loop_body_reads_the_named_function():
    sass = "\n".join([_sass("HMMA.1688.F32 R0, R2, R4, R0", "@P0 BRA 0x0", "EXIT", function="helper"),
                      _sass("MOV R0, RZ", "FADD R0, R0, 1", "@P0 BRA 0x10", "EXIT", function="kernel")])
    assert ck.loop_body(sass, "kernel") == ck.LoopBody(2, 0, True)
    assert ck.loop_body(sass, "helper") == ck.LoopBody(2, 1, True)


def test_compiled_kernels_report_their_loop_counts(rows):
    """A real sm_80 build: matmul_kernel's K loop holds its HMMAs; the softmax row kernel has no loop."""
    r = rows[k.CLEAN.label, 80]
    assert r.has_loop and r.loop_instructions > r.loop_mma > 0
    softmax = rows[k.SPILLS.label, 80]
    assert not softmax.has_loop and softmax.loop_instructions > 0 and softmax.loop_mma == 0
    assert rows[k.BROKEN.label, 80].loop_instructions == 0
    line = next(s for s in ck.format_report([r]).splitlines() if s.startswith("test"))
    assert f" {r.loop_instructions}/{r.loop_mma} " in line and "loop instr/MMA" in ck.format_report([r])
    counts = ck.format_counts([r, softmax, rows[k.BROKEN.label, 80]]).splitlines()
    assert counts[0].split() == COUNTS_HEADER
    after_arch = [line.split(" sm_80 ")[1].split()[1:5] for line in counts[2:5]]
    assert after_arch == [["loop", str(r.loop_instructions), str(r.loop_mma), "OK"],
                          ["all", str(softmax.loop_instructions), "0", "FAIL(spills"], ["-", "-", "-", "FAIL(compile"]]


def test_cli_counts_prints_the_compact_table(rows, monkeypatch, capsys):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(ck, "supported_archs", lambda archs: archs)
    monkeypatch.setattr(ck, "check_kernels", lambda archs, jobs, match, on_row: [rows[k.CLEAN.label, 80]])
    assert cli.main(["check-kernels", "--counts"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == COUNTS_HEADER
    assert "spill B" not in out and "1 variant compiled for sm_80: all OK" in out
