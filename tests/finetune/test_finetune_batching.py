"""fastbert.finetune.batching: length-grouped train/eval plans and the padded per-process shares."""

import random

import pytest
import torch

from fastbert.finetune.batching import PlannedBatches, eval_plan, train_plan
from fastbert.finetune.data import Encoded

SIZES = [1, 7, 65, 129]


def random_lengths(n, low=5, high=120, seed=0):
    rng = random.Random(seed * 1000 + n)
    return [rng.randint(low, high) for _ in range(n)]


def padded_tokens(batch, lengths):
    return len(batch) * max(lengths[i] for i in batch)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("global_batch", [1, 4, 6, 8, 16, 64])
def test_train_plan_covers_each_example_once(n, global_batch):
    lengths = random_lengths(n)
    plan = train_plan(lengths, global_batch, seed=3, epoch=1)
    seen = [i for batch in plan for i in batch]
    assert sorted(seen) == list(range(n))
    short = n % global_batch
    sizes = sorted(len(batch) for batch in plan)
    expected = [global_batch] * (n // global_batch) + ([short] if short else [])
    assert sizes == sorted(expected)
    for batch in plan:
        assert [lengths[i] for i in batch] == sorted((lengths[i] for i in batch), reverse=True)


@pytest.mark.parametrize("n", SIZES)
def test_train_plan_largest_batch_first(n):
    lengths = random_lengths(n, seed=1)
    for epoch in range(3):
        plan = train_plan(lengths, 8, seed=0, epoch=epoch)
        assert padded_tokens(plan[0], lengths) == max(padded_tokens(b, lengths) for b in plan)


def test_train_plan_deterministic_and_reshuffled():
    lengths = random_lengths(129, seed=2)
    plans = {(seed, epoch): train_plan(lengths, 8, seed, epoch) for seed in (0, 1) for epoch in (0, 1, 2)}
    for (seed, epoch), plan in plans.items():
        assert train_plan(list(lengths), 8, seed, epoch) == plan
    assert len({str(plan) for plan in plans.values()}) == len(plans)
    # not just the batches reordered: the grouping of examples changes too
    groups = [{frozenset(b) for b in plans[0, epoch]} for epoch in (0, 1)]
    assert groups[0] != groups[1]


def test_train_plan_little_padding():
    lengths = random_lengths(3000, seed=5)
    global_batch = 32
    grouped = train_plan(lengths, global_batch, seed=0, epoch=0)
    order = list(range(len(lengths)))
    random.Random(0).shuffle(order)
    plain = [order[i:i + global_batch] for i in range(0, len(order), global_batch)]
    real = sum(lengths)
    padding = [sum(padded_tokens(b, lengths) for b in plan) - real for plan in (grouped, plain)]
    assert padding[0] < 0.5 * padding[1]


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("global_batch", [1, 4, 7, 64])
def test_eval_plan_covers_each_example_once(n, global_batch):
    lengths = random_lengths(n, seed=6)
    plan = eval_plan(lengths, global_batch)
    flat = [i for batch in plan for i in batch]
    assert sorted(flat) == list(range(n))
    assert [len(b) for b in plan[:-1]] == [global_batch] * (len(plan) - 1) and 0 < len(plan[-1]) <= global_batch
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)


# ------------------------------------------------------------------------------------------ PlannedBatches

PAD = 0


def random_encoded(n, seed=0):
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 40, (n,), generator=gen).tolist()
    ids = [torch.randint(1000, 2000, (k,), generator=gen).tolist() for k in lengths]
    types = [torch.randint(0, 2, (k,), generator=gen).tolist() for k in lengths]
    labels = torch.randint(0, 5, (n,), generator=gen).tolist()
    return Encoded(ids, types, labels)


def check_item(item, data, batch):
    share = item["index"].tolist()
    lengths = [len(data.input_ids[j]) for j in share]
    shape = (len(share), max(lengths))
    for key in ("input_ids", "token_type_ids", "attention_mask"):
        assert item[key].shape == shape and item[key].dtype == torch.int64
    assert item["labels"].tolist() == [data.labels[j] for j in share] and item["labels"].dtype == torch.int64
    for row, (j, k) in enumerate(zip(share, lengths)):
        assert item["input_ids"][row].tolist() == data.input_ids[j] + [PAD] * (shape[1] - k)
        assert item["token_type_ids"][row].tolist() == data.token_type_ids[j] + [0] * (shape[1] - k)
        assert item["attention_mask"][row].tolist() == [1] * k + [0] * (shape[1] - k)
    assert item["global_examples"] == len(batch)
    assert item["global_tokens"] == sum(len(data.input_ids[j]) for j in batch)
    return share


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("world", [1, 2])
def test_planned_batches_shares(n, world):
    data = random_encoded(n, seed=n)
    plan = train_plan(data.lengths, 6, seed=1, epoch=0)
    shares = [PlannedBatches(data, plan, rank, world, PAD) for rank in range(world)]
    assert all(len(s) == len(plan) for s in shares)
    for i, batch in enumerate(plan):
        items = [s[i] for s in shares]
        indices = [check_item(item, data, batch) for item in items if item is not None]  # None: an empty share
        assert sorted(sum(indices, [])) == sorted(batch)  # the ranks partition the global batch
        if world == 2 and len(batch) > 1:
            tokens = [sum(len(data.input_ids[j]) for j in share) for share in indices]
            assert abs(tokens[0] - tokens[1]) <= max(data.lengths)  # sorted batch: balanced shares


def test_planned_batches_empty_share():
    data = random_encoded(7, seed=9)
    plan = eval_plan(data.lengths, 4)  # [4 examples, 3 examples]
    last = [PlannedBatches(data, plan, rank, 4, PAD)[1] for rank in range(4)]
    assert last[3] is None
    stand_in = PlannedBatches(data, plan, 3, 4, PAD, stand_in=True)[1]
    assert stand_in["weight"] == 0.0 and stand_in["index"].tolist() == plan[1][:1]
    assert all(item["weight"] == 1.0 for item in last[:3])
    assert sorted(sum((check_item(item, data, plan[1]) for item in last[:3]), [])) == sorted(plan[1])
