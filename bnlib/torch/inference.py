"""Batch normalization at inference: population statistics, folding, freezing.

>>> from bnlib import torch as bnt
>>> bnt.recompute_statistics(model, [x_train])          # Algorithm 2, exact (one batch)
>>> bnt.recompute_statistics(model, x_train.split(60))  # Algorithm 2, batches of 60
>>> fast = bnt.fold_batch_norms(model.eval())           # Linear/Conv + BN -> one layer
>>> tuned = bnt.freeze_batch_norms(model)               # statistics fixed for fine-tuning

In eval mode a batch-norm layer is a fixed affine map per channel c,

.. math::

    y = \\gamma_c \\frac{x - \\mathrm{E}[x]}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}} + \\beta_c
      = s_c\\, x + (\\beta_c - s_c \\mathrm{E}[x]), \\qquad
    s_c = \\frac{\\gamma_c}{\\sqrt{\\mathrm{Var}[x] + \\epsilon}},

with ``E[x]`` and ``Var[x]`` the stored ``running_mean`` and ``running_var``. This module
fills those two buffers with the paper's population statistics, folds the map into the
preceding Linear or convolution, and freezes it for fine-tuning. It works with every
subclass of torch's ``_BatchNorm``: ``torch.nn.BatchNorm1d/2d/3d``, ``torch.nn.SyncBatchNorm``
and bnlib's batch norms.
"""

import contextlib
import copy

import torch

from .functional import batch_norm

__all__ = ["FrozenBatchNorm", "fold_batch_norm", "fold_batch_norms", "freeze_batch_norms",
           "is_batch_norm", "recompute_statistics"]

_BatchNorm = torch.nn.modules.batchnorm._BatchNorm


def is_batch_norm(module):
    """True for every subclass of torch's ``_BatchNorm``: torch's and bnlib's batch norms."""
    return isinstance(module, _BatchNorm)


def _first_element(batch):
    """``update_bn``'s convention: a batch is an input, or a tuple/list whose first item is."""
    return batch[0] if isinstance(batch, (tuple, list)) else batch


