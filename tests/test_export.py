"""Export and deployment: torch.export and both torch.onnx exporters take dynamic batch and sequence
lengths, and the exported graphs give transformers' numbers on shapes other than the traced one."""

import warnings

import pytest
import torch
import transformers

import fastbert

NAMES = ("input_ids", "attention_mask", "token_type_ids")
TRACE_SHAPE = (2, 8)
# (batch, seqlen) pairs other than the traced one, batch 1 included.
RUN_SHAPES = [(3, 11), (1, 5), (5, 6)]


def export_config(**overrides) -> transformers.BertConfig:
    """Tiny and fast; dropout left on so that eval mode is what removes it."""
    settings = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=37, max_position_embeddings=64, type_vocab_size=2, num_labels=3)
    settings.update(overrides)
    return transformers.BertConfig(**settings)


def padded_batch(batch: int, seqlen: int, seed: int = 0) -> dict:
    """int64 ``input_ids``, ``attention_mask``, ``token_type_ids`` ``(batch, seqlen)``: row 0 full, then
    right padding and rows with holes in the middle (interior padding)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, 99, (batch, seqlen), generator=gen)
    types = torch.randint(0, 2, (batch, seqlen), generator=gen)
    mask = torch.ones(batch, seqlen, dtype=torch.long)
    for row in range(1, batch):
        if row % 2:
            mask[row, seqlen - row - 1:] = 0
        else:
            mask[row, 1:seqlen - 1:2] = 0
    if batch == 1 and seqlen > 2:
        mask[0, seqlen // 2] = 0
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def dynamic_shapes() -> dict:
    batch = torch.export.Dim("batch", max=64)
    seqlen = torch.export.Dim("seqlen", max=64)
    return {name: {0: batch, 1: seqlen} for name in NAMES}


def pair(fast_cls, hf_cls, config):
    """A fastbert model in eval mode and transformers' eager model with the same weights."""
    torch.manual_seed(0)
    model = fast_cls(config).eval()
    reference = hf_cls._from_config(config, attn_implementation="eager").eval()
    reference.load_state_dict(model.state_dict())
    return model, reference


@pytest.fixture(scope="module")
def bert():
    return pair(fastbert.BertModel, transformers.BertModel, export_config())


def assert_matches(hidden: torch.Tensor, pooled: torch.Tensor, reference, inputs: dict) -> None:
    """``hidden (batch, seqlen, h)`` equals transformers' on the real tokens, ``pooled`` everywhere."""
    with torch.no_grad():
        want = reference(**inputs)
    real = inputs["attention_mask"].bool()
    assert hidden.shape == want.last_hidden_state.shape
    assert (hidden[real] - want.last_hidden_state[real]).abs().max().item() <= 1e-4
    assert (pooled - want.pooler_output).abs().max().item() <= 1e-4


def test_torch_export_dynamic_shapes(bert, tmp_path):
    model, reference = bert
    program = torch.export.export(model, (), padded_batch(*TRACE_SHAPE), dynamic_shapes=dynamic_shapes())
    # Standard ATen ops only: the saved program loads and runs without fastbert's custom ops.
    assert not [n.target for n in program.graph.nodes if "fastbert" in str(n.target)]
    torch.export.save(program, tmp_path / "bert.pt2")
    loaded = torch.export.load(tmp_path / "bert.pt2").module()
    for shape in RUN_SHAPES:
        inputs = padded_batch(*shape, seed=sum(shape))
        out = loaded(**inputs)
        assert_matches(out.last_hidden_state, out.pooler_output, reference, inputs)
    with pytest.raises(ValueError, match="input_ids must be 2-D"):
        torch.export.export(model, (), {**inputs, "input_ids": inputs["input_ids"][None]})
    # Exporting leaves eager mode packed: padded positions are zeros there.
    inputs = padded_batch(3, 11)
    with torch.no_grad():
        eager = model(**inputs).last_hidden_state
    assert (eager[inputs["attention_mask"] == 0] == 0).all()


def test_torch_export_task_head():
    model, reference = pair(fastbert.BertForSequenceClassification, transformers.BertForSequenceClassification,
                            export_config())
    program = torch.export.export(model, (), padded_batch(*TRACE_SHAPE), dynamic_shapes=dynamic_shapes())
    exported = program.module()
    for shape in RUN_SHAPES:
        inputs = padded_batch(*shape, seed=sum(shape))
        with torch.no_grad():
            want = reference(**inputs).logits
        assert (exported(**inputs).logits - want).abs().max().item() <= 1e-4


def run_onnx(path, reference) -> None:
    """Runs the ONNX file in onnxruntime on every shape of ``RUN_SHAPES``, against transformers."""
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert tuple(i.name for i in session.get_inputs()) == NAMES
    for shape in RUN_SHAPES:
        inputs = padded_batch(*shape, seed=sum(shape))
        hidden, pooled = session.run(None, {k: v.numpy() for k, v in inputs.items()})[:2]
        assert_matches(torch.from_numpy(hidden), torch.from_numpy(pooled), reference, inputs)


def test_onnx_dynamo_export_dynamic_shapes(bert, tmp_path):
    pytest.importorskip("onnxscript")
    model, reference = bert
    path = tmp_path / "bert.onnx"
    torch.onnx.export(model, (), path, kwargs=padded_batch(*TRACE_SHAPE), dynamic_shapes=dynamic_shapes(),
                      input_names=list(NAMES), output_names=["last_hidden_state", "pooler_output"],
                      dynamo=True)
    run_onnx(path, reference)


def test_onnx_torchscript_export_dynamic_axes(bert, tmp_path):
    pytest.importorskip("onnx")
    model, reference = bert
    path = tmp_path / "bert.onnx"
    inputs = padded_batch(*TRACE_SHAPE)
    axes = {0: "batch", 1: "seqlen"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated and says so
        torch.onnx.export(model, tuple(inputs[name] for name in NAMES), path, input_names=list(NAMES),
                          output_names=["last_hidden_state", "pooler_output"],
                          dynamic_axes={**dict.fromkeys(NAMES, axes), "last_hidden_state": axes,
                                        "pooler_output": {0: "batch"}},
                          dynamo=False)
    run_onnx(path, reference)


def test_torch_export_training_mode_draws_dropout_in_the_graph():
    """A train-mode export keeps dropout (fresh masks each call) and backpropagates on new shapes."""
    torch.manual_seed(0)
    model = fastbert.BertModel(export_config()).train()
    program = torch.export.export(model, (), padded_batch(*TRACE_SHAPE), dynamic_shapes=dynamic_shapes())
    exported = program.module()
    inputs = padded_batch(3, 11)
    first, second = (exported(**inputs) for _ in range(2))
    hidden = first.last_hidden_state
    assert torch.isfinite(hidden).all() and (hidden - second.last_hidden_state).abs().max() > 1e-3
    (hidden.sum() + first.pooler_output.sum()).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in exported.parameters())
