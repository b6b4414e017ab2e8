"""Model builders shared by the chapters: the same network with and without normalization.

- :func:`mlp`: ``[Linear -> norm -> activation] * depth -> Linear``.
- :func:`cnn`: ``[Conv2d -> norm -> activation -> MaxPool2d] * depth -> head``.
- :func:`he_init`: He initialization of every Linear and convolution weight (ReLU networks).
- :func:`glorot_init`: Glorot initialization of the same weights (tanh networks; ``gain=4`` for
  sigmoid networks).
- :class:`RecurrentClassifier`: an Elman RNN whose pre-activation is normalized at every step,
  ``h_t = tanh(norm_t(W_x x_t + W_h h_{t-1}))``, classifying from the last state.
- :class:`StackedRecurrentClassifier`: K such networks run in training mode as one, to train
  a learning-rate grid over seeds side by side.
"""

import math
from collections import OrderedDict

import torch

from .. import _checks
from ..torch import BatchNorm1d, LayerNorm, RecurrentBatchNorm

__all__ = ["ACTIVATIONS", "RECURRENT_NORMS", "RecurrentClassifier", "StackedRecurrentClassifier",
           "cnn", "glorot_init", "he_init", "mlp"]

ACTIVATIONS = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh,
               "identity": torch.nn.Identity}
"""The activations that mlp and cnn accept by name (name -> torch.nn module class)."""

RECURRENT_NORMS = (None, "layer", "batch", "batch_separate", "batch_sequence")
"""The values of ``RecurrentClassifier``'s ``norm`` (where the recurrence is normalized)."""


def _block(name, layer, width, norm, norm_position, act, tail_name, tail):
    """``layer -> norm -> act`` (or ``layer -> act -> norm``), then ``tail`` unless None.

    A Sequential whose children keep their names, so hooks can reach each part.
    """
    parts = OrderedDict([(name, layer)])
    if norm is not None and norm_position == "before":
        parts["norm"] = norm(width)
    parts["act"] = act()
    if norm is not None and norm_position == "after":
        parts["norm"] = norm(width)
    if tail is not None:
        parts[tail_name] = tail
    return torch.nn.Sequential(parts)


def mlp(in_features, hidden, out_features, activation="relu", norm=None,
        norm_position="before", init_std=None, dropout=0.0):
    """A fully connected network: ``[Linear -> norm -> activation] * len(hidden) -> Linear``.

    Args:
        in_features: input width.
        hidden: widths of the hidden layers, e.g. ``[100, 100, 100]`` (the paper's MNIST net).
        out_features: output width (number of classes).
        activation: "relu", "sigmoid", "tanh", "identity", or a module class.
        norm: None, or a factory ``width -> module`` such as ``bnlib.torch.BatchNorm1d``,
            ``torch.nn.BatchNorm1d`` or ``lambda w: torch.nn.LayerNorm(w)``.
        norm_position: "before" the activation (as in the paper; the Linear layer then has no
            bias, which the normalization would cancel) or "after" it.
        init_std: None for torch's default initialization, or the standard deviation of a
            normal initialization of every Linear weight (biases 0).
        dropout: probability of a ``torch.nn.Dropout`` at the end of every hidden block (after
            the activation, and after the norm when it comes after). With norm "before", the
            dropout then feeds the next block's normalization: the order whose train/test
            "variance shift" Li et al. (2018) describe.

    Returns:
        A ``torch.nn.Sequential``. Hidden layer i is ``model[i]``, itself a Sequential of
        ``linear``, ``norm`` (absent without norm), ``act`` and ``dropout`` (absent when 0),
        so hooks can reach each part.

    Raises:
        ValueError: unknown ``norm_position``, or ``dropout`` outside [0, 1).
    """
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    layers, width = [], in_features
    for h in hidden:
        linear = torch.nn.Linear(width, h, bias=norm is None or norm_position == "after")
        layers.append(_block("linear", linear, h, norm, norm_position, act,
                             "dropout", torch.nn.Dropout(dropout) if dropout > 0 else None))
        width = h
    layers.append(torch.nn.Linear(width, out_features))
    model = torch.nn.Sequential(*layers)
    if init_std is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.Linear):
                torch.nn.init.normal_(module.weight, std=init_std)
                if module.bias is not None:
                    torch.nn.init.zeros_(module.bias)
    return model


