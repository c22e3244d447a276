"""Runs stages one after another, each in its own process under its own time budget, and keeps every
finished stage's results on disk.

A stage is a command. It reports by writing a JSON record (an object) to the file named by
``$FASTBERT_STAGE_RECORD``, as often as it likes (a stage killed past its budget keeps what it last wrote);
``$FASTBERT_STAGE_SCRATCH`` is a folder of its own, deleted afterwards. Record fields the runner reads:
``status`` (``ok``, ``failed``, ``skipped``, or ``timeout`` for a stage that stopped itself at its
deadline; default ``ok``), ``reason`` (one line) and ``markdown`` (a list of lines for ``summary.md``);
everything else is kept as it is in ``results.json``.

The stage's stdout and stderr are appended to the run's log. Past its budget (or the run's time left, if
less) the stage's process group is killed and the stage is recorded as ``timeout``; the next stage runs.
``results.json`` and ``summary.md`` are rewritten when a stage starts and when it ends, so a run killed at
any point keeps every finished stage (and shows which one was running). A stage process gets SIGKILL if
the runner dies (Linux), so a killed run leaves nothing running on the GPU. Standard library only: the
runner never imports torch, so it never touches CUDA itself.
"""

from __future__ import annotations

import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

RECORD_ENV = "FASTBERT_STAGE_RECORD"
SCRATCH_ENV = "FASTBERT_STAGE_SCRATCH"
BUDGET_ENV = "FASTBERT_STAGE_BUDGET_S"

LOG_NAME, RESULTS_NAME, SUMMARY_NAME = "run.log", "results.json", "summary.md"
PASSING_STATUSES = ("ok", "skipped")
MIN_STAGE_S = 5.0  # a stage with less of the run's time left than this is skipped
STAGE_LOG_LIMIT = 1 << 20  # bytes of one stage's output kept in the log (its head and tail)
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class Stage:
    """One step of a run: ``command`` (argv) runs in ``cwd`` for at most ``budget_s`` seconds."""

    name: str
    title: str
    budget_s: float
    command: tuple
    cwd: str | None = None


class Interrupted(Exception):
    """The runner got a termination signal (SIGTERM, SIGHUP or SIGINT)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_stages(stages: list[Stage], out: Path, title: str, total_budget_s: float, env: dict | None = None,
               meta: dict | None = None) -> dict:
    """Runs ``stages`` in order into ``out`` (log, ``results.json``, ``summary.md``); returns the run record.
    ``env`` is added to the stages' environment (a value of None removes that variable).
    On SIGTERM/SIGHUP/SIGINT the running stage is killed and recorded as ``interrupted``, the outputs are
    written, and :class:`Interrupted` is raised."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    run = {"title": title, "state": "running", "started_utc": _utc_now(), "finished_utc": None,
           "total_budget_s": total_budget_s, "log": LOG_NAME, **({"meta": meta} if meta else {}),
           "stages": [{"name": s.name, "title": s.title, "budget_s": s.budget_s, "status": "pending",
                       "seconds": None} for s in stages]}
    write_outputs(out, run)
    saved_handlers = _catch_termination()
    try:
        for stage, entry in zip(stages, run["stages"]):
            left = total_budget_s - (time.monotonic() - started)
            if left < MIN_STAGE_S:
                entry.update(status="skipped", seconds=0.0, reason=f"no time left of the run's {total_budget_s:.0f} s")
                write_outputs(out, run)
                continue
            budget = min(stage.budget_s, left)

            def on_start(pid, entry=entry, budget=budget):
                entry.update(status="running", pid=pid, started_utc=_utc_now(), effective_budget_s=round(budget, 1))
                write_outputs(out, run)

            try:
                entry.update(run_stage(stage, budget, out / LOG_NAME, env, on_start, trimmed=budget < stage.budget_s))
            except Interrupted as interruption:
                entry.update(getattr(interruption, "entry", {"status": "interrupted"}))
                raise
            finally:
                entry.pop("pid", None)
            write_outputs(out, run)
    except Interrupted:
        run["state"] = "interrupted"
        raise
    finally:
        _restore_handlers(saved_handlers)
        if run["state"] == "running":
            run["state"] = "finished"
        run["finished_utc"] = _utc_now()
        run["seconds"] = round(time.monotonic() - started, 1)
        write_outputs(out, run)
    return run


