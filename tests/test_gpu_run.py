"""``bash benchmarks/gpu_run.sh --dry-run OUT`` walks every stage on the CPU into a small flat folder, and the
stage runner (benchmarks/stage_runner.py) enforces budgets and keeps finished stages when a run is killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from benchmarks import gpu_stages, stage_runner
from benchmarks.stage_runner import Stage

REPO = Path(__file__).resolve().parents[1]


# ============================================================================= the dry run
@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    """``(exit status, seconds, OUT)`` of one dry run."""
    out = tmp_path_factory.mktemp("gpu-run") / "out"
    start = time.monotonic()
    done = subprocess.run(["bash", "benchmarks/gpu_run.sh", "--dry-run", str(out)], cwd=REPO, timeout=300,
                          env={**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"},
                          capture_output=True, text=True)
    seconds = time.monotonic() - start
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n" + \
        ((out / "run.log").read_text()[-5000:] if (out / "run.log").exists() else "")
    return done, seconds, out


def _strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path.name}: {constant} is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def test_dry_run_passes_within_three_minutes(dry_run):
    done, seconds, out = dry_run
    assert seconds < 180, f"the dry run took {seconds:.0f} s"
    assert "results in" in done.stdout


def test_dry_run_leaves_at_most_eight_small_files_at_most_two_folders_deep(dry_run):
    out = dry_run[2]
    files = [p for p in out.rglob("*") if p.is_file()]
    assert 0 < len(files) <= 8, [p.name for p in files]
    for path in out.rglob("*"):
        assert len(path.relative_to(out).parts) - (1 if path.is_file() else 0) <= 2, path
    for path in files:
        assert path.stat().st_size <= 16 * 2**20, path
    assert {p.name for p in files} == {"summary.md", "results.json", "run.log", "speedup.png", "correctness.png"}
    for png in ("speedup.png", "correctness.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_summary_lists_every_stage_with_a_status(dry_run):
    text = (dry_run[2] / "summary.md").read_text()
    statuses = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 6 and cells[1] in gpu_stages.STAGE_NAMES:
            statuses[cells[1]] = cells[2]
    assert list(statuses) == list(gpu_stages.STAGE_NAMES)
    assert set(statuses.values()) <= {"ok", "skipped"}, statuses
    assert "State: finished" in text
    for name in ("smoke", "kernel_tests", "model_grid", "training", "compile"):
        assert f"{name}: " in text and "## " in text  # each ok stage's own section


def test_results_json_has_a_record_per_stage(dry_run):
    run = _strict_json(dry_run[2] / "results.json")
    assert run["state"] == "finished" and run["meta"]["dry_run"] is True
    stages = {s["name"]: s for s in run["stages"]}
    assert list(stages) == list(gpu_stages.STAGE_NAMES)
    for s in stages.values():
        assert s["status"] in ("ok", "skipped") and s["seconds"] is not None and isinstance(s["record"], dict)
    for name in ("bench_attention", "bench_layernorm", "bench_ffn"):  # they time CUDA kernels
        assert stages[name]["status"] == "skipped" and "CUDA" in stages[name]["reason"]


def test_dry_run_stages_measure_what_the_gpu_run_measures(dry_run):
    stages = {s["name"]: s["record"] for s in _strict_json(dry_run[2] / "results.json")["stages"]}
    smoke = stages["smoke"]["rows"]
    assert {(r["op"], r["dtype"]) for r in smoke} == {(op, dtype) for op in
                                                     ("attention", "residual_layernorm", "linear_gelu", "ffn",
                                                      "embeddings") for dtype in ("float16", "bfloat16", "float32")}
    assert all(r["ok"] for r in smoke)
    assert stages["kernel_tests"]["results"]["passed"] > 0 and stages["kernel_tests"]["results"]["failures"] == 0
    grid = stages["model_grid"]
    assert "random MiniLM-L6" in grid["model"]
    assert {r["model"] for r in grid["inference"]} == {"MiniLM-L6 (random)", "BERT-base (random)"}
    assert grid["correctness"] and grid["plots"] == {"speedup": "speedup.png", "correctness": "correctness.png"}
    embed = stages["embed"]["embed"]
    assert embed["texts"] == 40 and embed["speedup"] > 0 and embed["max_abs_diff"] < 1e-5
    assert {r["impl"] for r in stages["training"]["training"]} == {"transformers-sdpa", "fastbert"}
    assert 0 < stages["training"]["memory"]["ratio"]
    assert {"compile(transformers)", "compile(fastbert)"} <= {r["impl"] for r in stages["compile"]["inference"]}
    assert stages["environment"]["environment"]["torch"]


def test_the_log_holds_every_stage_and_the_install(dry_run):
    log = (dry_run[2] / "run.log").read_text()
    assert log.startswith("===== install")
    for name in gpu_stages.STAGE_NAMES:
        assert f"===== {name}: " in log


# ============================================================================= budgets and kills
def _python_stage(name: str, code: str, budget: float) -> Stage:
    """A stage running ``code`` (with ``record(**fields)`` to write its record)."""
    prelude = textwrap.dedent("""
        import json, os, subprocess, sys, time
        def record(**fields):
            with open(os.environ["FASTBERT_STAGE_RECORD"], "w") as f:
                json.dump(fields, f)
        """)
    return Stage(name, f"test stage {name}", budget, (sys.executable, "-c", prelude + textwrap.dedent(code)))


def _gone(pid: int, wait_s: float = 5.0) -> bool:
    """Whether process ``pid`` has ended (exited or a zombie) within ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state in ("Z", "X"):
            return True
        time.sleep(0.05)
    return False


