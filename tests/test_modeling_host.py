"""What a forward costs on the host: fused ops called without the custom-op dispatcher in eager mode, one
dropout seed draw per forward, one layout per forward, the encoder's layers in one call in inference (and
module by module wherever a hook, a wrapped linear, autograd or dropout must see its call)."""

import functools

import pytest
import torch
import transformers
from conftest import random_batch, tiny_config
from test_modeling import ATOL, assert_close_on, assert_grads_close, pair

import fastbert
from benchmarks import host
from fastbert import ops, torch_ops

CUSTOM_OPS = ("_qkv", "_qkv_backward", "_attention", "_residual_layernorm", "_linear_gelu", "_linear_gelu_inference", "_ffn",
              "_ffn_inference", "_embeddings", "_attention_backward", "_residual_layernorm_backward",
              "_linear_gelu_backward", "_ffn_backward", "_embeddings_backward")


def _forbid_custom_ops(monkeypatch):
    def dispatched(*args, **kwargs):
        raise AssertionError("an eager call went through the custom-op dispatcher")
    for name in CUSTOM_OPS:
        monkeypatch.setattr(ops, name, dispatched)


@pytest.mark.parametrize("train", [False, True], ids=["inference", "training"])
def test_eager_calls_bypass_the_custom_op_dispatcher_with_the_same_numbers(train, monkeypatch):
    config = tiny_config(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    reference, model = pair(transformers.BertForSequenceClassification, fastbert.BertForSequenceClassification,
                            config)
    reference.train(train), model.train(train)
    ids, types, mask = random_batch(config)
    labels = torch.tensor([0, 2, 1, 1])
    _forbid_custom_ops(monkeypatch)
    with torch.set_grad_enabled(train):
        want = reference(ids, token_type_ids=types, attention_mask=mask, labels=labels)
        got = model(ids, token_type_ids=types, attention_mask=mask, labels=labels)
    assert (want.logits - got.logits).abs().max() <= ATOL
    if train:
        want.loss.backward()
        got.loss.backward()
        assert_grads_close(reference, model)


@pytest.mark.parametrize("op", ["attention", "residual_layernorm", "linear_gelu", "ffn", "embeddings"])
def test_eager_function_gradients_equal_the_custom_ops(op):
    """The same op through its eager autograd.Function and through its torch.library custom op."""
    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    seed = torch.tensor([11])
    tokens, hidden = 7, 12
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    inputs = {
        "attention": (rand(tokens, 3, 2, 6), cu, 4, 0.25, seed),
        "residual_layernorm": (rand(tokens, hidden), rand(hidden), rand(tokens, hidden), rand(hidden), rand(hidden),
                               1e-5, 0.25, seed),
        "linear_gelu": (rand(tokens, hidden), rand(9, hidden), rand(9)),
        "ffn": (rand(tokens, hidden), rand(9, hidden), rand(9), rand(5, 9)),
        "embeddings": (torch.tensor([1, 4, 2, 0, 4, 3, 1]), None, torch.arange(tokens), torch.zeros(tokens).long(),
                       rand(6, hidden), rand(8, hidden), rand(2, hidden), rand(hidden), rand(hidden), 1e-5, 0.25,
                       seed, 0, 3),
    }[op]
    custom = getattr(ops, f"_{op}")
    eager = {"attention": ops._EagerAttention, "residual_layernorm": ops._EagerResidualLayerNorm,
             "linear_gelu": ops._EagerLinearGelu, "ffn": ops._EagerFfn, "embeddings": ops._EagerEmbeddings}[op]
    leaves = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    results = []
    for run in (custom, eager.apply):
        out = run(*inputs)[0]
        upstream = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=out.dtype)
        results.append((out, torch.autograd.grad(out, leaves, upstream)))
    (want, want_grads), (got, got_grads) = results
    assert torch.equal(want, got)
    for w, g in zip(want_grads, got_grads):
        torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_one_seed_draw_per_training_forward_and_masks_kept_for_backward(monkeypatch):
    config = tiny_config(hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)
    model = fastbert.BertModel(config).train()
    ids, types, mask = random_batch(config)
    draws = []
    randint = torch.randint
    monkeypatch.setattr(torch, "randint", lambda *a, **k: draws.append(a) or randint(*a, **k))
    monkeypatch.setattr(ops, "new_seed", lambda device: pytest.fail("a dropout site drew its own seed"))
    torch.manual_seed(0)
    out = model(ids, attention_mask=mask).last_hidden_state
    assert len(draws) == 1 and draws[0][-1] == (1 + 3 * config.num_hidden_layers,)
    upstream = torch.randn_like(out)
    params = [p for name, p in model.named_parameters() if not name.startswith("pooler")]
    grads = torch.autograd.grad((out * upstream).sum(), params)
    torch.manual_seed(0)  # the same draw: the same masks, so the same output and gradients
    again = model(ids, attention_mask=mask).last_hidden_state
    assert torch.equal(out, again)
    for g, h in zip(grads, torch.autograd.grad((again * upstream).sum(), params)):
        assert torch.equal(g, h)


