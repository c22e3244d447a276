"""Runs the ``fastbert`` command in a fresh process and says whether it imported torch or transformers.

A command that refuses its options before any work exits without either (so without loading a model);
the CLI tests use this to check both the one-line error and that nothing ran.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass

# fastbert.cli.main, then the heavy modules loaded by then on a last line of stdout.
_PROBE = """
import sys
from fastbert.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exit_:
    code = exit_.code
print("imported:", ",".join(m for m in ("torch", "transformers") if m in sys.modules))
sys.exit(code)
"""


@dataclass
class Done:
    code: int
    out: str
    err: str
    imported: list  # of torch and transformers, those the command imported


def fastbert(*argv, env: dict | None = None, unset=(), cwd=None) -> Done:
    """``fastbert *argv`` in a subprocess, with ``env`` added to the environment and ``unset`` taken out."""
    environ = {k: v for k, v in os.environ.items() if k not in unset}
    environ.update(env or {})
    done = subprocess.run([sys.executable, "-c", _PROBE, *map(str, argv)], capture_output=True, text=True,
                          env=environ, cwd=cwd, timeout=120)
    lines = done.stdout.splitlines()
    last = lines[-1] if lines and lines[-1].startswith("imported:") else None
    imported = last.split(":", 1)[1].strip().split(",") if last else ["(did not finish)"]
    return Done(done.returncode, "\n".join(lines[:-1] if last else lines), done.stderr, [m for m in imported if m])


def assert_refused(done: Done, *words: str) -> None:
    """A non-zero exit with exactly one line on stderr, holding every one of ``words``, no traceback, and
    neither torch nor transformers imported (so no model loaded and nothing trained)."""
    assert done.code != 0, done
    assert "Traceback" not in done.err, done.err
    assert len(done.err.splitlines()) == 1 and done.err.endswith("\n"), done.err
    for word in words:
        assert str(word) in done.err, (word, done.err)
    assert done.imported == [], done
