"""What every GPU benchmark writes: ``<name>.json`` (the device, torch and every figure) and ``<name>.md``;
and how they time: :func:`median_ms`, the median of ``triton.testing.do_bench``'s runs (do_bench itself
returns the mean unless told otherwise)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from . import OneLineArgumentParser


def gpu_args(argv, doc: str, name: str, why: str, add_arguments=None):
    """The parsed ``--out`` (plus what ``add_arguments(parser)`` adds) of a GPU-only benchmark, or None
    after saying why it skipped when there is no CUDA device."""
    parser = OneLineArgumentParser(prog=f"python -m benchmarks.{name}", description=doc.splitlines()[0])
    parser.add_argument("--out", default="bench-out")
    if add_arguments:
        add_arguments(parser)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print(f"{name}: skipped: {why}; on the CPU the kernels only run in the Triton interpreter, whose "
              "timings mean nothing.")
        return None
    return args


TIMING = ("Times: the median of `triton.testing.do_bench`'s runs (warm-up, L2 cache flushed between runs); "
          "speed-ups and fractions of a peak: ratios of those medians.")


def median_ms(fn, **kwargs) -> float:
    """Milliseconds per call of ``fn``: the median of ``triton.testing.do_bench``'s timed runs (``kwargs``
    go to do_bench, e.g. ``grad_to_none``)."""
    from triton.testing import do_bench

    return do_bench(fn, return_mode="median", **kwargs)


def copy_bandwidth(device) -> float:
    """GB/s of one large device-to-device copy (bytes read + written): the memory-bound peak."""
    src = torch.empty(256 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / median_ms(lambda: dst.copy_(src)) / 1e6


def matmul_peak(device) -> float:
    """TFLOP/s of one large bf16 matmul: the compute-bound peak."""
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    return 2 * 8192 ** 3 / median_ms(lambda: a @ a) / 1e9


def write_report(out: str, name: str, table: str, results: list, **extra) -> None:
    """Writes ``out/<name>.json`` and ``out/<name>.md`` (the markdown ``table`` under a line saying what its
    figures are, :data:`TIMING`)."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "timing": TIMING, **extra,
              "results": results}
    (folder / f"{name}.json").write_text(json.dumps(record, indent=2))
    (folder / f"{name}.md").write_text(f"{TIMING}\n\n{table}\n")


def int_list(text: str) -> tuple:
    """``"128,512"`` -> ``(128, 512)`` (an argparse type: positive integers, comma-separated)."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of positive integers")
    return values