def cnn(in_channels, channels, num_classes, activation="relu", norm=None,
        norm_position="before", kernel_size=3, pool=2, image_size=None):
    """A small CNN: ``[Conv2d -> norm -> activation -> MaxPool2d] * len(channels) -> head``.

    Every convolution is ``kernel_size`` x ``kernel_size`` with stride 1 and "same" padding,
    so only the pooling shrinks the feature maps (by ``pool`` per block, rounding down).

    Args:
        in_channels: channels of the input images, e.g. 1 for MNIST.
        channels: output channels of the convolutional blocks, e.g. ``[8, 16]``.
        num_classes: number of outputs (logits).
        activation: "relu", "sigmoid", "tanh", "identity", or a module class.
        norm: None, or a factory ``channels -> module`` such as ``bnlib.torch.BatchNorm2d``
            or ``torch.nn.BatchNorm2d``: statistics per channel, over N * H * W values.
        norm_position: "before" the activation (the convolution then has no bias, which the
            normalization would cancel) or "after" it (the convolution keeps its bias).
        kernel_size: odd side of the square kernels.
        pool: side of the max-pooling window after each block (1: no pooling).
        image_size: None for a global-average-pooling head
            (``AdaptiveAvgPool2d(1) -> Flatten -> Linear(channels[-1], num_classes)``), which
            works for any input size; or the side H = W of the input images for a flattening
            head (``Flatten -> Linear(channels[-1] * s * s, num_classes)``, s the side after
            pooling), which keeps where features are.

    Returns:
        A ``torch.nn.Sequential``. Block i is ``model[i]``, itself a Sequential of ``conv``,
        ``norm`` (absent without norm), ``act`` and ``pool`` (absent when ``pool`` is 1), so
        hooks can reach each part; the head is ``model[-1]``, a Sequential ending in ``linear``.

    Raises:
        ValueError: ``in_channels`` or ``num_classes`` not a positive int, an unknown
            ``activation`` name, empty ``channels`` or a non-positive entry, an unknown
            ``norm_position``, an even or non-positive ``kernel_size``, ``pool`` < 1, or an
            ``image_size`` that is not a positive int or that the pooling reduces to nothing.
    """
    for name, value in (("in_channels", in_channels), ("num_classes", num_classes)):
        _checks.check_positive_int(name, value)
    if isinstance(activation, str) and activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)} or a module class, "
                         f"got {activation!r}")
    channels = list(channels)
    if not channels or any(isinstance(c, bool) or not isinstance(c, int) or c < 1
                           for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive ints, got {channels!r}")
    if norm_position not in ("before", "after"):
        raise ValueError(f"norm_position must be 'before' or 'after', got {norm_position!r}")
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    if not isinstance(pool, int) or pool < 1:
        raise ValueError(f"pool must be an int >= 1, got {pool!r}")
    if image_size is not None:
        _checks.check_positive_int("image_size", image_size)
        side = image_size // pool ** len(channels)  # = rounding down after every block
        if side < 1:
            raise ValueError(f"image_size {image_size!r} is pooled to nothing by {len(channels)} "
                             f"blocks with pool={pool}")
    act = ACTIVATIONS[activation] if isinstance(activation, str) else activation
    blocks, width = [], in_channels
    for c in channels:
        has_bias = norm is None or norm_position == "after"
        conv = torch.nn.Conv2d(width, c, kernel_size, padding=kernel_size // 2, bias=has_bias)
        blocks.append(_block("conv", conv, c, norm, norm_position, act,
                             "pool", torch.nn.MaxPool2d(pool) if pool > 1 else None))
        width = c
    if image_size is None:
        head = OrderedDict(gap=torch.nn.AdaptiveAvgPool2d(1), flatten=torch.nn.Flatten(),
                           linear=torch.nn.Linear(width, num_classes))
    else:
        head = OrderedDict(flatten=torch.nn.Flatten(),
                           linear=torch.nn.Linear(width * side * side, num_classes))
    blocks.append(torch.nn.Sequential(head))
    return torch.nn.Sequential(*blocks)


_WEIGHTED = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _initialize(model, draw):
    """``draw(weight)`` for every Linear and convolution weight of ``model``, biases 0; the
    checks and conventions of :func:`he_init` and :func:`glorot_init`."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    layers = [m for m in model.modules() if isinstance(m, _WEIGHTED)]
    if not layers:
        raise ValueError("model has no Linear or Conv1d/2d/3d layer: there is nothing to initialize")
    for layer in layers:
        draw(layer.weight)
        if layer.bias is not None:
            torch.nn.init.zeros_(layer.bias)
    return model


@torch.no_grad()
def he_init(model):
    """Initialize ``model`` for ReLU units as He et al. (2015) do; return it (changed in place).

    Every ``Linear`` and ``Conv1d/2d/3d`` weight is drawn from N(0, 2 / fan_in)
    (``torch.nn.init.kaiming_normal_`` with ``nonlinearity="relu"``), where fan_in is
    ``in_features`` for a Linear layer and ``in_channels / groups * prod(kernel_size)`` for a
    convolution, so that a ReLU layer keeps the second moment of its input; their biases are
    set to 0. The output layer is treated like the others. Normalization layers are left as
    they are (gamma = 1, beta = 0 from their constructor). torch's default initialization
    (Kaiming-uniform with ``a = sqrt(5)``, weights of variance ``1 / (3 fan_in)``) shrinks the
    signal by about a factor 6 in variance per ReLU layer. A network without normalization
    initialized this way is the book's realistic baseline for ReLU networks. Draws from
    torch's global generator (seed it first, e.g. with :func:`bnlib.book.training.deterministic`).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` has no Linear or convolution layer to initialize.
    """
    return _initialize(model, lambda w: torch.nn.init.kaiming_normal_(w, nonlinearity="relu"))


@torch.no_grad()
def glorot_init(model, gain=1.0):
    """Initialize ``model`` for tanh or sigmoid units as Glorot and Bengio (2010) do; return it
    (changed in place).

    Every ``Linear`` and ``Conv1d/2d/3d`` weight is drawn from
    N(0, gain^2 * 2 / (fan_in + fan_out)) (``torch.nn.init.xavier_normal_(w, gain)``), fan_in
    and fan_out counting ``in_features`` and ``out_features`` for a Linear layer and channels
    times ``prod(kernel_size)`` (divided by ``groups`` on the input side) for a convolution;
    their biases are set to 0. With ``gain=1`` this is the scale Glorot and Bengio derive for
    units that behave like the identity near 0 (tanh, softsign): it keeps the variance of the
    signal and of the gradient roughly constant from layer to layer in that linear regime.
    For the sigmoid, whose slope at 0 is 1/4 (a quarter of tanh's), Bengio (2012, "Practical
    recommendations for gradient-based training of deep architectures") recommends 4 times
    that scale: ``gain=4``, the book's realistic baseline for sigmoid networks. (torch's
    ``calculate_gain("sigmoid")`` is 1, so ``xavier_normal_`` alone gives the tanh scale.)
    The output layer is treated like the others; normalization layers are left as they are
    (gamma = 1, beta = 0). For a 784 -> 100 layer the standard deviation is 0.048 with
    ``gain=1`` (0.19 with ``gain=4``), against 0.021 for torch's default (Kaiming-uniform with
    ``a = sqrt(5)``: ``1 / sqrt(3 * fan_in)``). Draws from torch's global generator (seed it
    first, e.g. with :func:`bnlib.book.training.deterministic`).

    Args:
        model: the module whose Linear and convolution layers are initialized.
        gain: the factor on the standard deviation, a positive number (1: tanh; 4: sigmoid).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``gain`` is not a positive finite number, or ``model`` has no Linear or
            convolution layer to initialize.
    """
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain < math.inf:
        raise ValueError(f"gain must be a positive finite number, got {gain!r}")
    return _initialize(model, lambda w: torch.nn.init.xavier_normal_(w, gain=float(gain)))


class RecurrentClassifier(torch.nn.Module):
    """An Elman RNN with a normalized pre-activation, classifying a sequence from its last state.

    The input ``(N, L)`` (or ``(N, L, F)``) is read ``chunk`` values at a time: a signal of
    length L becomes T = L / chunk steps of ``chunk * F`` inputs each. ``norm`` says where the
    recurrence ``h_t = tanh(a_t)``, ``h_0 = 0``, is normalized:

    ===================  ================================================================
    norm                 ``a_t``
    ===================  ================================================================
    None                 ``W_x x_t + b + W_h h_{t-1}``
    "layer"              ``LN(W_x x_t + W_h h_{t-1})`` (:class:`bnlib.torch.LayerNorm`)
    "batch"              ``BN_t(W_x x_t + W_h h_{t-1})``: one
                         :class:`bnlib.torch.RecurrentBatchNorm` on the sum
    "batch_separate"     ``BN_t(W_x x_t) + BN'_t(W_h h_{t-1})``: two, the input term's
                         (``norm``, with beta) and the recurrent term's (``recurrent_norm``,
                         without beta), as Cooijmans et al. (2016) do in an LSTM
    "batch_sequence"     ``BN(W_x x_t) + W_h h_{t-1}``: a :class:`bnlib.torch.BatchNorm1d`
                         whose statistics run over batch *and* time (sequence-wise, Amodei
                         et al., 2016); the recurrent term is not normalized
    ===================  ================================================================

    Args:
        input_size: F, features per time point (1 for a plain signal).
        hidden_size: H.
        num_classes: outputs.
        norm: one of :data:`RECURRENT_NORMS` (table above).
        max_steps: T_max for "batch" and "batch_separate" (per-step statistics kept).
        chunk: time points per step.
        gamma_init: the initial gamma of every batch norm (Cooijmans et al. use 0.1).
        init: None keeps torch's default initialization of ``W_x`` and of the output layer;
            "glorot" draws both from Glorot/Xavier-uniform and zeroes their biases (the book's
            realistic initialization for tanh units).

    ``W_h`` starts orthogonal; with a norm, ``W_x`` and ``W_h`` have no bias (beta is it).

    Raises:
        ValueError: unknown norm or init; "batch" or "batch_separate" without max_steps; an
            input whose length is not a multiple of ``chunk``.
    """

    def __init__(self, input_size, hidden_size, num_classes, norm=None, max_steps=None, chunk=1,
                 gamma_init=1.0, init=None):
        super().__init__()
        if norm not in RECURRENT_NORMS:
            raise ValueError(f"norm must be one of {RECURRENT_NORMS}, got {norm!r}")
        if norm in ("batch", "batch_separate") and max_steps is None:
            raise ValueError(f"norm={norm!r} needs max_steps (the number of per-step statistics)")
        if init not in (None, "glorot"):
            raise ValueError(f"init must be None (torch's default) or 'glorot', got {init!r}")
        self.chunk, self.hidden_size, self.norm_kind = chunk, hidden_size, norm
        self.input = torch.nn.Linear(input_size * chunk, hidden_size, bias=norm is None)
        self.recurrent = torch.nn.Linear(hidden_size, hidden_size, bias=False)
        torch.nn.init.orthogonal_(self.recurrent.weight)
        if norm == "layer":
            self.norm = LayerNorm(hidden_size)
        elif norm in ("batch", "batch_separate"):
            self.norm = RecurrentBatchNorm(hidden_size, max_steps, gamma_init=gamma_init)
        elif norm == "batch_sequence":
            self.norm = BatchNorm1d(hidden_size)
            torch.nn.init.constant_(self.norm.weight, gamma_init)
        if norm == "batch_separate":
            self.recurrent_norm = RecurrentBatchNorm(hidden_size, max_steps,
                                                     gamma_init=gamma_init, bias=False)
        self.output = torch.nn.Linear(hidden_size, num_classes)
        if init == "glorot":
            for layer in (self.input, self.output):
                torch.nn.init.xavier_uniform_(layer.weight)
                if layer.bias is not None:
                    torch.nn.init.zeros_(layer.bias)

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
        """Logits ``(N, num_classes)``; with ``return_states`` also the pre-activations (N, T, H)
        before any normalization, ``W_x x_t (+ b) + W_h h_{t-1}``."""
        raw = self.input(self.steps(x))
        inputs = raw
        if self.norm_kind == "batch_sequence":  # (N, H, T): statistics over batch and time
            inputs = self.norm(raw.transpose(1, 2)).transpose(1, 2)
        h = raw.new_zeros(raw.shape[0], self.hidden_size)
        states = []
        # unbind, not inputs[:, t]: the backward of a select fills a zero tensor of the whole
        # sequence at every step
        for t, x_t in enumerate(inputs.unbind(1)):
            recurrent = self.recurrent(h)
            if return_states:
                states.append((raw[:, t] + recurrent).detach())
            if self.norm_kind == "layer":
                a = self.norm(x_t + recurrent)
            elif self.norm_kind == "batch":
                a = self.norm(x_t + recurrent, t)
            elif self.norm_kind == "batch_separate":
                a = self.norm(x_t, t) + self.recurrent_norm(recurrent, t)
            else:
                a = x_t + recurrent
            h = torch.tanh(a)
        logits = self.output(h)
        return (logits, torch.stack(states, 1)) if return_states else logits


class StackedRecurrentClassifier(torch.nn.Module):
    """K :class:`RecurrentClassifier` of one configuration, run in training mode as one network.

    A learning-rate grid over seeds trains many small recurrent networks, and a small network's
    step costs mostly the overhead of its many tiny operations, about the same for one network
    as for K stacked ones. ``forward(x)`` takes one batch per model, ``(K, N, L)`` or
    ``(K, N, L, F)``, and returns the logits ``(K, N, num_classes)``: for every k, up to
    rounding, what ``models[k](x[k])`` returns in training mode, as a function of
    ``models[k]``'s own parameters (stacked at every call, so gradients reach them: train them
    with any optimizer over their parameters, e.g. one learning rate per model). The running
    statistics are updated as each model would update its own, in stacked buffers;
    :meth:`sync` copies them into the models. Batch and layer norm are computed here with
    ``torch.nn.functional``'s kernels, which cost less per call than bnlib's on tiny inputs
    and give the same values in float64 up to rounding (tested).

    There is no stacked eval mode: after :meth:`sync`, evaluate ``models[k]`` itself.

    Args:
        models: a non-empty list of :class:`RecurrentClassifier` with the same ``norm``,
            ``chunk``, shapes and normalization settings.

    Raises:
        TypeError: a model that is not a :class:`RecurrentClassifier`.
        ValueError: no models, or models of different configurations; in :meth:`forward`, eval
            mode or an input whose first dim is not K.
    """

    def __init__(self, models):
        super().__init__()
        models = list(models)
        if not models:
            raise ValueError("models is empty: there is nothing to stack")
        bad = [type(m).__name__ for m in models if not isinstance(m, RecurrentClassifier)]
        if bad:
            raise TypeError(f"only RecurrentClassifier models can be stacked, got {bad[0]}")
        signature = [self._signature(m) for m in models]
        if any(s != signature[0] for s in signature):
            raise ValueError("the models differ in configuration (norm, chunk, shapes or "
                             "normalization settings): only copies of one architecture stack")
        self.models = torch.nn.ModuleList(models)
        first = models[0]
        self.norm_kind, self.hidden_size = first.norm_kind, first.hidden_size
        self._parameters_of = {name: [dict(m.named_parameters())[name] for m in models]
                               for name, _ in first.named_parameters()}
        self._stacked = {}  # (module name, buffer name) -> stacked buffer (..., K * H)
        for module_name in ("norm", "recurrent_norm"):
            module = getattr(first, module_name, None)
            if module is None or self.norm_kind == "layer":
                continue
            for buffer_name, value in module.named_buffers():
                if value.is_floating_point():
                    values = [m.get_buffer(f"{module_name}.{buffer_name}") for m in models]
                    self._stacked[module_name, buffer_name] = (
                        torch.stack(values, -2).flatten(-2).clone())

    @staticmethod
    def _signature(model):
        settings = [(name, getattr(module, "eps", None), getattr(module, "momentum", None))
                    for name, module in model.named_modules() if name.endswith("norm")]
        shapes = [(name, tuple(p.shape)) for name, p in model.named_parameters()]
        buffers = [(name, tuple(b.shape)) for name, b in model.named_buffers()]
        return model.norm_kind, model.chunk, model.hidden_size, settings, shapes, buffers

    def _stack(self, name):
        return torch.stack(self._parameters_of[name])

    def _affine(self, module_name):
        """The K models' gamma and beta of one norm, stacked to (K * H,); beta may be None."""
        weight = self._stack(f"{module_name}.weight").flatten()
        bias = (self._stack(f"{module_name}.bias").flatten()
                if f"{module_name}.bias" in self._parameters_of else None)
        return weight, bias

    def _batch_norm(self, a, module_name, affine, statistics=None):
        """Batch norm of ``a`` (K, M, H) over M, per model and unit. ``statistics`` None: update
        the one set of running statistics (sequence-wise); else a pair of (K * H,) rows that
        receive the batch's mean and unbiased variance (:meth:`_update_per_step` uses them)."""
        k, m, h = a.shape
        module = getattr(self.models[0], module_name)
        flat = a.transpose(0, 1).reshape(m, k * h)
        if statistics is None:
            mean, var, momentum = (self._stacked[module_name, "running_mean"],
                                   self._stacked[module_name, "running_var"], module.momentum)
            for model in self.models:  # what BatchNorm1d counts in training mode
                model.get_buffer(f"{module_name}.num_batches_tracked").add_(1)
        else:
            (mean, var), momentum = statistics, 1.0  # running = the batch's statistics
        y = torch.nn.functional.batch_norm(flat, mean, var, *affine, True, momentum, module.eps)
        return y.reshape(m, k, h).transpose(0, 1)

    @torch.no_grad()
    def _update_per_step(self, module_name, means, variances):
        """The running statistics after one update per step, as RecurrentBatchNorm makes them:
        step t updates the per-step set ``min(t, max_steps - 1)`` and the shared set, each
        ``r <- (1 - p) r + p stat_t``; a run of n updates in closed form,
        ``r_n = (1 - p)^n r_0 + sum_t p (1 - p)^(n-1-t) stat_t``."""
        module = getattr(self.models[0], module_name)
        p, last = module.momentum, module.max_steps - 1

        def update(buffer, stats):  # stats: (n, K * H), in the order of the updates
            n = stats.shape[0]
            weights = p * (1 - p) ** torch.arange(n - 1, -1, -1, dtype=stats.dtype)
            buffer.mul_((1 - p) ** n).add_(weights @ stats)

        for kind, stats in (("mean", means), ("var", variances)):
            running = self._stacked[module_name, f"running_{kind}"]
            for s in range(min(last, stats.shape[0])):
                update(running[s], stats[s:s + 1])
            if stats.shape[0] > last:
                update(running[last], stats[last:])
            update(self._stacked[module_name, f"shared_{kind}"], stats)

    def forward(self, x):
        """Logits ``(K, N, num_classes)`` of the K models, each on its own batch ``x[k]``."""
        if not self.training:
            raise ValueError("StackedRecurrentClassifier runs in training mode only: call "
                             "sync() and evaluate the models themselves")
        k = len(self.models)
        if x.shape[0] != k:
            raise ValueError(f"x must hold one batch per model, shape ({k}, N, ...), got "
                             f"{tuple(x.shape)}")
        n, h, kind = x.shape[1], self.hidden_size, self.norm_kind
        steps = self.models[0].steps(x.flatten(0, 1))  # (K * N, T, chunk * F)
        t_max = steps.shape[1]
        w_x = self._stack("input.weight").transpose(1, 2)
        raw = torch.bmm(steps.reshape(k, n * t_max, -1), w_x)
        if "input.bias" in self._parameters_of:
            raw = raw + self._stack("input.bias").unsqueeze(1)
        inputs = raw.reshape(k, n, t_max, h)
        if kind == "batch_sequence":
            inputs = self._batch_norm(raw, "norm", self._affine("norm")).reshape(k, n, t_max, h)
        w_h = self._stack("recurrent.weight").transpose(1, 2)
        if kind == "layer":
            gamma, beta = (self._stack(f"norm.{name}").unsqueeze(1) for name in ("weight", "bias"))
            eps = self.models[0].norm.eps
        per_step = {"batch": ["norm"], "batch_separate": ["norm", "recurrent_norm"]}.get(kind, [])
        affine = {name: self._affine(name) for name in per_step}
        seen = {name: (raw.new_zeros(t_max, k * h), raw.new_zeros(t_max, k * h))
                for name in per_step}  # each step's batch mean and unbiased variance
        state = raw.new_zeros(k, n, h)
        for t, x_t in enumerate(inputs.unbind(2)):
            recurrent = torch.bmm(state, w_h)
            if kind == "layer":
                a = torch.nn.functional.layer_norm(x_t + recurrent, (h,), eps=eps) * gamma + beta
            elif kind == "batch":
                a = self._batch_norm(x_t + recurrent, "norm", affine["norm"],
                                     [stat[t] for stat in seen["norm"]])
            elif kind == "batch_separate":
                a = (self._batch_norm(x_t, "norm", affine["norm"],
                                      [stat[t] for stat in seen["norm"]])
                     + self._batch_norm(recurrent, "recurrent_norm", affine["recurrent_norm"],
                                        [stat[t] for stat in seen["recurrent_norm"]]))
            else:
                a = x_t + recurrent
            state = torch.tanh(a)
        for name in per_step:
            self._update_per_step(name, *seen[name])
        return torch.baddbmm(self._stack("output.bias").unsqueeze(1), state,
                             self._stack("output.weight").transpose(1, 2))

    @torch.no_grad()
    def sync(self):
        """Copy the stacked running statistics into the models' own buffers."""
        for (module_name, buffer_name), stacked in self._stacked.items():
            per_model = stacked.unflatten(-1, (len(self.models), self.hidden_size))
            for k, model in enumerate(self.models):
                model.get_buffer(f"{module_name}.{buffer_name}").copy_(per_model.select(-2, k))
