"""Triton kernels of fastbert, installed as ``fastbert.kernels``.

One file per fused op: ``_<op>_fwd``/``_<op>_bwd`` kernels, a launcher, the autograd Function and a
small PyTorch reference of the same math. Each module registers its launchers with
:func:`fastbert.ops.register_triton` when imported here. No kernels have landed yet: every op runs its
PyTorch implementation (:mod:`fastbert.torch_ops`).
"""
