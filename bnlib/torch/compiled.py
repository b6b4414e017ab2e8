"""An opt-in compiled batch norm: the closed forms of bnlib, fused by ``torch.compile``.

``batch_norm_compiled`` has the signature and semantics of :func:`bnlib.torch.batch_norm`.
In training it runs an ``autograd.Function`` whose forward and backward are the formulas of
:mod:`._formulas` (plain tensor operations) compiled with ``torch.compile`` (TorchInductor
generates one C++/OpenMP or Triton kernel per pass, so no intermediate touches memory). Eval mode and every argument check are shared with
:func:`bnlib.torch.batch_norm`.

Opt-in because compiling costs seconds: nothing is compiled when bnlib is imported; the
first call for each input shape, dtype and device compiles (about 10-30 s on a CPU, which
needs a C++ compiler), later calls reuse the compiled code. The test suite and the notebooks
never call it; ``make test-compiled`` runs its parity tests and ``python -m bnlib.bench
--compile`` times it.

Difference from :func:`bnlib.torch.batch_norm`: double backward is not supported (the
backward is a compiled kernel, not a graph).
"""

import functools

import torch
from torch.autograd.function import once_differentiable

from ._formulas import formula_backward, formula_forward, update_running_stats
from ._reductions import stats_dtype
from .functional import batch_norm, check_arguments

__all__ = ["batch_norm_compiled"]


@functools.cache
def _compiled(fn):
    """``torch.compile(fn)``, made on first use only (never at import)."""
    return torch.compile(fn, dynamic=False, fullgraph=True)


class _CompiledTraining(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        y, mean, var, invstd = _compiled(formula_forward)(x, weight, bias, eps)
        ctx.save_for_backward(x, weight, mean, invstd)
        ctx.mark_non_differentiable(mean, var)
        return y.to(x.dtype), mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dy, _dmean, _dvar):
        x, weight, mean, invstd = ctx.saved_tensors
        dx, dgamma, dbeta = _compiled(formula_backward)(x, dy.contiguous(), weight, mean, invstd)
        return dx.to(x.dtype), dgamma.to(weight.dtype), dbeta.to(weight.dtype), None


def batch_norm_compiled(input, running_mean, running_var, weight=None, bias=None,
                        training=False, momentum=0.1, eps=1e-5):
    """:func:`bnlib.torch.batch_norm`, with the training pass compiled by ``torch.compile``.

    Same arguments, results (to rounding), errors and running-statistics update. The first
    call for a new shape, dtype or device compiles (seconds). Missing weight or bias are
    passed to the compiled code as ones or zeros (their gradients are then discarded).
    """
    check_arguments(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if not training or input.numel() == 0:
        return batch_norm(input, running_mean, running_var, weight, bias, training, momentum,
                          eps)
    c = input.shape[1]
    param_dtype = stats_dtype(input.dtype) if weight is None else weight.dtype
    if weight is None:
        weight = torch.ones(c, dtype=param_dtype, device=input.device)
    if bias is None:
        bias = torch.zeros(c, dtype=param_dtype, device=input.device)
    y, mean, var = _CompiledTraining.apply(input, weight, bias, eps)
    update_running_stats(running_mean, running_var, mean, var, input.numel() // c, momentum)
    return y
