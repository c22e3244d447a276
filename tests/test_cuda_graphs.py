"""CUDA graphs for inference (fastbert/cuda_graphs.py): the bucketing, loading and reading back, checked on
the CPU, where the same static buffers run without a graph; the capture itself runs in gpu_run.sh."""

import copy

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config
from test_modeling import assert_close_on, pair

import fastbert
from fastbert import cuda_graphs


def test_buckets_are_the_next_power_of_two():
    assert [cuda_graphs.bucket(n) for n in (1, 2, 3, 64, 65, 127, 129, 513)] == [1, 2, 4, 64, 128, 128, 256, 1024]
    assert cuda_graphs.bucket(3, minimum=16) == 16
    key = cuda_graphs.BucketKey.of(total=37, batch=5, longest=9)
    assert (key.tokens, key.sequences, key.max_seqlen) == (64, 16, 16)


def test_a_batch_loads_into_the_front_of_the_static_buffers():
    static = cuda_graphs.StaticBatch(cuda_graphs.BucketKey.of(total=17, batch=2, longest=16), torch.device("cpu"))
    static.ids.fill_(7)
    ids = torch.arange(1, 18)
    static.load(ids, ids + 10, ids + 20, torch.tensor([0, 16, 17], dtype=torch.int32))
    assert static.ids[:17].tolist() == ids.tolist() and static.positions[:17].tolist() == (ids + 20).tolist()
    # 32 rows: the spare rows 17..31 form one sequence (max_seqlen 16), the last slot is empty.
    assert static.cu_seqlens.tolist() == [0, 16, 17, 32, 32]


@pytest.mark.parametrize("seed", range(20))
def test_every_row_lies_in_a_sequence_no_longer_than_the_bucket(seed):
    gen = torch.Generator().manual_seed(seed)
    batch = int(torch.randint(1, 40, (1,), generator=gen))
    lengths = torch.randint(1, 300, (batch,), generator=gen)
    cu = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).int()
    total, longest = int(cu[-1]), int(lengths.max())
    key = cuda_graphs.BucketKey.of(total, batch, longest)
    static = cuda_graphs.StaticBatch(key, torch.device("cpu"))
    static.load(torch.zeros(total).long(), torch.zeros(total).long(), torch.zeros(total).long(), cu)
    sizes = static.cu_seqlens.diff()
    assert static.cu_seqlens[-1] == key.tokens and (sizes >= 0).all() and sizes.max() <= key.max_seqlen
    assert static.cu_seqlens[:batch + 1].tolist() == cu.tolist()


@pytest.fixture
def graphed():
    config = tiny_config(num_hidden_layers=2)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    fastbert.optimize(model, cuda_graphs=True)
    return reference, model


@pytest.mark.parametrize("padding", ["right", "left"])
def test_graphed_calls_give_transformers_numbers_for_batches_of_every_size(graphed, padding):
    reference, model = graphed
    with torch.no_grad():
        for batch, seqlen, seed in ((4, 13, 0), (3, 9, 1), (1, 5, 2), (5, 16, 3), (4, 13, 4)):
            ids, types, mask = random_batch(model.config, batch=batch, seqlen=seqlen, seed=seed, padding=padding)
            model.pooler, pooler = None, model.pooler  # left padding would make the pooler's call exact
            got = model(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
            model.pooler = pooler
            want = reference(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
            assert_close_on(mask, want, got)
            assert (got[mask == 0] == 0).all()
    encoder = cuda_graphs._ENCODERS[model]
    assert len(encoder.entries) < 5, "batches in one bucket must share its buffers"


def test_an_output_is_not_overwritten_by_the_next_call(graphed):
    _, model = graphed
    ids = torch.randint(1, model.config.vocab_size, (2, 8))
    with torch.no_grad():
        first = model(ids).last_hidden_state  # no padding: the buffer itself would come back
        kept = first.clone()
        model(torch.randint(1, model.config.vocab_size, (2, 8)))
    assert torch.equal(first, kept)


def test_edited_weights_drop_the_buckets_and_training_calls_run_eagerly(graphed):
    reference, model = graphed
    ids, types, mask = random_batch(model.config)
    with torch.no_grad():
        model(ids, attention_mask=mask)
        for m in (reference, model):
            m.encoder.layer[0].output.dense.weight.mul_(0.5)
        assert_close_on(mask, reference(ids, attention_mask=mask).last_hidden_state,
                        model(ids, attention_mask=mask).last_hidden_state)
    entries = dict(cuda_graphs._ENCODERS[model].entries)
    model.train()
    model(ids, attention_mask=mask).last_hidden_state.sum().backward()  # not eligible: autograd
    assert cuda_graphs._ENCODERS[model].entries == entries


def test_copies_carry_no_graphs_and_optimize_leaves_the_setting_alone(graphed):
    _, model = graphed
    with torch.no_grad():
        model(torch.randint(1, model.config.vocab_size, (2, 8)))
    twin = copy.deepcopy(model)
    assert twin not in cuda_graphs._ENCODERS and twin._cuda_graphs_enabled
    fastbert.optimize(twin)
    assert twin._cuda_graphs_enabled
    fastbert.optimize(twin, cuda_graphs=False)
    assert not twin._cuda_graphs_enabled
