"""What every GPU benchmark writes: ``<name>.json`` (the device, torch and every figure) and ``<name>.md``."""

from __future__ import annotations

import json
from pathlib import Path

import torch


def write_report(out: str, name: str, table: str, results: list, **extra) -> None:
    """Writes ``out/<name>.json`` and ``out/<name>.md`` (the markdown ``table``)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, **extra, "results": results}
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2))
    (folder / f"{name}.md").write_text(table + "\n")