def run_stage(stage: Stage, budget_s: float, log_path: Path, env: dict | None, on_start=None,
              trimmed: bool = False) -> dict:
    """Runs one stage's command for at most ``budget_s`` seconds, its output appended to ``log_path``;
    returns its entry: ``status``, ``seconds``, ``reason`` (where there is one) and ``record``.
    ``on_start(pid)`` is called once the process runs; ``trimmed`` says the budget is the run's time left.
    On :class:`Interrupted` the stage is killed and the exception re-raised with its entry attached."""
    folder = Path(tempfile.mkdtemp(prefix=f"fastbert-stage-{stage.name}-"))
    record_path, scratch = folder / "record.json", folder / "scratch"
    scratch.mkdir()
    child_env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}  # None: unset
    child_env.update({RECORD_ENV: str(record_path), SCRATCH_ENV: str(scratch), BUDGET_ENV: f"{budget_s:.1f}"})
    interruption, timed_out = None, False
    try:
        with open(log_path, "ab") as log:
            log.write(f"\n===== {stage.name}: {stage.title} (budget {budget_s:.0f} s, {_utc_now()})\n".encode())
            log.flush()
            section_start = log.tell()
            start = time.monotonic()
            proc = subprocess.Popen(list(stage.command), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=child_env, cwd=stage.cwd,
                                    start_new_session=True, preexec_fn=_die_with(os.getpid()))
            try:
                if on_start:
                    on_start(proc.pid)
                returncode = proc.wait(timeout=budget_s)
            except subprocess.TimeoutExpired:
                timed_out, returncode = True, kill_group(proc)
            except Interrupted as caught:
                interruption, returncode = caught, kill_group(proc)
            seconds = round(time.monotonic() - start, 1)
        _trim_section(log_path, section_start, STAGE_LOG_LIMIT)
        with open(log_path, "ab") as log:
            ended = "timeout" if timed_out else f"exit status {returncode}"
            log.write(f"===== {stage.name}: {ended} after {seconds} s\n".encode())
        record = read_record(record_path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if interruption:
        interruption.entry = {"status": "interrupted", "seconds": seconds, "record": record,
                              "reason": f"the run got {interruption} while this stage ran"}
        raise interruption
    return {**_outcome(record, returncode, timed_out, budget_s, trimmed), "seconds": seconds, "record": record}


def _outcome(record: dict, returncode: int, timed_out: bool, budget_s: float, trimmed: bool) -> dict:
    """``status`` and ``reason`` of a finished stage from how it ended and what it recorded."""
    if timed_out:
        limit = "the run's time left" if trimmed else "its budget"
        return {"status": "timeout", "reason": f"killed after {budget_s:.0f} s ({limit})"}
    if returncode != 0:
        how = f"killed by signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        return {"status": "failed", "reason": record.get("reason") or how}
    status = record.get("status", "ok")
    if status not in ("ok", "failed", "skipped", "timeout"):
        return {"status": "failed", "reason": f"the stage recorded an unknown status {status!r}"}
    return {"status": status, **({"reason": record["reason"]} if record.get("reason") else {})}


def kill_group(proc: subprocess.Popen) -> int:
    """SIGKILL to ``proc``'s process group (it leads one: ``start_new_session``); returns its exit status."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    return proc.wait()


def _die_with(parent_pid: int):
    """A ``preexec_fn``: the child gets SIGKILL when its parent dies (Linux ``PR_SET_PDEATHSIG``; elsewhere
    nothing), and exits at once if the parent is already gone."""
    def preexec():
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            return
        if os.getppid() != parent_pid:
            os._exit(1)
    return preexec


def die_with_this_process():
    """A ``preexec_fn`` for a stage's own subprocesses (pytest): they die with the stage."""
    return _die_with(os.getpid())


def _trim_section(log_path: Path, start: int, limit: int) -> None:
    """Keeps at most ``limit`` bytes of the log after offset ``start``: the first quarter and the rest from
    the end, with a line saying how much was cut."""
    size = log_path.stat().st_size
    if size - start <= limit:
        return
    head, tail = limit // 4, limit - limit // 4
    with open(log_path, "r+b") as log:
        log.seek(start)
        first = log.read(head)
        log.seek(size - tail)
        last = log.read(tail)
        log.seek(start)
        log.write(first + f"\n[... {size - start - head - tail} bytes of this stage's output cut ...]\n".encode()
                  + last)
        log.truncate()


def read_record(path: Path) -> dict:
    """The JSON object a stage wrote, or ``{}`` (none yet, or cut off mid-write)."""
    try:
        record = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def exit_status(run: dict) -> int:
    """0 when every stage passed or was skipped, else 1."""
    return 0 if all(s["status"] in PASSING_STATUSES for s in run["stages"]) else 1


class StageReport:
    """A stage's side: its record, rewritten to ``$FASTBERT_STAGE_RECORD`` on every :meth:`save` (outside a
    runner, kept in memory only), its scratch folder and the seconds its budget leaves."""

    def __init__(self):
        self.path = Path(os.environ[RECORD_ENV]) if os.environ.get(RECORD_ENV) else None
        scratch = os.environ.get(SCRATCH_ENV)
        self.scratch = Path(scratch) if scratch else Path(tempfile.mkdtemp(prefix="fastbert-stage-"))
        self.budget_s = float(os.environ.get(BUDGET_ENV, "inf"))
        self.record: dict = {}
        self._start = time.monotonic()

    def save(self, **fields) -> None:
        """Adds ``fields`` to the record and rewrites it."""
        self.record.update(fields)
        if self.path:
            write_atomically(self.path, json.dumps(json_safe(self.record), allow_nan=False))

    def seconds_left(self) -> float:
        return self.budget_s - (time.monotonic() - self._start)


# ============================================================================= outputs
def write_outputs(out: Path, run: dict) -> None:
    """Rewrites ``results.json`` and ``summary.md`` from the run record (each replaced atomically)."""
    write_atomically(Path(out) / RESULTS_NAME, json.dumps(json_safe(run), indent=1, allow_nan=False) + "\n")
    write_atomically(Path(out) / SUMMARY_NAME, summary_markdown(run))


def write_atomically(path: Path, text: str) -> None:
    """Writes ``text`` to a hidden file next to ``path``, then renames it over ``path``."""
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(text)
    os.replace(partial, path)


def json_safe(value):
    """``value`` with every non-finite float as the string ``"nan"``, ``"inf"`` or ``"-inf"`` (strict JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def stage_table(run: dict) -> list[str]:
    """Markdown rows: each stage's number, name, status, seconds, budget and reason."""
    lines = ["| # | stage | status | seconds | budget s | note |", "|---|---|---|---|---|---|"]
    for number, s in enumerate(run["stages"], 1):
        seconds = "" if s.get("seconds") is None else f"{s['seconds']:.1f}"
        note = str(s.get("reason") or "").replace("|", "/")
        lines.append(f"| {number} | {s['name']} | {s['status']} | {seconds} | {s['budget_s']:.0f} | {note} |")
    return lines


def summary_markdown(run: dict) -> str:
    """``summary.md``: the stage table (status, seconds, budget, reason), then each stage's own tables."""
    state = {"running": "**running** (or the run was killed: stages still `running` or `pending` never finished)",
             "finished": "finished", "interrupted": "**interrupted**"}[run["state"]]
    lines = [f"# {run['title']}", "",
             f"State: {state}. Started {run['started_utc']}"
             + (f", finished {run['finished_utc']}" if run.get("finished_utc") else "")
             + (f" ({run['seconds']} s)" if run.get("seconds") is not None else "")
             + f"; time budget {run['total_budget_s']:.0f} s. Every stage's output: `{run['log']}`.", "",
             *stage_table(run)]
    for number, s in enumerate(run["stages"], 1):
        body = (s.get("record") or {}).get("markdown") or []
        if body:
            lines += ["", f"## {number}. {s['name']}: {s['title']} ({s['status']})", "", *body]
    return "\n".join(lines) + "\n"


# ============================================================================= signals
def _catch_termination() -> dict:
    """Turns SIGTERM, SIGHUP and SIGINT into :class:`Interrupted`; returns the handlers it replaced."""
    def handler(signum, _frame):
        raise Interrupted(signum)

    saved = {}
    for signum in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        try:
            saved[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return saved


def _restore_handlers(saved: dict) -> None:
    for signum, old in saved.items():
        signal.signal(signum, old)


def _utc_now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
