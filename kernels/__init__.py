"""Triton kernels of fastbert, installed as ``fastbert.kernels``.

One file per fused op: ``_<op>_fwd``/``_<op>_bwd`` kernels, a launcher, the autograd Function and a
small PyTorch reference of the same math. Importing this package registers each op's launchers with
:func:`fastbert.ops.register_triton`; ops without a kernel yet run their PyTorch implementation
(:mod:`fastbert.torch_ops`).
"""

from fastbert.ops import register_triton

from . import attention

register_triton("attention", fwd=attention._qkv_forward, bwd=attention._qkv_backward)