def test_a_stage_past_its_budget_is_a_timeout_and_the_next_stages_still_run(tmp_path):
    stages = [
        _python_stage("slow", """
            helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
            record(pid=os.getpid(), helper=helper.pid, markdown=["half done"])
            time.sleep(60)
            """, budget=3),
        _python_stage("broken", "record(markdown=['before the crash']); sys.exit(3)", budget=20),
        _python_stage("after", "record(markdown=['| done |'], value=float('nan'))", budget=20),
    ]
    start = time.monotonic()
    run = stage_runner.run_stages(stages, tmp_path, "test run", total_budget_s=60)
    assert time.monotonic() - start < 30
    slow, broken, after = run["stages"]
    assert slow["status"] == "timeout" and "killed after 3 s" in slow["reason"] and slow["seconds"] < 10
    assert slow["record"]["markdown"] == ["half done"]  # what it wrote before it was killed
    assert _gone(slow["record"]["pid"]) and _gone(slow["record"]["helper"])  # its whole process group
    assert broken["status"] == "failed" and broken["reason"] == "exit status 3"
    assert after["status"] == "ok" and stage_runner.exit_status(run) == 1
    results = _strict_json(tmp_path / "results.json")
    assert [s["status"] for s in results["stages"]] == ["timeout", "failed", "ok"]
    assert results["stages"][2]["record"]["value"] == "nan"
    summary = (tmp_path / "summary.md").read_text()
    assert "| 1 | slow | timeout |" in summary and "| 3 | after | ok |" in summary and "| done |" in summary


def test_stages_past_the_runs_time_are_skipped(tmp_path):
    stages = [_python_stage("first", "time.sleep(1.5)", budget=20), _python_stage("second", "record()", budget=20)]
    run = stage_runner.run_stages(stages, tmp_path, "test run", total_budget_s=stage_runner.MIN_STAGE_S + 1)
    first, second = run["stages"]
    assert first["status"] == "ok"
    assert second["status"] == "skipped" and "no time left" in second["reason"]
    assert stage_runner.exit_status(run) == 0


KILLABLE_RUN = """
import sys
from benchmarks import stage_runner
from benchmarks.stage_runner import Stage
def stage(name, code):
    prelude = "import json, os, time\\n"
    prelude += "def record(**f): json.dump(f, open(os.environ['FASTBERT_STAGE_RECORD'], 'w'))\\n"
    return Stage(name, name, 60, (sys.executable, "-c", prelude + code))
stages = [stage("one", "record(markdown=['first stage table'])"), stage("two", "record(markdown=['second'])"),
          stage("three", "record(pid=os.getpid()); time.sleep(60)")]
try:
    stage_runner.run_stages(stages, sys.argv[1], "killable", 120)
except stage_runner.Interrupted as interruption:
    sys.exit(128 + interruption.signum)
"""


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_run_keeps_the_finished_stages(tmp_path, signum):
    runner = subprocess.Popen([sys.executable, "-c", KILLABLE_RUN, str(tmp_path)], cwd=REPO)
    results, summary_path = tmp_path / "results.json", tmp_path / "summary.md"
    deadline = time.monotonic() + 60
    while True:  # until both files say stage three runs
        assert time.monotonic() < deadline and runner.poll() is None, "stage three never started"
        run = stage_runner.read_record(results)
        if run and run["stages"][2]["status"] == "running" and "| three | running |" in summary_path.read_text():
            break
        time.sleep(0.05)
    stage_pid = run["stages"][2]["pid"]
    runner.send_signal(signum)
    returncode = runner.wait(timeout=30)
    run = _strict_json(results)
    one, two, three = run["stages"]
    assert one["status"] == two["status"] == "ok" and one["record"]["markdown"] == ["first stage table"]
    summary = summary_path.read_text()
    assert "| 1 | one | ok |" in summary and "| 2 | two | ok |" in summary and "first stage table" in summary
    assert _gone(stage_pid), "the running stage outlived the runner"
    if signum == signal.SIGKILL:
        assert returncode == -signal.SIGKILL and three["status"] == "running" and run["state"] == "running"
        assert "| 3 | three | running |" in summary
    else:
        assert returncode == 128 + signal.SIGTERM
        assert three["status"] == "interrupted" and run["state"] == "interrupted"
        assert "| 3 | three | interrupted |" in summary


