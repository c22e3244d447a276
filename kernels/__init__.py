"""Triton kernels of fastbert, installed as ``fastbert.kernels``.

One file per fused op: ``_<op>_fwd``/``_<op>_bwd`` kernels, a launcher, the autograd Function and a
small PyTorch reference of the same math. Importing this package registers each op's launchers with
:func:`fastbert.ops.register_triton` and its compile variants with
:func:`fastbert.check_kernels.register_aot`; ops without a kernel yet run their PyTorch
implementation (:mod:`fastbert.torch_ops`).
"""

# From a source checkout this folder is also importable as a top-level ``kernels``, a name transformers
# probes for the hub's kernels package (it imports it when no version metadata is found): under that
# name it stays an empty package, so triton is not loaded and nothing registers twice.
if __name__ == "fastbert.kernels":
    from fastbert.check_kernels import register_aot
    from fastbert import torch_ops
    from fastbert.ops import register_triton

    from . import attention, embeddings, ffn, layernorm, qkv

    register_triton("attention", fwd=attention._qkv_forward, bwd=attention._qkv_backward)
    register_aot("attention", attention.aot_variants)
    register_triton("residual_layernorm", fwd=layernorm._op_forward, bwd=layernorm._op_backward)
    register_aot("residual_layernorm", layernorm.aot_variants)
    register_triton("embeddings", fwd=embeddings._op_forward, bwd=embeddings._op_backward)
    register_aot("embeddings", embeddings.aot_variants)
    register_triton("ffn", fwd=ffn._op_forward, inference_fwd=ffn._op_inference_forward, bwd=ffn._op_backward)
    # linear_gelu's backward is an elementwise product and two plain GEMMs: PyTorch's is the right one.
    register_triton("linear_gelu", fwd=ffn._linear_gelu_forward, inference_fwd=ffn._linear_gelu_inference_forward,
                    bwd=torch_ops.linear_gelu_bwd)
    register_aot("ffn", ffn.aot_variants)
    register_triton("qkv", fwd=qkv._op_forward, bwd=qkv._op_backward)
    register_aot("qkv", qkv.aot_variants)
