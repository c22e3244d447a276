"""Checks the ``fastbert`` commands run on their options before any work (before torch loads where they can).

Each check raises :class:`UsageError` with one line naming the option (or environment variable), its
value and what is wrong, so a command can refuse in a second instead of failing after a model loaded or
a run trained.
"""

from __future__ import annotations

import importlib.util
import os
import re
from pathlib import Path
from typing import Optional

# fastbert.ops.BACKENDS; repeated here, where importing fastbert.ops would import torch.
BACKENDS = ("auto", "triton", "torch")
OFFLINE_VARIABLES = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
# What the Hub takes as a model name: "name" or "namespace/name" (letters, digits, "-", "_", ".").
_HUB_NAME = re.compile(r"[\w.-]+(/[\w.-]+)?")


class UsageError(ValueError):
    """An option or environment variable a command cannot work with: one line, no traceback."""


def input_file(option: str, path) -> None:
    """``path`` (the value of ``option``) is an existing file."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{option} {path}: no such file")
    if not path.is_file():
        raise UsageError(f"{option} {path}: is a folder, not a file")


def output_folder(option: str, path) -> None:
    """``path`` is a folder, or can be made one: neither it nor its nearest existing parent is a file."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{option} {path}: is a file, not a folder")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UsageError(f"{option} {path}: {parent} is a file, not a folder")


def offline() -> Optional[str]:
    """The setting that keeps transformers off the network (``"HF_HUB_OFFLINE=1"``), or None."""
    for name in OFFLINE_VARIABLES:
        value = os.environ.get(name, "")
        if value.strip().upper() in ("1", "ON", "YES", "TRUE"):
            return f"{name}={value}"
    return None


def model_source(option: str, value: str) -> None:
    """``value`` is a saved model's folder, or a Hub name transformers can load (from the cache when
    offline: :func:`offline`)."""
    path = Path(value)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UsageError(f"{option} {value}: no config.json in this folder (not a saved model)")
        _model_type(option, path / "config.json")
        return
    if path.exists():
        raise UsageError(f"{option} {value}: is a file, not a model folder")
    if not _looks_like_hub_name(value):
        raise UsageError(f"{option} {value}: no such folder")
    setting = offline()
    if setting and not _in_hub_cache(value):
        raise UsageError(f"{option} {value}: no such folder, and not in the Hugging Face cache "
                         f"({setting}: nothing is downloaded)")


def _looks_like_hub_name(value: str) -> bool:
    return bool(_HUB_NAME.fullmatch(value)) and not value.startswith((".", "-")) and ".." not in value


def _in_hub_cache(name: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(name, "config.json"), str)
    except Exception:  # huggingface_hub missing, or a name it does not take
        return False


def backend_name() -> str:
    """The value of ``FASTBERT_BACKEND`` (default ``auto``), as :func:`fastbert.ops.backend_name` reads it."""
    raw = os.environ.get("FASTBERT_BACKEND", "auto")
    name = raw.strip().lower() or "auto"
    if name not in BACKENDS:
        raise UsageError(f"FASTBERT_BACKEND={raw!r} is not one of {', '.join(BACKENDS)}")
    return name


def backend_runs_on(device: str) -> None:
    """``FASTBERT_BACKEND`` is known and runs on ``device`` ("cpu" or "cuda"): Triton off CUDA needs
    Triton's interpreter (``TRITON_INTERPRET=1``)."""
    if backend_name() == "triton" and device != "cuda" and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        raise UsageError(f"FASTBERT_BACKEND=triton on the {device.upper()} needs Triton's interpreter: set "
                         "TRITON_INTERPRET=1, or use FASTBERT_BACKEND=auto")


def device(option: str, value: Optional[str]) -> str:
    """``value`` ("cpu", "cuda", or None for CUDA when available), checked: "cuda" needs a CUDA device.
    Imports torch unless ``value`` is "cpu"."""
    if value == "cpu":
        return value
    import torch

    if value is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise UsageError(f"{option} {value}: no CUDA device is available")
    return value


def module_installed(name: str, why: str) -> None:
    """Module ``name`` can be imported (it is not imported here); ``why`` says what needs it."""
    if importlib.util.find_spec(name) is None:
        raise UsageError(f"{name} is not installed ({why})")


def _model_type(option: str, config: Path) -> None:
    """The folder's ``config.json`` names no model type, or one fastbert runs."""
    import json

    from fastbert.families import FAMILY_MODULES

    try:
        model_type = json.loads(config.read_text()).get("model_type")
    except (OSError, ValueError, AttributeError) as err:
        raise UsageError(f"{option} {config}: not a readable model config ({err})") from None
    if model_type is not None and model_type not in FAMILY_MODULES:  # none named: loading says what is missing
        raise UsageError(f"{option} {config.parent}: model_type {model_type!r} is not one fastbert runs "
                         f"(it runs {', '.join(FAMILY_MODULES)})")