def test_seed_pool_sites_draw_distinct_masks(monkeypatch):
    config = tiny_config(hidden_dropout_prob=0.5, attention_probs_dropout_prob=0.5, num_hidden_layers=2)
    model = fastbert.BertModel(config).train()
    ids = torch.randint(1, config.vocab_size, (2, 9))
    seeds = []
    original = torch_ops.dropout_keep_mask
    monkeypatch.setattr(torch_ops, "dropout_keep_mask",
                        lambda shape, p, seed, device: seeds.append(int(seed)) or original(shape, p, seed, device))
    with torch.no_grad():
        model(ids)
    assert len(seeds) == 1 + 3 * config.num_hidden_layers and len(set(seeds)) == len(seeds)


def test_inference_after_a_fused_optimizer_step_sees_the_new_weights():
    """Fused AdamW steps parameters in place without moving their version counters: nothing derived from the
    weights may be cached on those counters."""
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    ids, types, mask = random_batch(config)
    for m in (reference, model):
        m.eval()
        with torch.no_grad():
            m(ids, attention_mask=mask)
        m.train()
        m(ids, attention_mask=mask).last_hidden_state[mask.bool()].square().mean().backward()
        torch.optim.AdamW(m.parameters(), lr=1e-2, fused=True).step()
        m.eval()
    with torch.no_grad():
        assert_close_on(mask, reference(ids, attention_mask=mask).last_hidden_state,
                        model(ids, attention_mask=mask).last_hidden_state, atol=1e-4)


def test_the_torch_backend_pads_once_per_layout():
    cu = torch.tensor([0, 3, 7], dtype=torch.int32)
    first = torch_ops._padded_layout(cu, 4, 7)
    assert torch_ops._padded_layout(cu, 4, 7) is first
    assert torch_ops._padded_layout(cu.clone(), 4, 7) is not first
    cu[1] = 2  # changed in place: its version moves on
    assert torch_ops._padded_layout(cu, 4, 7) is not first


def test_inference_mode_runs_with_the_caches():
    config = tiny_config()
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    ids, types, mask = random_batch(config)
    with torch.inference_mode():
        want = reference(ids, attention_mask=mask).last_hidden_state
        for _ in range(2):
            assert_close_on(mask, want, model(ids, attention_mask=mask).last_hidden_state)


# ----------------------------------------------------------------------------- launches per layer
# benchmarks.host counts them for `fastbert bench`; here on a smaller model (the interpreter runs it faster).
SMALL_COUNT = {"config": dict(vocab_size=99, hidden_size=32, num_attention_heads=2, intermediate_size=48,
                              max_position_embeddings=64), "batch": 2, "seqlen": 7}


@functools.lru_cache(maxsize=None)
def _launches_in_process() -> dict:
    return host.launches_per_layer(torch.device("cpu"), SMALL_COUNT)


def _add_one_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def add_one(X, Y, N: tl.constexpr):
        offsets = tl.arange(0, N)
        tl.store(Y + offsets, tl.load(X + offsets) + 1.0)
    return add_one


def test_launches_count_triton_kernels_and_the_aten_calls_between_them():
    _add_one = _add_one_kernel()
    x = torch.arange(8.0)
    y = torch.empty_like(x)
    with host.Launches() as launches:
        _add_one[(1,)](x, y, N=8)  # the interpreter's copies in and out of the kernel are not counted
        z = (y.view(2, 4) * 2).t()  # one ATen call; the view and the transpose are shape-only
        _add_one[(1,)](y, y, N=8)
    assert (launches.triton, launches.aten, launches.count) == (2, 1, 3)
    assert torch.equal(z.t().reshape(-1), (x + 1) * 2) and torch.equal(y, x + 2)
    with host.Launches() as again:  # the counting is undone on leaving: a new block starts from zero
        _add_one[(1,)](x, y, N=8)
    assert (again.triton, again.aten, launches.triton) == (1, 0, 2)


