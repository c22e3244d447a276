"""Checkpoint folders written atomically: a crash leaves the previous folder or the new one, never half.

``write_atomically(target, write)`` fills a temporary sibling folder, then swaps it in with two renames
(``target`` -> ``.target.old``, temporary -> ``target``) and deletes the old one. If a crash falls between
the two renames, :func:`find` returns ``.target.old``, the last complete folder.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Optional

STATE_FILE = "training_state.pt"


def _old(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Calls ``write(folder)`` on an empty temporary folder, flushes its files to disk and renames it to
    ``target``, replacing what was there."""
    target = Path(target)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb") as f:
                    os.fsync(f.fileno())
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = _old(target)
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.rename(target, old)
    os.rename(tmp, target)
    _fsync_folder(target.parent)  # the renames themselves reach the disk
    shutil.rmtree(old, ignore_errors=True)


def _fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def find(target: Path) -> Optional[Path]:
    """``target``, or the previous complete folder if a swap was interrupted, or None."""
    target = Path(target)
    for folder in (target, _old(target)):
        if folder.is_dir():
            return folder
    return None
