"""benchmarks/report.py: the GPU benchmarks time with the median of do_bench's runs (do_bench's own default is
the mean), and each report says so."""

import json

import pytest
import torch
import triton.testing

from benchmarks import report


def test_median_ms_asks_do_bench_for_the_median(monkeypatch):
    seen = {}
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kwargs: seen.update(kwargs) or 1.5)
    assert report.median_ms(lambda: None, grad_to_none=[]) == 1.5
    assert seen == {"return_mode": "median", "grad_to_none": []}


def test_the_report_says_its_times_are_medians(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA H200")
    report.write_report(str(tmp_path), "bench_x", "| a |\n|---|\n| 1 |", [{"a": 1}], copy_gbs=4000.0)
    markdown = (tmp_path / "bench_x.md").read_text()
    assert markdown.startswith("Times: the median of `triton.testing.do_bench`'s runs")
    assert markdown.endswith("\n\n| a |\n|---|\n| 1 |\n")
    record = json.loads((tmp_path / "bench_x.json").read_text())
    assert record["timing"] == report.TIMING and record["device"] == "NVIDIA H200"
    assert record["copy_gbs"] == 4000.0 and record["results"] == [{"a": 1}]


@pytest.mark.parametrize("module", ["bench_attention", "bench_ffn", "bench_layernorm"])
def test_no_gpu_benchmark_calls_do_bench_itself(module):
    """Every timing goes through report.median_ms (a bare do_bench would be the mean)."""
    import importlib
    import inspect

    source = inspect.getsource(importlib.import_module(f"benchmarks.{module}"))
    assert "do_bench(" not in source and "median_ms(" in source