# Per layer on the Triton backend, measured 2026-12-02 (issue 15's goals: 6 forward, 14 backward).
# Forward 9 -> 7: q, k, v projected by one kernel reading the three weights (no concatenations). The 7:
# qkv, attention, the attention output's GEMM, LayerNorm, the FFN kernel and its second GEMM, LayerNorm.
# Backward 33 -> 14: attention in one kernel up to 128 tokens, LayerNorm's gradients without cast copies or
# a zero fill, no zero gradients materialized for the statistics outputs, qkv's dX one kernel reading the
# three weights and summing the biases' gradient in the same launch, and in training the layers as one
# autograd node whose input-gradient GEMMs add the residual's gradient themselves. The 14: 6 GEMMs (dW of
# qkv, dX and dW of the attention output, dX and dW of the FFN's first linear, dW2), qkv's dX kernel, the
# FFN's bias sum, attention, 2 x (LayerNorm + its parameter sums), the FFN kernel.
LAUNCH_BUDGET = {"inference": 7, "training forward": 7, "backward": 14}


def test_launches_per_layer_stay_within_budget():
    """A layer's launches are the difference between a 3-layer and a 2-layer model's (with dropout)."""
    per_layer = _launches_in_process()
    assert set(per_layer) == set(LAUNCH_BUDGET) and all(count > 0 for count in per_layer.values())
    over = {case: count for case, count in per_layer.items() if count > LAUNCH_BUDGET[case]}
    assert not over, f"launches per layer {per_layer} over the budget {LAUNCH_BUDGET}"


def test_outside_the_interpreter_launches_are_counted_in_a_child_process(monkeypatch, tmp_path):
    """`fastbert bench` on a CPU without TRITON_INTERPRET: the count runs in a child process under the
    interpreter (triton reads the variable when it loads) and gives the in-process count, from any
    working directory (the child imports this module on the parent's import path)."""
    in_process = _launches_in_process()
    monkeypatch.setattr(host, "interpreting", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.chdir(tmp_path)
    assert host.launches_per_layer(torch.device("cpu"), SMALL_COUNT) == in_process
    with pytest.raises(RuntimeError, match="counting launches under Triton's interpreter"):
        host.launches_per_layer(torch.device("cpu"), {**SMALL_COUNT, "config": {"hidden_size": 33}})


def test_without_triton_the_host_section_leaves_the_launch_count_out(monkeypatch):
    monkeypatch.setattr(host, "triton_available", lambda: False)
    section = host.host_section(torch.device("cpu"), repeats=1)
    assert "launches_per_layer" not in section and section["training_step"]["fastbert"]["us_per_layer"] > 0


# ============================================================================= the encoder stack in one call
def _stack_calls(monkeypatch) -> list:
    """Records each call of ``ops.encoder_inference`` (the model's one-call path for its layers)."""
    calls, real = [], ops.encoder_inference

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)
    monkeypatch.setattr(ops, "encoder_inference", counting)
    return calls


def _pair_without_pooler(config):
    # Under left padding the pooler would read a padded position, and the call would take the exact path.
    return pair(functools.partial(transformers.BertModel, add_pooling_layer=False),
                functools.partial(fastbert.BertModel, add_pooling_layer=False), config)


def _masks(config, batch=4, seqlen=13):
    ids, types, right = random_batch(config, batch, seqlen)
    _, _, left = random_batch(config, batch, seqlen, padding="left")
    interior = right.clone()
    interior[1, 2] = interior[-1, 0] = 0
    empty_row = right.clone()
    empty_row[2] = 0
    return ids, types, {"right": right, "left": left, "interior": interior, "none": torch.ones_like(right),
                        "an empty row": empty_row}


