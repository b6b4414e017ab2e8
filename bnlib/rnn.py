"""A normalized recurrent classifier, and batch normalization inside a recurrence.

The cell is an Elman network whose pre-activation is normalized at every step:

.. math::

    h_t = \\tanh\\big(\\mathrm{norm}_t(W_x x_t + W_h h_{t-1})\\big), \\qquad
    \\text{logits} = W_o h_T + b_o, \\qquad h_0 = 0 .

With layer normalization, norm_t is the same function at every step. With batch
normalization it is not: training uses the statistics of the batch at step t, and inference
needs running statistics, either one set shared by all steps (what a single BatchNorm module
called at every step gives) or one set per step (Cooijmans et al., 2016; steps beyond the
last one seen in training reuse the last step's statistics). :class:`RecurrentBatchNorm`
keeps both, so one trained model can be evaluated both ways.
"""

import torch

from . import _checks
from .torch.functional import batch_norm
from .torch.norms import LayerNorm

STATISTICS = ("per_step", "shared", "batch")


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

    Raises:
        ValueError: bad num_features, max_steps, eps or momentum.
    """

    def __init__(self, num_features, max_steps, eps=1e-5, momentum=0.1, gamma_init=1.0):
        super().__init__()
        _checks.check_num_features(num_features)
        if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
            raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
        _checks.check_eps(eps)
        _checks.check_momentum(momentum, allow_none=False)
        self.num_features, self.max_steps = num_features, max_steps
        self.eps, self.momentum = eps, momentum
        self.weight = torch.nn.Parameter(torch.full((num_features,), float(gamma_init)))
        self.bias = torch.nn.Parameter(torch.zeros(num_features))
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


class RecurrentClassifier(torch.nn.Module):
    """An Elman RNN with a normalized pre-activation, classifying a sequence from its last state.

    The input ``(N, L)`` (or ``(N, L, F)``) is read ``chunk`` values at a time: a signal of
    length L becomes T = L / chunk steps of ``chunk * F`` inputs each.

    Args:
        input_size: F, features per time point (1 for a plain signal).
        hidden_size: H.
        num_classes: outputs.
        norm: None, "layer" (:class:`bnlib.torch.LayerNorm`) or "batch"
            (:class:`RecurrentBatchNorm`).
        max_steps: T_max for "batch" (per-step statistics kept).
        chunk: time points per step.

    ``W_h`` starts orthogonal; with a norm, ``W_x`` and ``W_h`` have no bias (beta is it).

    Raises:
        ValueError: unknown norm; "batch" without max_steps; an input whose length is not
            a multiple of ``chunk``.
    """

    def __init__(self, input_size, hidden_size, num_classes, norm=None, max_steps=None, chunk=1):
        super().__init__()
        if norm not in (None, "layer", "batch"):
            raise ValueError(f"norm must be None, 'layer' or 'batch', got {norm!r}")
        if norm == "batch" and max_steps is None:
            raise ValueError("norm='batch' needs max_steps (the number of per-step statistics)")
        self.chunk, self.hidden_size, self.norm_kind = chunk, hidden_size, norm
        self.input = torch.nn.Linear(input_size * chunk, hidden_size, bias=norm is None)
        self.recurrent = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        torch.nn.init.orthogonal_(self.recurrent.weight)
        if norm == "layer":
            self.norm = LayerNorm(hidden_size)
        elif norm == "batch":
            self.norm = RecurrentBatchNorm(hidden_size, max_steps)
        self.output = torch.nn.Linear(hidden_size, num_classes)

    def steps(self, x):
        """The input as (N, T, chunk * F) steps."""
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        n, length, features = x.shape
        if length % self.chunk:
            raise ValueError(f"a sequence of length {length} does not split into steps of "
                             f"{self.chunk}")
        return x.reshape(n, length // self.chunk, self.chunk * features)

    def forward(self, x, return_states=False):
        """Logits ``(N, num_classes)``; with ``return_states`` also the pre-activations (N, T, H)."""
        inputs = self.input(self.steps(x))
        h = inputs.new_zeros(inputs.shape[0], self.hidden_size)
        states = []
        for t in range(inputs.shape[1]):
            a = inputs[:, t] + self.recurrent(h)
            if return_states:
                states.append(a.detach())
            if self.norm_kind == "layer":
                a = self.norm(a)
            elif self.norm_kind == "batch":
                a = self.norm(a, t)
            h = torch.tanh(a)
        logits = self.output(h)
        return (logits, torch.stack(states, 1)) if return_states else logits
