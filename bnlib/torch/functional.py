"""Batch normalization for torch tensors: ``batch_norm`` with the signature of ``F.batch_norm``.

The formulas (statistics, normalization, closed-form backward, running update) live once in
:mod:`._formulas`; this module checks the arguments and chooses how to run them.

Training mode runs an ``autograd.Function`` (:class:`_BatchNormFunction`) when autograd
records operations, and the same forward directly when nothing needs a gradient. In plain
eager execution the forward and backward are, on a CPU for float32/float64 tensors that are
contiguous or channels-last, the compiled loops of :mod:`._fused_kernels` (two passes over
memory each way), and otherwise the memory-lean kernels of torch operations of
:mod:`._kernels`; both compute the sums, then call the same coefficient functions. Under
``torch.compile``/``torch.export``, ``torch.jit.trace``, ``torch.func`` transforms and
forward-mode AD, and whenever a graph of the backward is requested (double backward), the
same formulas run as plain out-of-place operations, which those tools can trace, batch and
differentiate. Eval mode is a fixed per-channel affine map (one pass of the loops where
autograd records nothing).

Conventions (identical to ``torch.nn.functional.batch_norm``):

* input ``(N, C, *)``, statistics per channel over the m = N * prod(spatial dims)
  other values;
* training normalizes with the **biased** batch variance and stores the **unbiased** one
  (times m / (m - 1)) in ``running_var``;
* float16 / bfloat16 input: statistics in float32, output in the input dtype; parameters and
  running statistics may then be float32 (or the input's dtype).
* The output is contiguous, or channels-last where the input is (torch's
  ``suggest_memory_format``).
* NaN and inf are data, not errors: in training they make their channel's output NaN and
  leave the other channels alone; an inf gives running_mean inf and running_var NaN, as in
  torch. In eval only the non-finite elements themselves are affected.
* Bad arguments raise an error naming the argument and its value before anything is updated;
  the book's edge-case table (``bnlib.book.edge_cases``) lists every case with its outcome.
"""

import contextlib

import torch

from .. import _checks
from . import _fused_kernels, _kernels
from ._formulas import (batch_statistics, formula_backward, formula_forward,
                        normalize_coefficients, update_running_stats)
from ._reductions import HALF, as_dtype, per_channel, stats_dtype

__all__ = ["batch_norm", "check_arguments", "fused_loops_available", "use_fused_loops"]

_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", lambda: False)


@contextlib.contextmanager
def use_fused_loops(enabled):
    """Within the ``with`` block, run (``True``) or skip (``False``) the compiled CPU loops.

    Skipped, bnlib.torch runs the kernels of torch operations instead, as on an install
    without a C++ compiler: to compare the two routes, or to rule the loops out. A backward
    takes its forward's route. The setting holds in the current thread (a
    ``contextvars`` context: other threads and asyncio tasks keep theirs) and is restored on
    exit. ``use_fused_loops(True)`` raises RuntimeError where the loops were not built.
    """
    if enabled and not _fused_kernels.available():
        raise RuntimeError("bnlib.torch's compiled loops were not built (no C++ compiler "
                           "when bnlib was installed): use_fused_loops(True) cannot apply")
    token = _fused_kernels._ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _fused_kernels._ENABLED.reset(token)


def fused_loops_available():
    """True when bnlib was installed with its compiled CPU loops (``bnlib/torch/_fused.cpp``).

    They are built by ``pip install`` where a C++ compiler with GCC's vector extensions is
    (GCC or Clang); elsewhere bnlib installs without them, and batch norm runs the same
    formulas in torch operations: the same results to rounding, slower.
    """
    return _fused_kernels.available()


def _forward_ad_active():
    """True inside ``torch.autograd.forward_ad.dual_level()``, where tensors may carry
    tangents (forward-mode AD), which ``out=`` operations cannot propagate."""
    return getattr(torch.autograd.forward_ad, "_current_level", -1) >= 0


def _eager(x):
    """True in plain eager execution on a plain tensor, where the fast kernels (in-place
    updates, ``out=`` buffers, a value read back to the host) may run. False under
    ``torch.compile``/``torch.export``, ``torch.jit.trace``, ``torch.func`` transforms and
    forward-mode AD."""
    return (type(x) in (torch.Tensor, torch.nn.Parameter) and not torch.compiler.is_compiling()
            and not torch.jit.is_tracing() and not _functorch_active()
            and not _forward_ad_active())


_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", lambda: 0)


def _loops_view(x):
    """The compiled loops' view of x (:func:`._fused_kernels.layout`) in plain eager
    execution, None where they do not run: also under a ``TorchDispatchMode`` (``make_fx``,
    ``FlopCounterMode``), which sees torch operations but not the loops."""
    return _fused_kernels.layout(x) if _eager(x) and _dispatch_modes() == 0 else None


