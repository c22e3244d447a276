"""Routing of each fused op by (op, compute capability, dtype): fastbert/routing.py and its use in ops."""

import pytest
import torch

from fastbert import cli, ops, routing, torch_ops
from fastbert.routing import DOT_OPS, OPS, route

NORM_OPS = [op for op in OPS if op not in DOT_OPS]
CAPABILITIES = [(7, 5), (8, 0), (8, 6), (8, 9), (9, 0), (10, 0), (12, 0)]


@pytest.mark.parametrize("capability", CAPABILITIES)
def test_auto_sends_dot_ops_to_pytorch_below_sm80(capability):
    for op in DOT_OPS:
        for dtype in (torch.float16, torch.float32):
            r = route(op, capability, dtype)
            assert r.backend == ("triton" if capability >= (8, 0) else "torch")
            assert r.reason is None or "tensor cores" in r.reason
    for op in NORM_OPS:  # normalization and elementwise kernels need no tensor cores
        assert route(op, capability, torch.float16).backend == "triton"


@pytest.mark.parametrize("capability", [(7, 5)])
def test_bf16_below_sm80_runs_pytorch_or_is_a_clear_error(capability):
    for op in OPS:
        assert route(op, capability, torch.bfloat16) == routing.Route(
            "torch", f"bfloat16 in Triton needs sm_80, this is sm_{capability[0]}{capability[1]}")
        with pytest.raises(ValueError, match=f"{op}: FASTBERT_BACKEND=triton cannot run bfloat16 on sm_7"):
            route(op, capability, torch.bfloat16, "triton")
        with pytest.raises(ValueError, match="nor in PyTorch"):
            route(op, capability, torch.bfloat16, torch_runs_bf16=False)
    assert route("ffn", (8, 0), torch.bfloat16, torch_runs_bf16=False).backend == "triton"


def test_forced_triton_keeps_dot_ops_on_pytorch_below_sm80_and_everything_before_volta():
    assert route("attention", (7, 5), torch.float16, "triton").backend == "torch"
    assert route("residual_layernorm", (7, 5), torch.float16, "triton").backend == "triton"
    assert route("residual_layernorm", (7, 0), torch.float16).backend == "torch"  # V100: not proven
    with pytest.raises(ValueError, match="compute capability 7.5 or newer, this is sm_70"):
        route("residual_layernorm", (7, 0), torch.float16, "triton")


def test_dtypes_without_kernels_cpus_and_the_torch_backend():
    assert route("ffn", (9, 0), torch.float64) == routing.Route("torch", "dtype torch.float64")
    assert route("ffn", None, torch.float16).backend == "torch"
    assert route("ffn", None, torch.float16, "triton").backend == "triton"  # the interpreter
    assert route("ffn", (9, 0), torch.float16, "torch").backend == "torch"
    with pytest.raises(ValueError, match="op must be one of"):
        route("softmax", (9, 0), torch.float16)


def test_table_shows_every_op_and_dtype():
    table = routing.routing_table((7, 5))
    lines = table.splitlines()
    assert lines[0].split() == ["op", "float16", "bfloat16", "float32"] and len(lines) == 2 + len(OPS)
    assert "attention           torch (no tensor cores" in table
    assert all(line.split()[1] == "triton" for line in lines[2:] if line.split()[0] in NORM_OPS)
    assert "error (" in routing.routing_table((7, 5), "triton")


def test_shared_memory_table():
    assert routing.smem_limit(75) == 65536 and routing.smem_limit(80) == 166912
    assert routing.smem_limit(86) == routing.smem_limit(89) == routing.smem_limit(120) == 101376
    assert routing.smem_limit(90) == routing.smem_limit(100) == 232448
    assert routing.smem_limit(91) == routing.smem_limit(90)  # an unknown minor takes the one below


def test_ops_route_each_call_by_the_inputs_device_and_dtype(monkeypatch):
    """On a (pretended) T4 the feed-forward GEMMs take PyTorch and LayerNorm the Triton kernel."""
    monkeypatch.setattr(ops, "_device_facts", lambda index: ((7, 5), True))
    t4 = torch.device("cuda", 0)
    assert ops._impl("ffn", "fwd", t4, torch.float16) is torch_ops.ffn_fwd
    assert ops._impl("attention", "bwd", t4, torch.float16) is torch_ops.attention_bwd
    assert ops._impl("residual_layernorm", "fwd", t4, torch.bfloat16) is torch_ops.residual_layernorm_fwd
    ops._load_kernels()
    assert ops._impl("residual_layernorm", "fwd", t4, torch.float16) is ops._TRITON_IMPLS["residual_layernorm"]["fwd"]
    monkeypatch.setattr(ops, "_device_facts", lambda index: ((9, 0), True))
    assert ops._impl("ffn", "fwd", t4, torch.float16) is ops._TRITON_IMPLS["ffn"]["fwd"]


def test_info_prints_the_routing_table(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert "routes of the fused ops on cpu" in out
    for op in OPS:
        assert op in out