def test_a_long_stage_output_is_cut_in_the_middle(tmp_path, monkeypatch):
    monkeypatch.setattr(stage_runner, "STAGE_LOG_LIMIT", 4000)
    code = "print('FIRST'); print('x' * 100000); print('LAST')"
    stage_runner.run_stages([_python_stage("chatty", code, 20)], tmp_path, "test run", 60)
    log = (tmp_path / "run.log").read_text()
    assert "FIRST" in log and "LAST" in log and "bytes of this stage's output cut" in log
    assert len(log) < 4000 + 500


# ============================================================================= pieces of the stages
def test_a_kernel_benchmark_report_is_merged_into_the_record(monkeypatch, tmp_path):
    """On a GPU each bench module writes <name>.json and .md; the stage keeps both in its record instead."""
    class FakeBench:
        @staticmethod
        def main(argv):
            out = Path(argv[argv.index("--out") + 1])
            (out / "bench_ffn.json").write_text(json.dumps({"device": "H100", "torch": "2.11", "matmul_peak_tflops":
                                                            700.4, "results": [{"tokens": 4096}]}))
            (out / "bench_ffn.md").write_text("| tokens |\n|---|\n| 4096 |\n")
            return 0

    monkeypatch.setattr(gpu_stages.importlib, "import_module", lambda name: FakeBench)
    monkeypatch.delenv(stage_runner.RECORD_ENV, raising=False)
    monkeypatch.setenv(stage_runner.SCRATCH_ENV, str(tmp_path))
    report = stage_runner.StageReport()
    gpu_stages.kernel_bench_stage("bench_ffn")(gpu_stages.StageContext(report, tmp_path / "out", dry_run=False))
    record = report.record
    assert record["report"]["results"] == [{"tokens": 4096}] and "status" not in record
    assert record["markdown"][0] == "H100, torch 2.11; matmul_peak_tflops: 700"
    assert record["markdown"][2:] == ["| tokens |", "|---|", "| 4096 |"]


def test_junit_results_counts_and_names_the_failures(tmp_path):
    (tmp_path / "j.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="1" time="2.5">'
        '<testcase classname="tests.kernels.test_ffn" name="test_a"/>'
        '<testcase classname="tests.kernels.test_ffn" name="test_b"><failure message="assert 1 == 2&#10;more"/>'
        '</testcase><testcase classname="x" name="test_c"><skipped/></testcase></testsuite></testsuites>')
    results = gpu_stages.junit_results(tmp_path / "j.xml")
    assert {k: results[k] for k in ("tests", "passed", "failures", "skipped")} == \
        {"tests": 3, "passed": 1, "failures": 1, "skipped": 1}
    assert results["failed"] == [{"test": "tests.kernels.test_ffn::test_b", "outcome": "failure",
                                  "message": "assert 1 == 2"}]
    assert gpu_stages.junit_results(tmp_path / "missing.xml") == {}


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="on a GPU this would run the benchmarks")
def test_the_gpu_runs_benchmark_arguments_parse(tmp_path, capsys):
    import importlib

    for name, argv in gpu_stages.BENCH_ARGS[False].items():
        assert importlib.import_module(f"benchmarks.{name}").main(["--out", str(tmp_path), *argv]) == 0
        assert "skipped" in capsys.readouterr().out
    from benchmarks import bench_attention

    with pytest.raises(SystemExit):
        bench_attention.main(["--max-lens", "128,zero"])
    assert capsys.readouterr().err.count("\n") == 1


def test_stage_budgets_fit_the_wall_limits():
    assert sum(s.budget_s for s in gpu_stages.STAGES) <= gpu_stages.WALL_LIMIT_S[False] - 30  # room for the install
    assert gpu_stages.WALL_LIMIT_S[True] < 180


# ============================================================================= bad input
@pytest.mark.parametrize("argv, message", [
    (["--only", "smoke,nosuch", "OUT"], "nosuch: not a stage"),
    (["--budget", "smoke=-3", "OUT"], "NAME=SECONDS"),
    (["--spent", "soon", "OUT"], "seconds"),
    ([], "required: OUT"),
])
def test_bad_arguments_get_one_line_on_stderr(argv, message, capsys, tmp_path):
    argv = [str(tmp_path / "out") if a == "OUT" else a for a in argv]
    with pytest.raises(SystemExit) as exit_:
        gpu_stages.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err


def test_an_out_folder_with_other_files_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit):
        gpu_stages.main([str(tmp_path)])
    assert "notes.txt" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").exists()


def test_gpu_run_sh_without_out_says_so_in_one_line():
    done = subprocess.run(["bash", "benchmarks/gpu_run.sh"], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable}, timeout=60)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "OUT" in done.stderr