def _forward(x, weight, bias, eps, view=None):
    """The training forward: the compiled loops when given their ``view`` of x, else the
    kernels of torch operations in plain eager execution and the formulas elsewhere."""
    if view is not None:
        return _fused_kernels.forward(x, weight, bias, eps, view)
    run = _kernels.forward if _eager(x) else formula_forward
    y, mean, var, invstd = run(x, weight, bias, eps)
    return as_dtype(y, x.dtype), mean, var, invstd


def _save(ctx, inputs, output):
    """What the backward needs: x, weight and two per-channel vectors."""
    x, weight, bias, eps = inputs
    _, mean, var, invstd = output
    ctx.save_for_backward(x, weight, mean, invstd)
    ctx.eps = eps
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.mark_non_differentiable(mean, var, invstd)
    # Their gradients reach the backward as None instead of three tensors of zeros, which
    # autograd would otherwise allocate on every call.
    ctx.set_materialize_grads(False)


def _backward(ctx, dy, _dmean, _dvar, _dinvstd):
    """dx, dweight, dbias, None (for eps) by the closed form."""
    if dy is None:  # no gradient reached y (grads are not materialized): all are zero
        return None, None, None, None
    x, weight, mean, invstd = ctx.saved_tensors
    if torch.is_grad_enabled():
        # A graph of the backward is requested (double backward, torch.func): rebuild mean
        # and invstd from x with tracked operations, so that the second derivative sees how
        # they depend on x.
        mean, var, _ = batch_statistics(x)
        invstd = torch.rsqrt(var + ctx.eps)
        dx, dgamma, dbeta = formula_backward(x, dy, weight, mean, invstd)
    elif not _eager(x):
        dx, dgamma, dbeta = formula_backward(x, dy, weight, mean, invstd)
    else:  # the forward's route, where what it saved still fits it
        view = getattr(ctx, "view", None)
        grads = None if view is None else _fused_kernels.backward(x, dy, weight, mean, invstd,
                                                                  view)
        dx, dgamma, dbeta = grads or _kernels.backward(x, dy, weight, mean, invstd)
    dweight = as_dtype(dgamma, weight.dtype) if ctx.needs_input_grad[1] else None
    dbias = as_dtype(dbeta, ctx.bias_dtype) if ctx.needs_input_grad[2] else None
    return as_dtype(dx, x.dtype), dweight, dbias, None


class _BatchNormFunction(torch.autograd.Function):
    """y = (x - mean) * invstd * weight + bias with the batch's own mean and invstd.

    Returns ``y, mean, var, invstd`` (the last three not differentiable). Saved for backward:
    x, weight and two per-channel vectors.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        ctx.view = _loops_view(x)  # the backward takes the forward's route
        output = _forward(x, weight, bias, eps, ctx.view)
        _save(ctx, (x, weight, bias, eps), output)
        return output

    backward = staticmethod(_backward)


class _BatchNormFunctionForTransforms(torch.autograd.Function):
    """The same function in the form ``torch.func`` transforms need (a separate
    ``setup_context``; ``generate_vmap_rule``: under ``vmap`` the formulas are batched as
    they are). Not used in plain eager execution: for this form ``apply`` binds the
    arguments with ``inspect.signature`` on every call, which costs as much as a small
    batch norm."""

    generate_vmap_rule = True
    setup_context = staticmethod(_save)

    @staticmethod
    def forward(x, weight, bias, eps):  # (its arguments are the inputs setup_context gets)
        return _forward(x, weight, bias, eps)

    backward = staticmethod(_backward)


def _check_tensor(name, t, x):
    """A per-channel tensor: shape (C,), floating, x's device, x's dtype (float32 allowed for half x)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor or None, got {type(t).__name__}")
    _checks.check_parameter(name, t.shape, (x.shape[1],), t.is_floating_point(), t.dtype,
                            (x.dtype, torch.float32) if x.dtype in HALF else (x.dtype,),
                            t.device, x.device)


