"""Batch normalization inside a recurrence: statistics per time step, or shared by all steps.

A recurrent cell normalizes a pre-activation at every step t, e.g.
``h_t = tanh(norm_t(W_x x_t + W_h h_{t-1}))``. With layer normalization norm_t is the same
function at every step. With batch normalization it is not: training uses the statistics of
the batch at step t, and inference needs running statistics, either one set shared by all
steps (what a single BatchNorm module called at every step gives) or one set per step
(Cooijmans et al., 2016; steps beyond the last one seen in training reuse the last step's
statistics). :class:`RecurrentBatchNorm`
keeps both, so one trained model can be evaluated both ways.
"""

import torch

from .. import _checks
from .functional import batch_norm

__all__ = ["RecurrentBatchNorm", "STATISTICS"]

STATISTICS = ("per_step", "shared", "batch")
"""The values of ``RecurrentBatchNorm.statistics`` in eval mode."""


class RecurrentBatchNorm(torch.nn.Module):
    """Batch norm at step t of a recurrence: gamma and beta shared, running statistics per step and shared.

    ``forward(x, t)`` normalizes ``(N, C)`` input of step t. In training it uses the batch's
    mean and biased variance (the same output whatever ``statistics`` says) and updates two
    sets of running statistics with torch's conventions (momentum = weight of the new batch,
    unbiased variance stored):

    * ``running_mean[s], running_var[s]`` with ``s = min(t, max_steps - 1)`` (per step);
    * ``shared_mean, shared_var``, updated at every step: what one ``BatchNorm1d`` reused at
      every step holds.

    In eval mode ``statistics`` picks the ones used: "per_step" (Cooijmans et al., 2016),
    "shared", or "batch" (the test batch's own statistics at each step).

    Args:
        num_features: C.
        max_steps: number of per-step statistics kept (T_max).
        eps, momentum: as for BatchNorm (momentum in [0, 1]).
        gamma_init: the initial gamma (Cooijmans et al. recommend 0.1 for LSTMs).
        bias: learn beta (default). ``bias=False`` has no beta (``self.bias is None``), for a
            term whose shift another layer already provides: Cooijmans et al. normalize the
            input and the recurrent term separately, ``BN(W_x x_t) + BN(W_h h_{t-1})``, and
            keep one beta for the sum.

    Raises:
        ValueError: bad num_features, max_steps, eps or momentum.
    """

    def __init__(self, num_features, max_steps, eps=1e-5, momentum=0.1, gamma_init=1.0,
                 bias=True):
        super().__init__()
        _checks.check_num_features(num_features)
        _checks.check_positive_int("max_steps", max_steps)
        _checks.check_eps(eps)
        _checks.check_momentum(momentum, allow_none=False)
        self.num_features, self.max_steps = num_features, max_steps
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.full((num_features,), float(gamma_init)))
        if bias:
            self.bias = torch.nn.Parameter(torch.zeros(num_features))
        else:
            self.register_parameter("bias", None)
        self.register_buffer("running_mean", torch.zeros(max_steps, num_features))
        self.register_buffer("running_var", torch.ones(max_steps, num_features))
        self.register_buffer("shared_mean", torch.zeros(num_features))
        self.register_buffer("shared_var", torch.ones(num_features))
        self.statistics = "per_step"

    def forward(self, x, t):
        """Normalize the (N, C) input of step ``t`` (t >= 0)."""
        if self.statistics not in STATISTICS:
            raise ValueError(f"statistics must be one of {STATISTICS}, got {self.statistics!r}")
        s = min(t, self.max_steps - 1)
        if self.training:
            with torch.no_grad():  # only for its update of the shared running statistics
                batch_norm(x.detach(), self.shared_mean, self.shared_var, training=True,
                           momentum=self.momentum, eps=self.eps)
            return batch_norm(x, self.running_mean[s], self.running_var[s], self.weight,
                              self.bias, True, self.momentum, self.eps)
        if self.statistics == "batch":
            return batch_norm(x, None, None, self.weight, self.bias, True, eps=self.eps)
        mean, var = ((self.running_mean[s], self.running_var[s]) if self.statistics == "per_step"
                     else (self.shared_mean, self.shared_var))
        return batch_norm(x, mean, var, self.weight, self.bias, False, eps=self.eps)

    def extra_repr(self):
        return f"{self.num_features}, max_steps={self.max_steps}, statistics={self.statistics!r}"