def _statistics_layers(model):
    """The batch-norm layers of ``model`` whose statistics to recompute."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    # Layers without running statistics have nothing to recompute.
    layers = [m for m in model.modules() if is_batch_norm(m) and m.running_mean is not None]
    if not layers:
        raise ValueError("model has no batch-norm layer with running statistics: there is "
                         "nothing to recompute")
    return layers


def _state(layer):
    """Copies of what recomputing changes: statistics, count, momentum, mode."""
    stats = (layer.running_mean.clone(), layer.running_var.clone(),
             layer.num_batches_tracked.clone())
    return stats, layer.momentum, layer.training


def _reset(layer):
    """running_mean = 0, running_var = 1, count 0, then the cumulative average."""
    layer.reset_running_stats()
    layer.momentum = None
    layer.train()


def _restore(layer, state, statistics_too):
    (mean, var, count), momentum, training = state
    if statistics_too:
        layer.running_mean.copy_(mean)
        layer.running_var.copy_(var)
        layer.num_batches_tracked.copy_(count)
    layer.momentum = momentum
    layer.train(training)


@contextlib.contextmanager
def _recomputing(model, layers):
    """Around a recomputation of ``layers``' statistics: afterwards every module of ``model`` has
    its own training flag back (set without recursion: ``model.train(flag)`` would overwrite
    the mode of a batch norm kept in eval mode inside a training model) and every layer its
    momentum; if the body raised, the layers' statistics and counts are put back too, so a
    failed call changes nothing."""
    states = [_state(layer) for layer in layers]
    modes = [(m, m.training) for m in model.modules()]
    failed = True
    try:
        yield
        failed = False
    finally:
        for layer, state in zip(layers, states):
            _restore(layer, state, statistics_too=failed)
        for module, training in modes:
            module.training = training


@torch.no_grad()
def recompute_statistics(model, batches):
    """Replace running averages by population statistics: the paper's Algorithm 2.

    Resets every batch-norm layer, sets ``momentum=None`` (cumulative average), runs each
    batch once with the whole model in training mode, then restores every module's mode and
    every layer's momentum. Afterwards, over the B batches (m values per channel each),

    .. math::

        \\text{running\\_mean} = \\frac{1}{B}\\sum_b \\mu_b, \\qquad
        \\text{running\\_var} = \\frac{1}{B}\\sum_b \\frac{m}{m-1}\\,\\sigma^2_b ,

    which is Algorithm 2 (``E[x] = E_B[mu_B]``, ``Var[x] = m/(m-1) E_B[sigma_B^2]``) and what
    ``torch.optim.swa_utils.update_bn`` computes. Batches count equally, so give them equal
    sizes. One batch holding the whole set gives its exact mean and unbiased variance at
    every layer: every upstream layer is then normalized with exactly those statistics
    (up to the factor m / (m - 1)), as in eval mode.

    Unlike ``update_bn``, each module's own mode is restored (a batch-norm layer kept in eval
    mode inside a training model stays so), and an error leaves every statistic as it was.

    Args:
        model: a ``torch.nn.Module``; all its batch-norm modules (torch's and bnlib's) with
            running statistics are recomputed.
        batches: an iterable of inputs, or of tuples/lists whose first item is the input
            (a DataLoader of ``(x, y)`` works). Run under ``torch.no_grad()``.

    Raises:
        TypeError: a model that is not a ``torch.nn.Module``.
        ValueError: no batch-norm layer with running statistics; no batches; any error of a
            forward pass (e.g. one value per channel). Nothing is changed when an error is
            raised.
    """
    layers = _statistics_layers(model)
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise ValueError("batches is empty: population statistics need at least one batch")
    with _recomputing(model, layers):
        for layer in layers:
            _reset(layer)
        model.train()
        model(_first_element(first))
        for batch in batches:
            model(_first_element(batch))


def _affine_parameters(bn):
    """``(scale, shift)`` in float64 with ``bn(x) = scale * x + shift`` per channel in eval mode."""
    if not isinstance(bn, _BatchNorm):
        raise TypeError(f"bn must be a torch or bnlib.torch batch-norm module, "
                        f"got {type(bn).__name__}")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it "
                         "normalizes every batch with its own statistics, which no fixed "
                         "layer can reproduce")
    if bn.training:
        raise ValueError("bn is in training mode, where it normalizes with batch statistics; "
                         "folding reproduces eval mode: call bn.eval() (or model.eval()) first")
    mean = bn.running_mean.detach().double()
    scale = torch.rsqrt(bn.running_var.detach().double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().double()
    shift = -mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach().double()
    return scale, shift


def fold_batch_norm(layer, bn):
    """A new layer computing ``bn(layer(x))`` of an eval-mode ``bn`` in one Linear/conv.

    With ``z = W x + b`` and ``bn(z) = s z + t`` per output channel (see the module's
    docstring): ``W' = s W`` (row / output channel c scaled by ``s_c``) and ``b' = s b + t``.
    The arithmetic is done in float64 and rounded once to the layer's dtype, so the folded
    float32 layer is as accurate as the pair it replaces. The same formula as
    ``torch.nn.utils.fusion.fuse_linear_bn_eval`` / ``fuse_conv_bn_eval``.

    Args:
        layer: ``torch.nn.Linear`` or a (not transposed) ``torch.nn.Conv1d/2d/3d``, with or
            without bias. It is not modified.
        bn: a batch-norm module of torch or bnlib in eval mode, with running statistics,
            with or without affine parameters, ``num_features`` = the layer's outputs.

    Returns:
        A deep copy of ``layer`` with the folded weight and a bias (always present), the
        parameters' ``requires_grad`` kept.

    Raises:
        TypeError: a layer or bn of another kind (e.g. a transposed convolution).
        ValueError: bn in training mode; bn without running statistics; channel counts or
            devices that differ.
    """
    if isinstance(layer, torch.nn.Linear):
        out = layer.out_features
    elif isinstance(layer, torch.nn.modules.conv._ConvNd) and not layer.transposed:
        out = layer.out_channels
    else:
        raise TypeError(f"layer must be torch.nn.Linear or torch.nn.Conv1d/2d/3d, "
                        f"got {type(layer).__name__}")
    scale, shift = _affine_parameters(bn)
    if bn.num_features != out:
        raise ValueError(f"channel mismatch: the layer has {out} outputs but bn normalizes "
                         f"{bn.num_features} channels")
    if bn.running_mean.device != layer.weight.device:
        raise ValueError(f"bn is on {bn.running_mean.device} but the layer is on "
                         f"{layer.weight.device}")
    weight = layer.weight.detach()
    view = [-1] + [1] * (weight.dim() - 1)
    new_weight = weight.double() * scale.view(view)
    new_bias = shift if layer.bias is None else layer.bias.detach().double() * scale + shift
    folded = copy.deepcopy(layer)
    folded.weight = torch.nn.Parameter(new_weight.to(weight.dtype),
                                       requires_grad=layer.weight.requires_grad)
    folded.bias = torch.nn.Parameter(new_bias.to(weight.dtype),
                                     requires_grad=layer.weight.requires_grad)
    return folded


def _foldable(layer):
    return isinstance(layer, torch.nn.Linear) or (
        isinstance(layer, torch.nn.modules.conv._ConvNd) and not layer.transposed)


def fold_batch_norms(model):
    """A copy of ``model`` with every batch norm folded into the Linear/conv layer before it.

    Looks inside every ``torch.nn.Sequential`` (at any depth) for a Linear or convolution
    directly followed by a batch-norm module, replaces the layer by
    :func:`fold_batch_norm` of the pair and the batch norm by ``torch.nn.Identity``, so the
    module names (``model[0].norm``) stay valid. A batch norm anywhere else (first in its
    Sequential, after an activation, or in a module with its own ``forward``) is kept as it
    is. The model is not modified.

    Raises:
        As :func:`fold_batch_norm`, e.g. ValueError for a batch norm in training mode.
    """
    folded = copy.deepcopy(model)
    for module in folded.modules():
        if not isinstance(module, torch.nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names, names[1:]):
            layer, bn = module._modules[first], module._modules[second]
            if _foldable(layer) and isinstance(bn, _BatchNorm):
                module._modules[first] = fold_batch_norm(layer, bn)
                module._modules[second] = torch.nn.Identity()
    return folded


class FrozenBatchNorm(torch.nn.Module):
    """A batch norm that always normalizes with its stored statistics, whatever its mode.

    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` in training and in
    eval mode, and the statistics never change: the usual way to fine-tune a network with
    small batches. Unlike calling ``bn.eval()`` on the layers, this survives
    ``model.train()``, which every training loop calls. ``weight`` and ``bias`` stay
    parameters (set ``requires_grad_(False)`` to freeze them too). The state-dict keys are a
    batch norm's, so the state loads back into ``torch.nn.BatchNorm*`` and bnlib's modules.

    Args:
        bn: the batch-norm module (torch or bnlib.torch) to freeze; copied, not modified.

    Raises:
        TypeError, ValueError: as :func:`fold_batch_norm` for a bn without running statistics.
    """

    def __init__(self, bn):
        super().__init__()
        if not isinstance(bn, _BatchNorm):
            raise TypeError(f"bn must be a torch or bnlib.torch batch-norm module, "
                            f"got {type(bn).__name__}")
        if bn.running_mean is None:
            raise ValueError("bn has no running statistics (track_running_stats=False): "
                             "there is nothing to freeze it to")
        self.num_features, self.eps = bn.num_features, bn.eps
        self.weight = None if bn.weight is None else torch.nn.Parameter(bn.weight.detach().clone())
        self.bias = None if bn.bias is None else torch.nn.Parameter(bn.bias.detach().clone())
        self.register_buffer("running_mean", bn.running_mean.detach().clone())
        self.register_buffer("running_var", bn.running_var.detach().clone())
        self.register_buffer("num_batches_tracked", bn.num_batches_tracked.detach().clone())

    def forward(self, input):
        return batch_norm(input, self.running_mean, self.running_var, self.weight, self.bias,
                          training=False, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


def freeze_batch_norms(model):
    """A copy of ``model`` with every torch/bnlib batch-norm module replaced by :class:`FrozenBatchNorm`.

    The model is not modified. Raises as :class:`FrozenBatchNorm`.
    """
    frozen = copy.deepcopy(model)
    if isinstance(frozen, _BatchNorm):
        return FrozenBatchNorm(frozen)
    for module in frozen.modules():
        for name, child in module._modules.items():
            if isinstance(child, _BatchNorm):
                module._modules[name] = FrozenBatchNorm(child)
    return frozen