def check_arguments(x, running_mean, running_var, weight, bias, training, momentum, eps,
                    check_count=True):
    """Raise the documented error for any bad argument of :func:`bnlib.torch.batch_norm`; change nothing.

    ``check_count=False`` lets one value per channel through (a shard of synchronized batch
    norm, whose statistics are over all processes).
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"input must be a torch.Tensor, got {type(x).__name__}")
    _checks.check_float_dtype("input", x.is_floating_point(), x.dtype)
    _checks.check_input_shape(tuple(x.shape), training and check_count)
    _checks.check_eps(eps)
    info = torch.finfo(stats_dtype(x.dtype))
    _checks.check_eps_fits(eps, info.smallest_normal * info.eps, str(info.dtype))
    _checks.check_momentum(momentum, allow_none=False)
    _checks.check_running_pair(running_mean, running_var)
    if not training and running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is not None:
            _check_tensor(name, t, x)
    for name, t in (("running_mean", running_mean), ("running_var", running_var)):
        if t is not None:
            _checks.check_no_grad(name, t.requires_grad)


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization with the signature and semantics of ``torch.nn.functional.batch_norm``.

    Training (``training=True``): normalize with the batch mean and biased variance; when
    running statistics are given, update them in place with
    ``running = (1 - momentum) * running + momentum * stat`` (unbiased variance stored).
    Eval (``training=False``): ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias``.

    Args:
        input: ``(N, C, *)`` floating-point tensor, any device.
        running_mean, running_var: (C,) tensors updated in place in training, or both None.
        weight, bias: (C,) tensors (gamma and beta) or None.
        training: use batch statistics.
        momentum: weight of the new batch in [0, 1] (for a cumulative average use the module
            with ``momentum=None``).
        eps: added to the variance, > 0.

    Returns:
        A tensor of the input's shape, dtype and device.

    Raises:
        TypeError: non-tensor or non-floating input; parameters of another dtype.
        ValueError: rank < 2; one value per channel in training; a (C,) tensor of another
            shape or device; only one of running_mean / running_var; running statistics that
            require grad; no running statistics in eval; eps <= 0 or rounding to 0 in the
            statistics' dtype; momentum outside [0, 1]. Nothing is updated when an error is
            raised.

    A negative ``running_var`` is not checked (that would read a value back from the device on
    every call): its channel comes out NaN, as in ``torch.nn``.
    """
    check_arguments(input, running_mean, running_var, weight, bias, training, momentum, eps)
    if not training:
        y = _normalize_fixed(input, running_mean, running_var, weight, bias, eps)
    elif input.numel() == 0:  # an empty batch: an empty output and nothing to update, as in torch
        y = input.clone()
    else:
        y, mean, var, _ = _train_forward(input, weight, bias, eps)
        update_running_stats(running_mean, running_var, mean, var,
                             input.numel() // input.shape[1], momentum)
    layout = _memory_format(input)
    return y if y.is_contiguous(memory_format=layout) else y.contiguous(memory_format=layout)


def _tracked(*tensors):
    """True when autograd records operations on any of these tensors (None allowed)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _train_forward(x, weight, bias, eps):
    """The training forward: ``y, mean, var, invstd``.

    Through an ``autograd.Function`` (the closed-form backward) where autograd records
    operations; otherwise directly, without the bookkeeping of a graph node: the kernels in
    plain eager execution (inference, ``torch.no_grad``, recomputing statistics), the
    formulas as plain operations elsewhere, which ``vmap`` and compilers follow like any
    other. Under forward-mode AD (dual tensors, ``torch.func.jvp``) the formulas run as plain
    operations in every case: the Function has no forward-mode rule, and autograd derives
    both modes from the plain operations.
    """
    if _tracked(x, weight, bias) and not _forward_ad_active():
        function = _BatchNormFunction if _eager(x) else _BatchNormFunctionForTransforms
        return function.apply(x, weight, bias, eps)
    return _forward(x, weight, bias, eps, _loops_view(x))


def _normalize_fixed(x, mean, var, weight, bias, eps):
    """Eval mode: a per-channel affine map, differentiable by autograd (also twice).

    When autograd needs none of the intermediate values (inference in eager mode), the same
    operations run in one pass of the compiled loops (:func:`._fused_kernels.normalize_fixed`)
    or, where those do not apply, in place in one buffer: the same numbers either way,
    without two extra input-sized allocations.
    """
    untracked = not _tracked(x, weight, bias) and _eager(x)
    if untracked and (view := _loops_view(x)) is not None:
        y = _fused_kernels.normalize_fixed(x, mean, var, weight, bias, eps, view)
        if y is not None:
            return y
    dtype, ndim = stats_dtype(x.dtype), x.dim()
    _, scale, offset = normalize_coefficients(as_dtype(var, dtype), eps, weight, bias)
    # Subtract the mean before scaling: x * scale + (bias - mean * scale) loses digits when
    # the mean is large.
    y = as_dtype(x, dtype) - per_channel(as_dtype(mean, dtype), ndim)
    if not untracked:
        y = y * per_channel(scale, ndim)
        if offset is not None:
            y = y + per_channel(offset, ndim)
    else:
        y.mul_(per_channel(scale, ndim))
        if offset is not None:
            y.add_(per_channel(offset, ndim))
    return as_dtype(y, x.dtype)


def _memory_format(x):
    """torch's ``suggest_memory_format``: channels-last where x is laid out so, else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if (x.dim() == 5 and not x.is_contiguous()
            and x.is_contiguous(memory_format=torch.channels_last_3d)):
        return torch.channels_last_3d
    return torch.contiguous_format