@pytest.mark.parametrize("cpu_layer", ["fused encoder layer", "separate GEMMs"])
@pytest.mark.parametrize("padding", ["right", "left", "interior", "none", "an empty row"])
def test_inference_runs_the_layers_in_one_call_with_transformers_numbers(padding, cpu_layer, monkeypatch):
    """Both ways a CPU runs a layer of the one call (chosen by size, here forced) give transformers' numbers."""
    separate = cpu_layer == "separate GEMMs"
    monkeypatch.setattr(torch_ops, "_CPU_SEPARATE_GEMMS_FROM", 0 if separate else 1 << 62)
    layers, real_layer = [], torch_ops._cpu_grid_layer
    monkeypatch.setattr(torch_ops, "_cpu_grid_layer", lambda *a: layers.append(1) or real_layer(*a))
    config = tiny_config(num_hidden_layers=3)
    reference, model = _pair_without_pooler(config)
    reference.eval(), model.eval()
    ids, types, masks = _masks(config)
    mask = masks[padding]
    calls = _stack_calls(monkeypatch)
    with torch.no_grad():
        got = model(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
        want = reference(ids, token_type_ids=types, attention_mask=mask).last_hidden_state
    assert calls == [(int(mask.sum()), config.hidden_size)]
    assert len(layers) == (config.num_hidden_layers if separate else 0)
    assert_close_on(mask, want, got)
    assert torch.count_nonzero(got[~mask.bool()]) == 0


def _hook_on_self_attention(model, seen):
    model.encoder.layer[1].attention.self.register_forward_hook(lambda *args: seen.append(1))


class _Linear(torch.nn.Linear):
    """A linear of another class (as PEFT or a quantiser swaps in): its forward must be called."""

    def forward(self, x):
        self.called = True
        return super().forward(x)


def _swap_in_linear(model, seen):
    old = model.encoder.layer[0].attention.self.value
    new = _Linear(old.in_features, old.out_features)
    new.load_state_dict(old.state_dict())
    model.encoder.layer[0].attention.self.value = new
    seen.append(new)


# Each case: how the call is made different, and whether the module path's extras were seen.
MODULE_PATH_CASES = {
    "autograd": lambda model, seen: None,
    "dropout": lambda model, seen: model.encoder.layer[1].output.dropout.train(),
    "a hook": _hook_on_self_attention,
    "a replaced linear": _swap_in_linear,
    "another eps": lambda model, seen: setattr(model.encoder.layer[1].output.LayerNorm, "eps", 1e-6),
    "output_attentions": lambda model, seen: None,
    "output_hidden_states": lambda model, seen: None,
}


@pytest.mark.parametrize("case", list(MODULE_PATH_CASES))
def test_the_layers_run_module_by_module_where_a_call_must_be_seen(case, monkeypatch):
    config = tiny_config(num_hidden_layers=2, hidden_dropout_prob=0.1)
    reference, model = pair(transformers.BertModel, fastbert.BertModel, config)
    reference.eval(), model.eval()
    seen = []
    MODULE_PATH_CASES[case](model, seen)
    ids, types, masks = _masks(config)
    calls = _stack_calls(monkeypatch)
    kwargs = {case: True} if case.startswith("output_") else {}
    with torch.set_grad_enabled(case == "autograd"):
        got = model(ids, token_type_ids=types, attention_mask=masks["right"], **kwargs).last_hidden_state
        want = reference(ids, token_type_ids=types, attention_mask=masks["right"]).last_hidden_state
    assert calls == []
    if case == "a hook":
        assert seen == [1]
    if case == "a replaced linear":
        assert seen[0].called
    if case not in ("dropout", "another eps"):
        assert_close_on(masks["right"], want, got)


@pytest.mark.parametrize("backend,dtype", [("torch", torch.float64), ("triton", torch.float32)])
def test_the_one_call_path_makes_the_per_op_path_calls(backend, dtype, monkeypatch):
    """Where the stack runs layer by layer from the op implementations (the Triton backend, and float64 on
    PyTorch's) its result is the per-op module path's, bit for bit."""
    monkeypatch.setenv("FASTBERT_BACKEND", backend)
    config = tiny_config(num_hidden_layers=2)
    _, model = _pair_without_pooler(config)
    model.to(dtype).eval()
    ids, types, masks = _masks(config, batch=3, seqlen=9)
    calls = _stack_calls(monkeypatch)
    with torch.no_grad():
        one_call = model(ids, token_type_ids=types, attention_mask=masks["interior"]).last_hidden_state
        model.encoder.layer[0].register_forward_pre_hook(lambda *args: None)  # forces the module path
        per_op = model(ids, token_type_ids=types, attention_mask=masks["interior"]).last_hidden_state
    assert len(calls) == 1
    assert torch.equal(one_call, per_op)


def test_encoder_inference_refuses_bad_arguments():
    hidden, cu = torch.zeros(5, 12), torch.tensor([0, 5], dtype=torch.int32)
    weights = [torch.zeros(1)] * ops.ENCODER_LAYER_TENSORS
    with pytest.raises(ValueError, match="16 tensors a layer, got 15"):
        ops.encoder_inference(hidden, cu, 5, weights[:-1], 3, 1e-12)
    with pytest.raises(ValueError, match="multiple of heads=5"):
        ops.encoder_inference(hidden, cu, 5, weights, 5, 1e-12)
