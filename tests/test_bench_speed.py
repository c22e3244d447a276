"""benchmarks/speed.py: every speed row says how it was timed (the fastbert backend; on the CPU, how many
timed runs its median is of), which the report and plots (benchmarks/plots.py) print."""

import torch
import transformers

from benchmarks import speed


def test_cpu_timings_keep_every_run_and_rows_say_how_many(monkeypatch):
    monkeypatch.setenv("FASTBERT_BACKEND", "torch")
    timed = speed.time_callables({speed.REFERENCE: lambda: sum(range(1000)), "fastbert": lambda: sum(range(1000))},
                                 torch.device("cpu"), 4)
    assert all(len(t["runs"]) == 4 for t in timed.values())
    assert speed.timing(timed) == {"fastbert_backend": "torch", "repeats": 4}
    assert speed.timing({"x": {"ms": 1.0, "speedup": 1.0}}) == {"fastbert_backend": "torch"}  # CUDA: no runs kept


def test_inference_and_training_rows_carry_backend_and_repeats(monkeypatch):
    monkeypatch.delenv("FASTBERT_BACKEND", raising=False)
    torch.manual_seed(0)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=1200, attn_implementation="sdpa")
    rows = speed.inference_grid(transformers.BertModel(config), torch.device("cpu"), (2,), (8,), 2, False,
                                kinds=("full",))
    assert rows and all(r["fastbert_backend"] == "auto" and r["repeats"] == 2 for r in rows)
    rows = speed.training_step(1, 2, 8, torch.device("cpu"), 2, vocab_size=1200)
    assert rows and all(r["fastbert_backend"] == "auto" and r["repeats"] == 2 for r in rows)
