"""The suite's inference and training cases (the ``--quick`` grid) as pytest-benchmark tests."""

import pytest
import torch

from benchmarks import speed
from benchmarks.suite import Plan

QUICK = Plan.for_run(torch.device("cpu"), quick=True)
IMPLS = ["transformers-eager", "transformers-sdpa", "fastbert"]


@pytest.fixture(scope="module")
def models(reference_model, device):
    return speed.inference_models(reference_model, device, compile_models=False)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", ["full", "variable"])
@pytest.mark.parametrize("max_len", QUICK.lengths)
@pytest.mark.parametrize("batch", QUICK.batches)
def test_inference(benchmark, models, reference_model, device, batch, max_len, kind, impl):
    benchmark.group = f"inference batch {batch} max_len {max_len} {kind}"
    ids, mask = (t.to(device) for t in speed.make_batch(kind, batch, max_len, reference_model.config.vocab_size))
    with torch.inference_mode():
        benchmark(models[impl], ids, mask)


@pytest.mark.parametrize("impl", ["transformers-sdpa", "fastbert"])
@pytest.mark.parametrize("kind", ["full", "variable"])
def test_training_step(benchmark, device, kind, impl):
    benchmark.group = f"training step {kind}"
    step = speed.training_callables(QUICK.train_layers, QUICK.train_batch, QUICK.train_len, device, kind)[impl]
    benchmark(step)
