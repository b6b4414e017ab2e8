"""Bad and edge inputs for every public entry point of bnlib, each with its documented outcome.

The table is data: each :class:`EdgeCase` prepares fresh objects, calls one entry point and
states what must happen. Either an exception of a given type whose message matches a pattern
(then nothing may have changed: the arrays and tensors passed in, and for a layer its
parameters, running statistics and ``num_batches_tracked``), or a defined result that the
row's own check verifies, often against ``torch.nn``. ``tests/book/test_edge_cases.py``
turns every
row into a test; the book's appendix runs them again and shows the table.

>>> from bnlib.book.edge_cases import CASES, run
>>> outcome = run(CASES[0])   # raises AssertionError if the row's promise is broken
>>> outcome.actual            # the error message, or a summary of the defined result

Needs torch (the torch rows, and the references for the NumPy rows).
"""

import io
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np
import torch

from .. import numpy as bnp
from .. import torch as bnt

__all__ = ["CASES", "ENTRY_POINTS", "EdgeCase", "Outcome", "Trial", "cases_for",
           "float32_offset_errors", "float32_offset_errors_true", "run"]

NP_FORWARD = "bnp.batch_norm_forward"
NP_BACKWARD = "bnp.batch_norm_backward"
NP_INFERENCE = "bnp.batch_norm_inference"
NP_LAYER = "bnp.BatchNorm"
T_FUNCTION = "bnt.batch_norm"
T_MODULES = "bnt.BatchNorm1d/2d/3d"
ENTRY_POINTS = (NP_FORWARD, NP_BACKWARD, NP_INFERENCE, NP_LAYER, T_FUNCTION, T_MODULES)
"""The public entry points the table covers, in table order (the modules count as one)."""

C = 3  # channels of every prepared input
ONE_VALUE = "more than 1 value per channel"
F = torch.nn.functional


@dataclass(frozen=True)
class Trial:
    """One prepared call.

    Attributes:
        call: runs the entry point once and returns its result.
        state: returns copies (NumPy arrays) of everything an error must leave unchanged.
        check: for a defined result, ``check(result, before, after)`` asserts it and returns
            a one-line summary; ``before`` and ``after`` are ``state()`` around the call.
    """

    call: Callable[[], Any]
    state: Callable[[], dict]
    check: Optional[Callable[[Any, dict, dict], str]] = None


@dataclass(frozen=True)
class EdgeCase:
    """One row of the table: an input, its documented behaviour, and how to try it.

    Attributes:
        entry: the public entry point (one of :data:`ENTRY_POINTS`).
        name: a short name, unique for the entry point.
        given: the input, in words.
        expected: the documented behaviour, in words.
        setup: builds fresh objects and returns the :class:`Trial`.
        raises: the exception class expected, or None for a defined result.
        match: a regular expression the error message must contain.
        warns: the warning class expected (NumPy's floating-point warnings), or None for none.
    """

    entry: str
    name: str
    given: str
    expected: str
    setup: Callable[[], Trial]
    raises: Optional[type] = None
    match: str = ""
    warns: Optional[type] = None

    @property
    def id(self):
        return f"{self.entry}: {self.name}"


@dataclass(frozen=True)
class Outcome:
    """What running a row gave: ``actual`` is ``"Type: message"`` or the check's summary."""

    case: EdgeCase
    actual: str
    error: Optional[BaseException]


def run(case):
    """Run one row and verify its promise; return the :class:`Outcome`.

    Raises:
        AssertionError: the row's behaviour differs from the documented one (wrong exception
            type or message, state changed by an error, a failed check, a missing or an
            unexpected warning).
    """
    trial = case.setup()
    before = trial.state()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result, error = trial.call(), None
        except Exception as exc:  # any exception is an outcome, to compare with the row's
            result, error = None, exc
    after = trial.state()
    where = f"[{case.id}]"
    if case.raises is not None:
        _expect(error is not None, f"{where} expected {case.raises.__name__}, nothing was raised")
        _expect(isinstance(error, case.raises),
                f"{where} expected {case.raises.__name__}, got {type(error).__name__}: {error}")
        _expect(re.search(case.match, str(error)) is not None,
                f"{where} message {str(error)!r} does not match {case.match!r}")
        _expect(_same_state(before, after), f"{where} the error changed the state")
        actual = f"{type(error).__name__}: {error}"
    else:
        if error is not None:
            raise AssertionError(f"{where} expected a result, got {type(error).__name__}: "
                                 f"{error}") from error
        actual = trial.check(result, before, after)
    messages = [f"{w.category.__name__}: {w.message}" for w in caught]
    if case.warns is None:
        _expect(not messages, f"{where} unexpected warnings {messages}")
    else:
        _expect(any(issubclass(w.category, case.warns) for w in caught),
                f"{where} expected a {case.warns.__name__}, got {messages}")
        actual += " [" + "; ".join(sorted(set(messages))) + "]"
    return Outcome(case, actual, error)


def cases_for(entry):
    """The rows of one entry point, in table order."""
    return [c for c in CASES if c.entry == entry]


def _offset_data(offset, shape, seed, std=1.0, integers=False):
    """``offset + std * z`` drawn in float64 (z standard normal, rounded to whole numbers when
    ``integers``), and the same data stored in float32."""
    data = torch.randn(shape, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64) * std
    if integers:
        data = data.round()
    data = data + offset
    return data, data.float()


def _training_outputs(x):
    """Training-mode batch norm of float32 ``x`` by torch, bnlib.torch and bnlib.numpy."""
    return {"torch": F.batch_norm(x, None, None, training=True),
            "bnt": bnt.batch_norm(x, None, None, training=True),
            "bnp": torch.as_tensor(bnp.batch_norm_forward(x.numpy())[0])}


def _max_error(y, reference):
    return float((y.double() - reference).abs().max())


def float32_offset_errors(offset, shape=(32, 3, 16, 16), seed=0):
    """``max |y - y_float64|`` of float32 batch norm on N(offset, 1) data, for torch and bnlib.

    The reference normalizes the same float32 values in float64. Returns a dict with keys
    ``"torch"`` (``torch.nn.functional.batch_norm``), ``"bnt"`` and ``"bnp"``.
    """
    _, x = _offset_data(offset, shape, seed)
    ref = F.batch_norm(x.double(), None, None, training=True)
    return {name: _max_error(y, ref) for name, y in _training_outputs(x).items()}


def float32_offset_errors_true(offset, shape=(32, 3, 16, 16), seed=0, std=1.0, integers=False):
    """Errors of float32 batch norm measured against the data *before* rounding to float32.

    The data are ``offset + std * z`` with ``z`` standard normal, drawn in float64 (rounded to
    whole numbers when ``integers=True``), then stored in float32 as ``x``. The reference
    ``y_true`` normalizes the float64 data in float64 (training mode, eps 1e-5). Storing the
    data in float32 already moves each value by up to half a float32 spacing (about
    ``offset * 6e-8``), which no float32 computation can undo: ``"input"`` is that error alone,
    ``max |BN_64(x) - y_true|`` (0 for data that float32 holds exactly, e.g. integers below
    2**24).

    Returns a dict of ``max |y - y_true|`` over all elements, for:

    - ``"input"``: the float64 normalization of ``x`` (the input's own rounding);
    - ``"torch"``, ``"bnt"``, ``"bnp"``: training-mode float32 batch norm of ``x`` by
      ``torch.nn.functional.batch_norm``, ``bnlib.torch.batch_norm``,
      ``bnlib.numpy.batch_norm_forward``;
    - ``"torch_eval"``, ``"bnt_eval"``: eval mode, given running statistics equal to the exact
      mean and (biased) variance of the float64 data, rounded to float32 as a module stores
      them: torch's kernel computes ``s * x + (beta - s * mean)``, bnlib's
      ``s * (x - mean) + beta``;

    and torch's training-mode error split in two parts, both measured against ``BN_64(x)``
    (the same float32 values normalized in float64, so the input's rounding is excluded):

    - ``"torch_statistics"``: ``(x - m) * r`` computed in float64 with torch's own float32
      batch mean ``m`` and inverse standard deviation ``r`` (``torch.native_batch_norm``):
      what its statistics lose;
    - ``"torch_formula"``: torch's output minus that: what its output formula loses.
    """
    data, x = _offset_data(offset, shape, seed, std, integers)
    dims = [0] + list(range(2, len(shape)))
    view = [1, -1] + [1] * (len(shape) - 2)
    true = F.batch_norm(data, None, None, training=True)
    ref = F.batch_norm(x.double(), None, None, training=True)
    y_torch, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.1, 1e-5)
    y_stats = (x.double() - mean.double().view(view)) * invstd.double().view(view)
    running = (data.mean(dims).float(), data.var(dims, unbiased=False).float())
    errors = {"input": _max_error(ref, true)}
    errors.update({name: _max_error(y, true) for name, y in _training_outputs(x).items()})
    errors.update({"torch_eval": _max_error(F.batch_norm(x, *running, training=False), true),
                   "bnt_eval": _max_error(bnt.batch_norm(x, *running, training=False), true),
                   "torch_statistics": _max_error(y_stats, ref),
                   "torch_formula": _max_error(y_torch, y_stats)})
    return errors


# ---------------------------------------------------------------------------------------------
# Helpers: inputs, snapshots, checks.

def _expect(condition, message):
    if not condition:
        raise AssertionError(message)


def _x(shape=(8, C), dtype=np.float64, seed=0):
    """Normal data with mean 1 and std 2, reproducible."""
    return (np.random.default_rng(seed).normal(size=shape) * 2 + 1).astype(dtype)


def _t(shape=(8, C), dtype=torch.float32, seed=0):
    return torch.from_numpy(_x(shape, np.float64, seed)).to(dtype)


def _array(v):
    """A NumPy copy of an array, tensor (bfloat16 as float32, meta as its shape) or number."""
    if isinstance(v, torch.Tensor):
        if v.device.type == "meta":
            return np.array(f"meta {tuple(v.shape)}")
        v = v.detach().cpu()
        return (v.float() if v.dtype == torch.bfloat16 else v).numpy().copy()
    return np.array(v, copy=True)


def _snapshot(*args, **kwargs):
    """Copies of the array-like arguments: what a call must not modify."""
    named = {f"arg{i}": a for i, a in enumerate(args)} | kwargs
    return {k: _array(v) for k, v in named.items() if isinstance(v, (np.ndarray, torch.Tensor))}


def _same_state(before, after):
    if before.keys() != after.keys():
        return False
    for k in before:
        a, b = before[k], after[k]
        nan_ok = a.dtype.kind in "fc" and b.dtype.kind in "fc"
        if a.dtype != b.dtype or not np.array_equal(a, b, equal_nan=nan_ok):
            return False
    return True


def _call(fn, *args, check=None, **kwargs):
    """A trial of a function; its state is the arrays and tensors passed to it."""
    return Trial(lambda: fn(*args, **kwargs), lambda: _snapshot(*args, **kwargs), check)


def _module_state(module):
    """A copy of a layer's parameters and buffers (NumPy layer or torch module)."""
    return {k: _array(v) for k, v in module.state_dict().items()}


def _on(module, call, check=None):
    """A trial of a call on a layer; its state is the layer's state_dict."""
    return Trial(call, lambda: _module_state(module), check)


def _nothing():
    return {}


def _np(v):
    return _array(v).astype(np.float64)


def _close(a, b, tol):
    """Same shape, NaN and inf in the same places, |a - b| <= tol * max(1, |b|) elsewhere."""
    a, b = _np(a), _np(b)
    if a.shape != b.shape or not np.array_equal(np.isnan(a), np.isnan(b)):
        return False
    finite = np.isfinite(a) & np.isfinite(b)
    a_f, b_f = a[finite], b[finite]
    return bool(np.array_equal(a[~finite], b[~finite], equal_nan=True)) and bool(
        np.all(np.abs(a_f - b_f) <= tol * np.maximum(1.0, np.abs(b_f))))


def _torch_train(x, **kw):
    """torch.nn.functional.batch_norm in training mode, float64, with fresh running stats."""
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    c = xt.shape[1]
    mean, var = torch.zeros(c, dtype=torch.float64), torch.ones(c, dtype=torch.float64)
    y = F.batch_norm(xt, mean, var, training=True, **kw)
    return y, mean, var


def _fmt(v):
    return "nan" if np.isnan(v) else ("inf" if np.isposinf(v) else f"{v:.4g}")


def _channels(v):
    """A per-channel vector as text: [0.1, nan, inf]."""
    return "[" + ", ".join(_fmt(float(e)) for e in _np(v)) + "]"


def _nan_channels(y):
    y = _np(y)
    axes = (0,) + tuple(range(2, y.ndim))
    return [int(c) for c in np.flatnonzero(np.isnan(y).all(axis=axes))]


def _with(x, index, value):
    x = np.array(x, copy=True)
    x[index] = value
    return x


def _trained_layer(**kw):
    layer = bnp.BatchNorm(C, **kw)
    layer(_x((8, C), seed=1))
    return layer


def _trained_module(cls=None, shape=(4, C, 2, 2), **kw):
    module = (cls or bnt.BatchNorm2d)(C, **kw)
    module(_t(shape, seed=1, dtype=kw.get("dtype", torch.float32)))
    return module


def _tset(t, index, value):
    """t with t[index] = value (in place), for inputs with a NaN or an inf."""
    t[index] = value
    return t


# ---------------------------------------------------------------------------------------------
# bnp.batch_norm_forward


def _fwd(x, *args, check=None, **kwargs):
    return _call(bnp.batch_norm_forward, x, *args, check=check, **kwargs)


def _fwd_matches_torch(x, tol=1e-12):
    def check(result, before, after):
        y, cache = result
        ref, _, _ = _torch_train(x)
        _expect(_close(y, ref, tol), "y differs from torch.nn")
        return f"y {y.shape} {y.dtype}, equal to torch.nn within {tol:g}"
    return _fwd(x, check=check)


def _fwd_empty(shape):
    def check(result, before, after):
        y, cache = result
        _expect(y.shape == shape and y.dtype == np.float64, f"y has shape {y.shape}")
        _expect(np.isnan(cache.mean).all() and cache.mean.shape == (shape[1],), "mean not NaN")
        return f"y {y.shape}; batch mean and var NaN per channel (no values)"
    return _fwd(np.ones(shape), check=check)


def _fwd_mixed(x_dtype, p_dtype):
    x, gamma, beta = _x(dtype=x_dtype), np.full(C, 1.5, p_dtype), np.full(C, 0.25, p_dtype)

    def check(result, before, after):
        y, _ = result
        same, _ = bnp.batch_norm_forward(x, gamma.astype(x_dtype), beta.astype(x_dtype))
        _expect(y.dtype == x_dtype and np.array_equal(y, same), "not computed in x's dtype")
        return f"y {y.dtype}, bitwise equal to gamma and beta cast to {np.dtype(x_dtype).name}"
    return _fwd(x, gamma, beta, check=check)


def _fwd_float16():
    x = _x((64, C), np.float16)

    def check(result, before, after):
        y, cache = result
        ref, _, _ = _torch_train(x.astype(np.float64))
        _expect(y.dtype == np.float16 and cache.mean.dtype == np.float32, "dtypes")
        _expect(_close(y, ref, 4e-3), "float16 output too far from float64")
        return "y float16 (within 4e-3 of float64); mean and var float32"
    return _fwd(x, check=check)


def _fwd_nonfinite(values, mean_text):
    x = _x()
    for index, v in values:
        x[index, 1] = v

    def check(result, before, after):
        y, cache = result
        ref, _, _ = _torch_train(np.delete(x, 1, axis=1))
        _expect(_nan_channels(y) == [1], f"NaN channels {_nan_channels(y)}")
        _expect(_close(np.delete(y, 1, axis=1), ref, 1e-12), "other channels changed")
        _expect(_channels(cache.mean[1:2]) == f"[{mean_text}]", f"mean {cache.mean[1]}")
        _expect(np.isnan(cache.var[1]), "var of the channel is not NaN")
        return (f"channel 1 of y all NaN, mean {_channels(cache.mean[1:2])}, var [nan]; "
                f"channels 0 and 2 as torch.nn")
    return _fwd(x, check=check)


def _fwd_constant_1e8():
    x = np.full((1000, 1), 1e8, np.float32)

    def check(result, before, after):
        y, _ = result
        _expect(np.abs(y).max() == 0, "not exactly 0")
        return "y exactly 0 (not so with torch.nn's float32 CPU kernel: its mean is off)"
    return _fwd(x, check=check)


def _fwd_offset_1e8():
    x = (np.random.default_rng(0).normal(size=(256, C)) + 1e8).astype(np.float32)

    def check(result, before, after):
        y, _ = result
        ref, _, _ = _torch_train(x.astype(np.float64))
        err = float(np.abs(y.astype(np.float64) - ref.numpy()).max())
        _expect(err < 1e-4, f"error {err}")
        return "max |y - float64 reference| < 1e-4"
    return _fwd(x, check=check)


def _fwd_overflow():
    x = (np.random.default_rng(0).normal(size=(64, C)) * 1e20).astype(np.float32)

    def check(result, before, after):
        y, cache = result
        _expect(np.isinf(cache.var).all() and np.all(y == 0), "variance did not overflow")
        ref, _, _ = _torch_train(x.astype(np.float64))
        theirs = F.batch_norm(torch.from_numpy(x), None, None, training=True).double()
        _expect(float((theirs - ref).abs().max()) > 1, "torch.nn did not fail too")
        return "var inf, y all 0; torch.nn float32 is off by more than 1 too"
    return _fwd(x, check=check)


def _fwd_like(x, reference_x):
    def check(result, before, after):
        y, _ = result
        ref, _ = bnp.batch_norm_forward(np.ascontiguousarray(reference_x, dtype=np.float64))
        _expect(isinstance(y, np.ndarray) and _close(y, ref, 1e-12), "differs")
        return f"a NumPy array {y.shape}, equal to the same values as a C-contiguous array"
    return _fwd(x, check=check)


def _fwd_readonly():
    x = _x()
    x.flags.writeable = False

    def check(result, before, after):
        _expect(_same_state(before, after), "x changed")
        return "y computed; x untouched (the function never writes to its input)"
    return _fwd(x, check=check)


def _fwd_numpy_scalar_eps():
    def check(result, before, after):
        y, _ = result
        ref, _ = bnp.batch_norm_forward(_x(), eps=1e-3)
        _expect(np.allclose(y, ref, rtol=0, atol=1e-9), "eps not applied")
        return "accepted; the same as eps=1e-3 (a NumPy scalar is a number)"
    return _fwd(_x(), eps=np.float32(1e-3), check=check)


_FORWARD = [
    ("rank 1", "x of shape (3,)", "ValueError: (N, C, *) input needs at least 2 dimensions",
     lambda: _fwd(np.ones(3)), ValueError, "at least 2 dimensions"),
    ("rank 0", "x = np.float64(2.0)", "ValueError: at least 2 dimensions",
     lambda: _fwd(np.float64(2.0)), ValueError, "got 0D input"),
    ("one value per channel", "x of shape (1, 3)",
     "ValueError: more than 1 value per channel when training (the variance would be 0)",
     lambda: _fwd(np.ones((1, C))), ValueError, ONE_VALUE),
    ("one value per channel, 4-D", "x of shape (1, 3, 1, 1)", "ValueError: as above",
     lambda: _fwd(np.ones((1, C, 1, 1))), ValueError, ONE_VALUE),
    ("integer x", "x of dtype int64", "TypeError naming the dtype",
     lambda: _fwd(np.ones((4, C), np.int64)), TypeError, "floating-point array, got dtype int64"),
    ("boolean x", "x of dtype bool", "TypeError naming the dtype",
     lambda: _fwd(np.ones((4, C), bool)), TypeError, "got dtype bool"),
    ("complex x", "x of dtype complex128", "TypeError naming the dtype",
     lambda: _fwd(np.ones((4, C), complex)), TypeError, "got dtype complex128"),
    ("x is None", "x = None", "TypeError: x must be a floating-point array, got None",
     lambda: _fwd(None), TypeError, "x must be a floating-point array, got None"),
    ("masked array", "x a np.ma.MaskedArray", "TypeError: the mask would be silently ignored",
     lambda: _fwd(np.ma.masked_array(_x(), mask=_x() > 2)), TypeError, "masked array"),
    ("gamma too short", "gamma of shape (2,)", "ValueError: gamma must have shape (3,)",
     lambda: _fwd(_x(), np.ones(2)), ValueError, r"gamma must have shape \(3,\).*got shape \(2,\)"),
    ("beta of shape (3, 1)", "beta of shape (3, 1)", "ValueError: no broadcasting of parameters",
     lambda: _fwd(_x(), None, np.zeros((C, 1))), ValueError, r"beta must have shape \(3,\)"),
    ("gamma a scalar", "gamma = 2.0", "ValueError: gamma must have shape (3,)",
     lambda: _fwd(_x(), 2.0), ValueError, r"gamma must have shape \(3,\).*got shape \(\)"),
    ("integer gamma", "gamma of dtype int64", "TypeError naming gamma and its dtype",
     lambda: _fwd(_x(), np.ones(C, np.int64)), TypeError, "gamma must be a floating-point"),
    ("eps = 0", "eps=0", "ValueError: eps must be a finite number > 0",
     lambda: _fwd(_x(), eps=0), ValueError, "eps must be a finite number > 0, got 0"),
    ("eps < 0", "eps=-1e-5", "ValueError naming the value",
     lambda: _fwd(_x(), eps=-1e-5), ValueError, "got -1e-05"),
    ("eps = nan", "eps=float('nan')", "ValueError naming the value",
     lambda: _fwd(_x(), eps=float("nan")), ValueError, "got nan"),
    ("eps = inf", "eps=float('inf')", "ValueError naming the value",
     lambda: _fwd(_x(), eps=float("inf")), ValueError, "got inf"),
    ("eps a string", "eps='1e-5'", "TypeError: eps must be a positive float",
     lambda: _fwd(_x(), eps="1e-5"), TypeError, "eps must be a positive float, got str"),
    ("eps = True", "eps=True", "TypeError (a bool is not a number here)",
     lambda: _fwd(_x(), eps=True), TypeError, "got bool"),
    ("eps below float32's range", "float32 x, eps=1e-50",
     "ValueError: eps rounds to 0 in float32 (a constant channel would give 0/0)",
     lambda: _fwd(_x(dtype=np.float32), eps=1e-50), ValueError, "rounds to 0 in float32"),
    ("two values per channel", "x of shape (1, 3, 2)", "normalized (2 values per channel)",
     lambda: _fwd_matches_torch(_x((1, C, 2)))),
    ("empty batch", "x of shape (0, 3)", "empty y; batch statistics NaN (as torch)",
     lambda: _fwd_empty((0, C))),
    ("empty spatial dim", "x of shape (4, 3, 0)", "empty y",
     lambda: _fwd_empty((4, C, 0))),
    ("C = 0", "x of shape (4, 0)", "empty y of shape (4, 0)",
     lambda: _fwd_empty((4, 0))),
    ("list of floats", "x a nested list of floats", "treated as np.asarray(x)",
     lambda: _fwd_like(_x().tolist(), _x())),
    ("torch tensor", "x a CPU torch.Tensor (float64)", "treated as np.asarray(x); y is NumPy",
     lambda: _fwd_like(torch.from_numpy(_x()), _x())),
    ("transposed x", "x = a.T, not C-contiguous", "the same result as a contiguous copy",
     lambda: _fwd_like(_x((C, 8)).T, _x((C, 8)).T)),
    ("read-only x", "x with writeable=False", "works; x is never written to",
     _fwd_readonly),
    ("float32 x, float64 gamma", "float32 x, float64 gamma and beta",
     "defined: computed in float32 with gamma, beta cast; y float32",
     lambda: _fwd_mixed(np.float32, np.float64)),
    ("float64 x, float32 gamma", "float64 x, float32 gamma and beta",
     "defined: computed in float64; y float64", lambda: _fwd_mixed(np.float64, np.float32)),
    ("float16 x", "x of dtype float16", "statistics in float32; y float16", _fwd_float16),
    ("NumPy scalar eps", "eps=np.float32(1e-3)", "accepted", _fwd_numpy_scalar_eps),
    ("NaN in a channel", "one NaN in channel 1",
     "channel 1 of y NaN, its mean and var NaN; other channels unaffected (as torch)",
     lambda: _fwd_nonfinite([(2, np.nan)], "nan")),
    ("inf in a channel", "one +inf in channel 1",
     "channel 1 of y NaN, mean inf, var NaN (as torch); NumPy's RuntimeWarning",
     lambda: _fwd_nonfinite([(2, np.inf)], "inf"), None, "", RuntimeWarning),
    ("inf as first value", "+inf as the first value of channel 1",
     "as above (the shift by the first value skips non-finite values)",
     lambda: _fwd_nonfinite([(0, np.inf)], "inf"), None, "", RuntimeWarning),
    ("+inf and -inf", "+inf and -inf in channel 1",
     "channel 1 NaN, mean NaN, var NaN (no warning: the sums are taken by np.einsum, which "
     "does not report floating-point errors)",
     lambda: _fwd_nonfinite([(2, np.inf), (5, -np.inf)], "nan")),
    ("constant 1e8 channel", "float32 x, 1000 values all 1e8", "y exactly 0",
     _fwd_constant_1e8),
    ("offset 1e8", "float32 x = 1e8 + N(0, 1)", "within 1e-4 of the float64 result",
     _fwd_offset_1e8),
    ("variance overflow", "float32 x with std 1e20",
     "squares overflow float32: var inf, y 0, no warning (np.einsum does not report the "
     "overflow; torch.nn fails too)",
     _fwd_overflow),
]


# ---------------------------------------------------------------------------------------------
# bnp.batch_norm_backward


def _cache(x=None, gamma=True, dtype=np.float64):
    x = _x(dtype=dtype) if x is None else x
    g = np.array([1.5, -0.5, 2.0], dtype) if gamma else None
    return bnp.batch_norm_forward(x, g, None)[1]


def _inference_cache(dtype=np.float64):
    return bnp.batch_norm_inference(_x(dtype=dtype), np.zeros(C), np.full(C, 4.0),
                                    np.array([1.5, -0.5, 2.0]))[1]


def _bwd(dy, cache, check=None):
    return _call(bnp.batch_norm_backward, dy, cache, check=check)


def _torch_grads(x, dy, gamma):
    """dx, dgamma, dbeta of torch.nn.functional.batch_norm (training, float64) by autograd."""
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    g = torch.tensor(np.asarray(gamma, np.float64), requires_grad=True)
    b = torch.zeros(xt.shape[1], dtype=torch.float64, requires_grad=True)
    F.batch_norm(xt, None, None, g, b, training=True).backward(torch.tensor(np.asarray(dy)))
    return xt.grad, g.grad, b.grad


def _bwd_matches_torch(x, dy, dy_text):
    gamma = np.array([1.5, -0.5, 2.0])
    cache = bnp.batch_norm_forward(x, gamma, None)[1]

    def check(result, before, after):
        ref = _torch_grads(x, np.asarray(dy, np.float64), gamma)
        for name, got, want in zip(("dx", "dgamma", "dbeta"), result, ref):
            _expect(_close(got, want, 1e-10), f"{name} differs from torch.autograd")
        return f"dx, dgamma, dbeta equal to torch.autograd within 1e-10 ({dy_text})"
    return _bwd(dy, cache, check)


def _bwd_dtype(x_dtype, dy_dtype, tol):
    x = _x(dtype=x_dtype)
    dy = _x(seed=3, dtype=dy_dtype)
    cache = _cache(x, dtype=x_dtype)

    def check(result, before, after):
        dx, dgamma, dbeta = result
        ref = _torch_grads(x.astype(np.float64), dy.astype(np.float64), [1.5, -0.5, 2.0])
        _expect(dx.dtype == x_dtype, f"dx dtype {dx.dtype}")
        _expect(_close(dx, ref[0], tol), "dx too far from float64 autograd")
        return (f"dx {dx.dtype} (the dtype of x), within {tol:g} of float64 autograd; "
                f"dgamma {dgamma.dtype}")
    return _bwd(dy, cache, check)


def _bwd_small_dx(dy, what):
    x = _x()
    cache = _cache(x)

    def check(result, before, after):
        dx, dgamma, dbeta = result
        _expect(np.abs(dx).max() < 1e-12, f"max |dx| = {np.abs(dx).max()}")
        return f"|dx| < 1e-12 ({what})"
    return _bwd(dy, cache, check)


def _bwd_nan(cache_kind):
    dy = _with(_x(seed=3), (2, 1), np.nan)
    cache = _cache() if cache_kind == "training" else _inference_cache()

    def check(result, before, after):
        dx, dgamma, dbeta = result
        nan = np.isnan(dx)
        if cache_kind == "training":
            _expect(_nan_channels(dx) == [1] and nan.sum() == dx.shape[0], "NaN pattern")
        else:
            _expect(nan.sum() == 1 and nan[2, 1], "NaN pattern")
        _expect(np.flatnonzero(np.isnan(dgamma)).tolist() == [1], "dgamma NaN pattern")
        _expect(np.flatnonzero(np.isnan(dbeta)).tolist() == [1], "dbeta NaN pattern")
        where = "channel 1 of dx" if cache_kind == "training" else "dx[2, 1] only"
        return f"{where} NaN; dgamma and dbeta NaN for channel 1 only"
    return _bwd(dy, cache, check)


def _bwd_empty(shape):
    x = np.ones(shape)
    cache = bnp.batch_norm_forward(x, np.ones(shape[1]), None)[1]

    def check(result, before, after):
        dx, dgamma, dbeta = result
        _expect(dx.shape == shape and dgamma.shape == (shape[1],), "shapes")
        _expect(not dgamma.any() and not dbeta.any(), "not zero")
        return f"dx {dx.shape}; dgamma and dbeta {dgamma.shape}, all 0 (sums over no values)"
    return _bwd(np.ones(shape), cache, check)


def _bwd_inference():
    dy = _x(seed=3)
    cache = _inference_cache()

    def check(result, before, after):
        dx, _, _ = result
        _expect(np.allclose(dx, dy * np.array([1.5, -0.5, 2.0]) / np.sqrt(4.0 + 1e-5),
                            rtol=1e-14, atol=0), "dx is not dy * gamma / sqrt(var + eps)")
        return "dx = dy * gamma / sqrt(var + eps) (fixed statistics: no mean terms)"
    return _bwd(dy, cache, check)


def _bwd_no_gamma():
    x = _x()
    dy = _x(seed=3)
    cache = _cache(x, gamma=False)

    def check(result, before, after):
        ref = _torch_grads(x, dy, np.ones(C))
        for name, got, want in zip(("dx", "dgamma", "dbeta"), result, ref):
            _expect(_close(got, want, 1e-10), f"{name} differs")
        return "dgamma and dbeta returned: the gradients for gamma = 1, beta = 0 (as autograd)"
    return _bwd(dy, cache, check)


def _bwd_readonly():
    dy = _x(seed=3)
    dy.flags.writeable = False

    def check(result, before, after):
        _expect(_same_state(before, after), "dy changed")
        return "dx computed; dy untouched"
    return _bwd(dy, _cache(), check)


_BACKWARD = [
    ("dy of another shape", "x (8, 3), dy (8, 2)", "ValueError naming both shapes",
     lambda: _bwd(np.ones((8, 2)), _cache()), ValueError,
     r"dy must have the shape of x \(8, 3\), got \(8, 2\)"),
    ("dy transposed", "x (8, 3), dy (3, 8)", "ValueError (no broadcasting, no transposing)",
     lambda: _bwd(np.ones((C, 8)), _cache()), ValueError, r"got \(3, 8\)"),
    ("dy rank 1", "dy of shape (24,)", "ValueError naming both shapes",
     lambda: _bwd(np.ones(24), _cache()), ValueError, r"got \(24,\)"),
    ("dy a scalar", "dy = 1.0", "ValueError naming both shapes",
     lambda: _bwd(1.0, _cache()), ValueError, r"got \(\)"),
    ("integer dy", "dy of dtype int64", "TypeError naming the dtype",
     lambda: _bwd(np.ones((8, C), np.int64), _cache()), TypeError,
     "dy must be a floating-point array, got dtype int64"),
    ("boolean dy", "dy of dtype bool", "TypeError naming the dtype",
     lambda: _bwd(np.ones((8, C), bool), _cache()), TypeError, "got dtype bool"),
    ("complex dy", "dy of dtype complex128", "TypeError naming the dtype",
     lambda: _bwd(np.ones((8, C), complex), _cache()), TypeError, "got dtype complex128"),
    ("dy is None", "dy = None", "TypeError: dy must be a floating-point array, got None",
     lambda: _bwd(None, _cache()), TypeError, "got None"),
    ("masked dy", "dy a np.ma.MaskedArray", "TypeError: the mask would be ignored",
     lambda: _bwd(np.ma.masked_array(np.ones((8, C))), _cache()), TypeError, "masked array"),
    ("(y, cache) as cache", "cache = batch_norm_forward(x) (the whole pair)",
     "TypeError: cache must be the BatchNormCache ... (the whole (y, cache) pair?)",
     lambda: _bwd(np.ones((8, C)), bnp.batch_norm_forward(_x())), TypeError,
     r"the whole \(y, cache\) pair"),
    ("cache is None", "cache = None", "TypeError naming the type",
     lambda: _bwd(np.ones((8, C)), None), TypeError, "got NoneType"),
    ("cache a dict", "cache = dict(cache._asdict())", "TypeError naming the type",
     lambda: _bwd(np.ones((8, C)), dict(_cache()._asdict())), TypeError, "got dict"),
    ("random dy", "dy ~ N(1, 2), gamma = (1.5, -0.5, 2)", "the closed form, = autograd",
     lambda: _bwd_matches_torch(_x(), _x(seed=3), "float64")),
    ("two values per channel", "x and dy of shape (1, 3, 2)", "the closed form, = autograd",
     lambda: _bwd_matches_torch(_x((1, C, 2)), _x((1, C, 2), seed=3), "m = 2")),
    ("list of floats", "dy a nested list of floats", "treated as np.asarray(dy)",
     lambda: _bwd_matches_torch(_x(), _x(seed=3).tolist(), "dy as a list")),
    ("transposed dy", "dy = a.T, not C-contiguous", "the same as a contiguous copy",
     lambda: _bwd_matches_torch(_x(), _x((C, 8), seed=3).T, "non-contiguous dy")),
    ("read-only dy", "dy with writeable=False", "works; dy is never written to",
     _bwd_readonly),
    ("float64 x, float32 dy", "float64 forward, float32 dy",
     "computed in the cache's float64; dx float64", lambda: _bwd_dtype(np.float64, np.float32, 1e-6)),
    ("float32 x, float64 dy", "float32 forward, float64 dy",
     "computed in float32; dx float32", lambda: _bwd_dtype(np.float32, np.float64, 1e-5)),
    ("float16 x and dy", "float16 forward and dy", "computed in float32; dx float16",
     lambda: _bwd_dtype(np.float16, np.float16, 2e-2)),
    ("dy constant per channel", "dy = (1, 2, 3) on every row",
     "dx = 0: a shift of y is absorbed by the mean", lambda: _bwd_small_dx(
         np.tile([1.0, 2.0, 3.0], (8, 1)), "constant dy")),
    ("dy = 0", "dy all zero", "dx = 0", lambda: _bwd_small_dx(np.zeros((8, C)), "dy = 0")),
    ("NaN in dy (training)", "one NaN in channel 1 of dy",
     "channel 1 of dx NaN (the mean terms spread it), dgamma[1], dbeta[1] NaN",
     lambda: _bwd_nan("training")),
    ("NaN in dy (inference)", "one NaN in dy, cache of batch_norm_inference",
     "only that element of dx NaN", lambda: _bwd_nan("inference")),
    ("empty batch", "x and dy of shape (0, 3)", "empty dx; dgamma = dbeta = 0",
     lambda: _bwd_empty((0, C))),
    ("C = 0", "x and dy of shape (4, 0)", "dx (4, 0); dgamma, dbeta of shape (0,)",
     lambda: _bwd_empty((4, 0))),
    ("inference cache", "cache of batch_norm_inference", "dx = dy * gamma / sqrt(var + eps)",
     _bwd_inference),
    ("no gamma", "cache of a forward with gamma=None", "dgamma, dbeta still returned",
     _bwd_no_gamma),
]


# ---------------------------------------------------------------------------------------------
# bnp.batch_norm_inference


MEAN, VAR = np.array([0.5, -1.0, 2.0]), np.array([4.0, 0.25, 1.0])


def _inf(x, mean=MEAN, var=VAR, *args, check=None, **kwargs):
    return _call(bnp.batch_norm_inference, x, mean, var, *args, check=check, **kwargs)


def _torch_eval(x, mean, var, eps=1e-5):
    return F.batch_norm(torch.as_tensor(np.asarray(x, np.float64)),
                        torch.as_tensor(np.asarray(mean, np.float64)),
                        torch.as_tensor(np.asarray(var, np.float64)), training=False, eps=eps)


def _inf_matches_torch(x, mean=MEAN, var=VAR, tol=1e-12):
    def check(result, before, after):
        y, _ = result
        _expect(y.dtype == np.asarray(x).dtype, f"y dtype {y.dtype}")
        _expect(_close(y, _torch_eval(np.asarray(x, np.float64), mean, var), tol), "differs")
        return f"y {y.shape} {y.dtype}, equal to torch.nn eval within {tol:g}"
    return _inf(x, mean, var, check=check)


def _inf_nonfinite(index, value):
    x = _with(_x(), index, value)

    def check(result, before, after):
        y, _ = result
        bad = ~np.isfinite(y)
        _expect(bad.sum() == 1 and bad[index], "more than one element affected")
        _expect(_close(y, _torch_eval(x, MEAN, VAR), 1e-12), "differs from torch.nn")
        return f"y{list(index)} = {_fmt(float(y[index]))}, every other element finite (= torch.nn)"
    return _inf(x, check=check)


def _inf_nan_var():
    var = _with(VAR, 1, np.nan)

    def check(result, before, after):
        y, _ = result
        _expect(_nan_channels(y) == [1] and np.isfinite(np.delete(y, 1, axis=1)).all(), "NaN")
        return "channel 1 of y NaN, other channels normal"
    return _inf(_x(), MEAN, var, check=check)


_INFERENCE = [
    ("rank 1", "x of shape (3,)", "ValueError: at least 2 dimensions",
     lambda: _inf(np.ones(3)), ValueError, "at least 2 dimensions"),
    ("integer x", "x of dtype int64", "TypeError naming the dtype",
     lambda: _inf(np.ones((4, C), np.int64)), TypeError, "got dtype int64"),
    ("boolean x", "x of dtype bool", "TypeError naming the dtype",
     lambda: _inf(np.ones((4, C), bool)), TypeError, "got dtype bool"),
    ("x is None", "x = None", "TypeError", lambda: _inf(None), TypeError, "x must be .* got None"),
    ("masked x", "x a np.ma.MaskedArray", "TypeError: the mask would be ignored",
     lambda: _inf(np.ma.masked_array(_x())), TypeError, "masked array"),
    ("mean too long", "mean of shape (4,)", "ValueError: mean must have shape (3,)",
     lambda: _inf(_x(), np.zeros(4)), ValueError, r"mean must have shape \(3,\)"),
    ("var of shape (3, 1)", "var of shape (3, 1)", "ValueError: var must have shape (3,)",
     lambda: _inf(_x(), MEAN, np.ones((C, 1))), ValueError, r"var must have shape \(3,\)"),
    ("mean is None", "mean = None", "TypeError: mean must be a floating-point array, got None",
     lambda: _inf(_x(), None), TypeError, "mean must be a floating-point array, got None"),
    ("var is None", "var = None", "TypeError naming var",
     lambda: _inf(_x(), MEAN, None), TypeError, "var must be a floating-point array, got None"),
    ("integer mean", "mean of dtype int64", "TypeError naming mean and the dtype",
     lambda: _inf(_x(), np.zeros(C, np.int64)), TypeError, "mean must be a floating-point"),
    ("negative var", "var = (4, -1, 1)", "ValueError naming the channel and the value",
     lambda: _inf(_x(), MEAN, np.array([4.0, -1.0, 1.0])), ValueError,
     r"var must be >= 0, got -1.0 for channel 1"),
    ("eps = 0", "eps=0", "ValueError: eps must be a finite number > 0",
     lambda: _inf(_x(), eps=0), ValueError, "eps must be a finite number > 0"),
    ("eps a string", "eps='0.1'", "TypeError", lambda: _inf(_x(), eps="0.1"), TypeError,
     "eps must be a positive float, got str"),
    ("eps below float32's range", "float32 x, eps=1e-50", "ValueError: eps rounds to 0",
     lambda: _inf(_x(dtype=np.float32), eps=1e-50), ValueError, "rounds to 0 in float32"),
    ("gamma too short", "gamma of shape (2,)", "ValueError: gamma must have shape (3,)",
     lambda: _inf(_x(), MEAN, VAR, np.ones(2)), ValueError, r"gamma must have shape \(3,\)"),
    ("integer beta", "beta of dtype int64", "TypeError naming beta",
     lambda: _inf(_x(), MEAN, VAR, None, np.zeros(C, np.int64)), TypeError,
     "beta must be a floating-point"),
    ("one value per channel", "x of shape (1, 3)", "fine: nothing depends on the batch",
     lambda: _inf_matches_torch(_x((1, C)))),
    ("empty batch", "x of shape (0, 3)", "empty y", lambda: _inf_matches_torch(np.ones((0, C)))),
    ("C = 0", "x (4, 0), mean and var (0,)", "empty y of shape (4, 0)",
     lambda: _inf_matches_torch(np.ones((4, 0)), np.zeros(0), np.ones(0))),
    ("var = 0", "var = (0, 0, 0)", "finite: y = (x - mean) / sqrt(eps)",
     lambda: _inf_matches_torch(_x(), MEAN, np.zeros(C), tol=1e-9)),
    ("NaN var", "var[1] = NaN", "channel 1 of y NaN, others normal", _inf_nan_var),
    ("NaN in x", "one NaN in x", "only that element of y NaN (eval is per element)",
     lambda: _inf_nonfinite((2, 1), np.nan)),
    ("inf in x", "one +inf in x", "only that element of y inf, no warning",
     lambda: _inf_nonfinite((2, 1), np.inf)),
    ("float32 x, float64 statistics", "float32 x, float64 mean and var",
     "defined: computed in float32; y float32",
     lambda: _inf_matches_torch(_x(dtype=np.float32), tol=1e-6)),
    ("float16 x", "x of dtype float16", "computed in float32; y float16",
     lambda: _inf_matches_torch(_x(dtype=np.float16), tol=4e-3)),
    ("offset 1e8 in float32", "float32 x = 1e8 + N(0, 1), mean = 1e8",
     "(x - mean) first: within 1e-6 of float64", lambda: _inf_matches_torch(
         (_x() + 1e8).astype(np.float32), np.full(C, 1e8), np.ones(C), tol=1e-6)),
    ("transposed x", "x = a.T, not C-contiguous", "the same as a contiguous copy",
     lambda: _inf_matches_torch(_x((C, 8)).T)),
    ("list of floats", "x a nested list of floats", "treated as np.asarray(x)",
     lambda: _inf_matches_torch(_x().tolist())),
]


# ---------------------------------------------------------------------------------------------
# bnp.BatchNorm


def _build(factory, *args, **kwargs):
    """A trial of a constructor: there is no object yet, so no state to protect."""
    def check(result, before, after):
        return f"built: {result!r}"
    return Trial(lambda: factory(*args, **kwargs), _nothing, check)


def _layer_call(layer, x, check=None):
    return _on(layer, lambda: layer(x), check)


def _layer_tampered(attribute, value, eval_mode=False):
    layer = _trained_layer()
    if eval_mode:
        layer.eval()
    setattr(layer, attribute, value)
    return _layer_call(layer, _x())


def _layer_vs_torch(x, steps=1, eval_mode=False, **kw):
    """The layer and torch.nn.BatchNorm (float64) on the same input; compare y and the state."""
    ours = bnp.BatchNorm(C, **kw)
    theirs = torch.nn.BatchNorm1d(C, dtype=torch.float64, **kw)
    for i in range(steps - 1):
        batch = _x(seed=10 + i)
        ours(batch)
        theirs(torch.from_numpy(batch))
    if eval_mode:
        ours.eval()
        theirs.eval()

    def check(result, before, after):
        y = theirs(torch.as_tensor(np.asarray(x, np.float64)))
        _expect(_close(result, y, 1e-12), "y differs from torch.nn")
        for k, v in theirs.state_dict().items():
            _expect(_close(after[k], v, 1e-12), f"{k} differs from torch.nn")
        count = int(after["num_batches_tracked"])
        return (f"y {np.shape(result)}; running_mean {_channels(after['running_mean'])}, "
                f"running_var {_channels(after['running_var'])}, num_batches_tracked {count} "
                f"(all = torch.nn)")
    return _layer_call(ours, x, check)


def _layer_dtype(x_dtype):
    layer = _trained_layer()
    x = _x(dtype=x_dtype)

    def check(result, before, after):
        _expect(result.dtype == x_dtype, f"y dtype {result.dtype}")
        _expect(all(v.dtype == np.float64 for k, v in after.items() if k != "num_batches_tracked"),
                "buffers changed dtype")
        _expect(not np.array_equal(before["running_mean"], after["running_mean"]), "no update")
        return f"y {result.dtype}; buffers stay float64 and are updated"
    return _layer_call(layer, x, check)


def _layer_momentum_zero():
    layer = _trained_layer(momentum=0.0)

    def check(result, before, after):
        _expect(np.array_equal(before["running_mean"], after["running_mean"]), "changed")
        _expect(int(after["num_batches_tracked"]) == int(before["num_batches_tracked"]) + 1,
                "not counted")
        return "running statistics unchanged, num_batches_tracked + 1"
    return _layer_call(layer, _x(), check)


def _layer_backward_before_forward():
    layer = bnp.BatchNorm(C)
    return _on(layer, lambda: layer.backward(np.ones((8, C))))


def _layer_backward_bad_dy():
    layer = _trained_layer()
    return _on(layer, lambda: layer.backward(np.ones((8, 2))))


def _torch_state(**changes):
    state = torch.nn.BatchNorm1d(C, dtype=torch.float64).state_dict()
    state.update(changes)
    return {k: v for k, v in state.items() if v is not None}


def _layer_load(state, check=None):
    layer = _trained_layer()
    return _on(layer, lambda: layer.load_state_dict(state), check)


def _layer_load_torch():
    theirs = torch.nn.BatchNorm1d(C, dtype=torch.float64)
    theirs(_t(dtype=torch.float64))
    state = theirs.state_dict()

    def check(result, before, after):
        for k, v in state.items():
            _expect(np.array_equal(after[k], v.numpy()), f"{k} differs")
        return "loaded; every buffer equal to torch.nn's (tensors are converted)"
    return _layer_load(state, check)


def _layer_load_old():
    state = _torch_state(num_batches_tracked=None)

    def check(result, before, after):
        _expect(int(after["num_batches_tracked"]) == int(before["num_batches_tracked"]) == 1,
                "count not kept")
        return "loaded; num_batches_tracked keeps its value 1 (as torch.nn)"
    return _layer_load(state, check)


def _layer_savez():
    layer = _trained_layer(dtype=np.float32)
    buffer = io.BytesIO()
    np.savez(buffer, **layer.state_dict())
    buffer.seek(0)
    fresh = bnp.BatchNorm(C, dtype=np.float32)

    def load():
        with np.load(buffer, allow_pickle=False) as saved:
            fresh.load_state_dict(saved)

    def check(result, before, after):
        _expect(_same_state(after, _module_state(layer)), "not bitwise equal")
        return "bitwise equal to the saved layer, float32 kept, no pickle"
    return _on(fresh, load, check)


_LAYER = [
    ("num_features = 0", "BatchNorm(0)", "ValueError: num_features must be a positive int",
     lambda: _build(bnp.BatchNorm, 0), ValueError, "num_features must be a positive int, got 0"),
    ("num_features = 2.5", "BatchNorm(2.5)", "ValueError naming the value",
     lambda: _build(bnp.BatchNorm, 2.5), ValueError, "got 2.5"),
    ("num_features = True", "BatchNorm(True)", "ValueError (a bool is not a count)",
     lambda: _build(bnp.BatchNorm, True), ValueError, "got True"),
    ("num_features a string", "BatchNorm('3')", "ValueError naming the value",
     lambda: _build(bnp.BatchNorm, "3"), ValueError, "got '3'"),
    ("eps = 0", "BatchNorm(3, eps=0)", "ValueError: eps must be a finite number > 0",
     lambda: _build(bnp.BatchNorm, C, eps=0), ValueError, "eps must be a finite number > 0"),
    ("momentum > 1", "BatchNorm(3, momentum=1.5)",
     "ValueError: momentum must be in [0, 1] (torch.nn accepts it silently)",
     lambda: _build(bnp.BatchNorm, C, momentum=1.5), ValueError, r"momentum must be in \[0, 1\]"),
    ("momentum < 0", "BatchNorm(3, momentum=-0.1)", "ValueError naming the value",
     lambda: _build(bnp.BatchNorm, C, momentum=-0.1), ValueError, "got -0.1"),
    ("momentum = nan", "BatchNorm(3, momentum=nan)", "ValueError naming the value",
     lambda: _build(bnp.BatchNorm, C, momentum=float("nan")), ValueError, "got nan"),
    ("momentum a string", "BatchNorm(3, momentum='0.1')", "TypeError naming the type",
     lambda: _build(bnp.BatchNorm, C, momentum="0.1"), TypeError, "got str '0.1'"),
    ("integer dtype", "BatchNorm(3, dtype=np.int32)", "TypeError: dtype must be floating point",
     lambda: _build(bnp.BatchNorm, C, dtype=np.int32), TypeError,
     "dtype must be a floating-point dtype, got int32"),
    ("NumPy integer num_features", "BatchNorm(np.int64(3))", "accepted (stored as int 3)",
     lambda: _build(bnp.BatchNorm, np.int64(C))),
    ("rank 1", "trained layer, x of shape (3,)", "ValueError; state unchanged",
     lambda: _layer_call(_trained_layer(), np.ones(C)), ValueError, "at least 2 dimensions"),
    ("channel mismatch", "BatchNorm(3), x of shape (4, 5)",
     "ValueError naming both channel counts; state unchanged",
     lambda: _layer_call(_trained_layer(), np.ones((4, 5))), ValueError,
     "input has 5 channels .* but the layer expects 3"),
    ("one value per channel", "training, x of shape (1, 3)", "ValueError; state unchanged",
     lambda: _layer_call(_trained_layer(), np.ones((1, C))), ValueError, ONE_VALUE),
    ("one value, no running stats", "track_running_stats=False, eval, x (1, 3)",
     "ValueError: batch statistics are used in eval too",
     lambda: _layer_call(_trained_layer(track_running_stats=False).eval(), np.ones((1, C))),
     ValueError, ONE_VALUE),
    ("integer x", "x of dtype int64", "TypeError; state unchanged",
     lambda: _layer_call(_trained_layer(), np.ones((4, C), np.int64)), TypeError,
     "got dtype int64"),
    ("x is None", "x = None", "TypeError; state unchanged",
     lambda: _layer_call(_trained_layer(), None), TypeError, "got None"),
    ("momentum reassigned", "layer.momentum = 2.0, then a training step",
     "ValueError before any update", lambda: _layer_tampered("momentum", 2.0), ValueError,
     r"momentum must be in \[0, 1\].*got 2.0"),
    ("eps reassigned", "layer.eps = 0, then a training step", "ValueError before any update",
     lambda: _layer_tampered("eps", 0.0), ValueError, "eps must be a finite number > 0"),
    ("running_mean reassigned", "layer.running_mean = np.zeros(5)",
     "ValueError naming the buffer; nothing updated",
     lambda: _layer_tampered("running_mean", np.zeros(5)), ValueError,
     r"running_mean must have shape \(3,\)"),
    ("running_var set to None", "layer.running_var = None",
     "ValueError: running_mean and running_var go together",
     lambda: _layer_tampered("running_var", None), ValueError, "must be given together"),
    ("negative running_var", "eval, layer.running_var = (1, -1, 1)",
     "ValueError naming the channel", lambda: _layer_tampered(
         "running_var", np.array([1.0, -1.0, 1.0]), eval_mode=True), ValueError,
     "running_var must be >= 0, got -1.0 for channel 1"),
    ("backward before forward", "BatchNorm(3).backward(dy)", "RuntimeError",
     _layer_backward_before_forward, RuntimeError, "backward\\(\\) called before forward"),
    ("backward, dy of another shape", "dy (8, 2) after a (8, 3) forward",
     "ValueError; state unchanged", _layer_backward_bad_dy, ValueError,
     "dy must have the shape of x"),
    ("state_dict: missing key", "load_state_dict without 'bias'",
     "KeyError naming it; nothing loaded",
     lambda: _layer_load(_torch_state(bias=None)), KeyError, r"missing keys \['bias'\]"),
    ("state_dict: unexpected key", "load_state_dict with an extra key 'scale'",
     "KeyError naming it; nothing loaded",
     lambda: _layer_load(_torch_state(scale=torch.ones(C))), KeyError,
     r"unexpected keys \['scale'\]"),
    ("state_dict: wrong shape", "running_var of shape (5,)", "ValueError; nothing loaded",
     lambda: _layer_load(_torch_state(running_var=torch.ones(5))), ValueError,
     r"state_dict\['running_var'\] has shape \(5,\)"),
    ("state_dict: strings", "running_var = np.array(['a', 'b', 'c'])",
     "TypeError; nothing loaded (checked before the first value is stored)",
     lambda: _layer_load(_torch_state(running_var=np.array(["a", "b", "c"]))), TypeError,
     "must be numeric, got dtype <U1"),
    ("state_dict: negative var", "running_var = (1, -2, 1)", "ValueError naming the channel",
     lambda: _layer_load(_torch_state(running_var=torch.tensor([1.0, -2.0, 1.0]))),
     ValueError, "got -2.0 for channel 1"),
    ("state_dict: fractional count", "num_batches_tracked = 2.5", "ValueError naming the value",
     lambda: _layer_load(_torch_state(num_batches_tracked=np.array(2.5))), ValueError,
     "whole number >= 0, got 2.5"),
    ("one value per channel, eval", "eval, x of shape (1, 3)", "fine: fixed statistics",
     lambda: _layer_vs_torch(_x((1, C)), steps=2, eval_mode=True)),
    ("empty batch", "training, x of shape (0, 3)",
     "empty y; statistics unchanged; num_batches_tracked + 1 (as torch.nn)",
     lambda: _layer_vs_torch(np.ones((0, C)))),
    ("NaN in a channel", "training, one NaN in channel 1",
     "channel 1's running statistics NaN, others updated (as torch.nn)",
     lambda: _layer_vs_torch(_with(_x(), (2, 1), np.nan))),
    ("inf in a channel", "training, one +inf in channel 1",
     "running_mean[1] inf, running_var[1] NaN (as torch.nn); NumPy's RuntimeWarning",
     lambda: _layer_vs_torch(_with(_x(), (0, 1), np.inf)), None, "", RuntimeWarning),
    ("momentum = None", "momentum=None, two batches", "cumulative average (as torch.nn)",
     lambda: _layer_vs_torch(_x(), steps=2, momentum=None)),
    ("momentum = 1", "momentum=1, two batches", "running stats = the last batch's",
     lambda: _layer_vs_torch(_x(), steps=2, momentum=1.0)),
    ("momentum = 0", "momentum=0", "running statistics never move; the count still grows",
     _layer_momentum_zero),
    ("float32 x, float64 layer", "float32 x into BatchNorm(3) (float64)",
     "defined: y float32; buffers stay float64", lambda: _layer_dtype(np.float32)),
    ("float16 x, float64 layer", "float16 x into BatchNorm(3) (float64)",
     "defined: y float16, statistics in float32; buffers float64",
     lambda: _layer_dtype(np.float16)),
    ("state_dict from torch.nn", "torch.nn.BatchNorm1d(3).state_dict() (tensors)",
     "loaded exactly", _layer_load_torch),
    ("state_dict without count", "an old torch checkpoint without num_batches_tracked",
     "loaded; the count is kept (as torch.nn)", _layer_load_old),
    ("np.savez round trip", "np.savez(f, **layer.state_dict()); load_state_dict(np.load(f))",
     "bitwise the same state, no pickle", _layer_savez),
]


# ---------------------------------------------------------------------------------------------
# bnt.batch_norm


def _fn_arguments(overrides):
    """The arguments of a valid training call of batch_norm, some of them replaced."""
    args = dict(input=_t(), running_mean=torch.zeros(C), running_var=torch.ones(C),
                weight=torch.full((C,), 1.5), bias=torch.full((C,), 0.25), training=True,
                momentum=0.1, eps=1e-5)
    args.update(overrides or {})
    return args


def _fn(overrides=None):
    """bnt.batch_norm on a valid training call with some arguments replaced."""
    return _call(bnt.batch_norm, **_fn_arguments(overrides))


def _fn_vs_torch(overrides, tol=1e-6, layout=None):
    """bnt.batch_norm against torch.nn.functional.batch_norm on copies of the same arguments."""
    theirs = _fn_arguments({k: v.clone() if isinstance(v, torch.Tensor) else v
                            for k, v in overrides.items()})

    def check(result, before, after):
        want = F.batch_norm(**theirs)
        _expect(result.dtype == want.dtype and result.shape == want.shape, "dtype or shape")
        _expect(_close(result, want, tol), "y differs from F.batch_norm")
        for k in ("running_mean", "running_var"):
            _expect(_close(after[k], theirs[k], tol), f"{k} differs")
        if layout is not None:
            _expect(result.is_contiguous(memory_format=layout) and
                    want.is_contiguous(memory_format=layout), "memory format")
        return _summary(result, after, layout) + " (= F.batch_norm)"
    return _call(bnt.batch_norm, check=check, **_fn_arguments(overrides))


def _summary(y, state, layout=None):
    """y's shape, dtype, layout and NaN channels, and the running statistics, as one line."""
    text = f"y {tuple(y.shape)} {str(y.dtype).removeprefix('torch.')}"
    if layout is not None:
        text += ", channels_last kept"
    nan = _nan_channels(y) if y.numel() else []
    if nan:
        text += f", channel {nan[0] if len(nan) == 1 else nan} of y NaN"
    if "running_mean" in state:
        text += (f"; running_mean {_channels(state['running_mean'])}, running_var "
                 f"{_channels(state['running_var'])}")
    if "num_batches_tracked" in state:
        text += f", num_batches_tracked {int(state['num_batches_tracked'])}"
    return text


def _fn_no_channels():
    args = {"input": torch.ones(4, 0), "running_mean": torch.zeros(0),
            "running_var": torch.ones(0), "weight": torch.ones(0), "bias": torch.zeros(0)}

    def check(result, before, after):
        _expect(result.shape == (4, 0), f"shape {tuple(result.shape)}")
        try:
            F.batch_norm(**_fn_arguments({k: v.clone() for k, v in args.items()}))
        except IndexError:
            return "empty output of shape (4, 0) (F.batch_norm raises IndexError here)"
        return "empty output of shape (4, 0)"
    return _call(bnt.batch_norm, check=check, **_fn_arguments(args))


def _fn_nonfinite(values):
    x = _t()
    for index, v in values:
        x[index, 1] = v
    return _fn_vs_torch({"input": x})


_FUNCTION = [
    ("rank 1", "input of shape (3,)", "ValueError: at least 2 dimensions",
     lambda: _fn({"input": torch.ones(C)}), ValueError, "at least 2 dimensions"),
    ("one value per channel", "training, input (1, 3)", "ValueError; running stats unchanged",
     lambda: _fn({"input": torch.ones(1, C)}), ValueError, ONE_VALUE),
    ("integer input", "input of dtype int64", "TypeError naming the dtype",
     lambda: _fn({"input": torch.ones(4, C, dtype=torch.long)}), TypeError,
     "input must be a floating-point array, got dtype torch.int64"),
    ("boolean input", "input of dtype bool", "TypeError naming the dtype",
     lambda: _fn({"input": torch.ones(4, C, dtype=torch.bool)}), TypeError, "torch.bool"),
    ("complex input", "input of dtype complex64", "TypeError naming the dtype",
     lambda: _fn({"input": torch.ones(4, C, dtype=torch.complex64)}), TypeError, "complex64"),
    ("NumPy input", "input a NumPy array", "TypeError: input must be a torch.Tensor",
     lambda: _fn({"input": _x()}), TypeError, "input must be a torch.Tensor, got ndarray"),
    ("eps = 0", "eps=0.0", "ValueError: eps must be a finite number > 0",
     lambda: _fn({"eps": 0.0}), ValueError, "eps must be a finite number > 0"),
    ("eps a tensor", "eps=torch.tensor(1e-5)", "TypeError (eps is a Python number)",
     lambda: _fn({"eps": torch.tensor(1e-5)}), TypeError, "eps must be a positive float"),
    ("eps below float32's range", "float32 input, eps=1e-50",
     "ValueError: eps rounds to 0 in float32 (torch.nn gives garbage)",
     lambda: _fn({"eps": 1e-50}), ValueError, "rounds to 0 in float32"),
    ("momentum > 1", "momentum=2.0", "ValueError (torch.nn accepts it silently)",
     lambda: _fn({"momentum": 2.0}), ValueError, r"momentum must be in \[0, 1\].*got 2.0"),
    ("momentum = None", "momentum=None",
     "ValueError: a cumulative average needs num_batches_tracked (use the module)",
     lambda: _fn({"momentum": None}), ValueError, "cumulative average"),
    ("momentum = nan", "momentum=nan", "ValueError naming the value",
     lambda: _fn({"momentum": float("nan")}), ValueError, "got nan"),
    ("only running_mean", "running_var=None", "ValueError: both or neither",
     lambda: _fn({"running_var": None}), ValueError, "given together; only running_mean"),
    ("eval without statistics", "training=False, no running stats",
     "ValueError: running statistics are required in eval",
     lambda: _fn({"training": False, "running_mean": None, "running_var": None}), ValueError,
     "required when training=False"),
    ("weight too long", "weight of shape (4,)", "ValueError: weight must have shape (3,)",
     lambda: _fn({"weight": torch.ones(4)}), ValueError, r"weight must have shape \(3,\)"),
    ("weight a scalar tensor", "weight = torch.tensor(2.0)", "ValueError (no broadcasting)",
     lambda: _fn({"weight": torch.tensor(2.0)}), ValueError, r"got shape \(\)"),
    ("bias of another dtype", "float32 input, float64 bias",
     "TypeError naming both dtypes (as torch.nn)",
     lambda: _fn({"bias": torch.zeros(C, dtype=torch.float64)}), TypeError,
     "bias has dtype torch.float64 but the input has dtype torch.float32"),
    ("running_mean a NumPy array", "running_mean = np.zeros(3)", "TypeError naming it",
     lambda: _fn({"running_mean": np.zeros(C, np.float32)}), TypeError,
     "running_mean must be a torch.Tensor or None, got ndarray"),
    ("integer running_var", "running_var of dtype int64", "TypeError naming it",
     lambda: _fn({"running_var": torch.ones(C, dtype=torch.long)}), TypeError,
     "running_var must be a floating-point"),
    ("weight on another device", "weight on the meta device, input on cpu",
     "ValueError naming both devices",
     lambda: _fn({"weight": torch.ones(C, device="meta")}), ValueError,
     "weight is on meta but the input is on cpu"),
    ("running_mean requires grad", "running_mean with requires_grad=True",
     "ValueError: buffers are updated in place, outside autograd (torch.nn raises too)",
     lambda: _fn({"running_mean": torch.zeros(C, requires_grad=True)}), ValueError,
     "running_mean requires grad"),
    ("float64 input, float32 stats", "float64 input, float32 running stats",
     "TypeError naming both dtypes",
     lambda: _fn({"input": _t(dtype=torch.float64)}), TypeError, "running_mean has dtype"),
    ("two values per channel", "training, input (1, 3, 2)", "normalized",
     lambda: _fn_vs_torch({"input": _t((1, C, 2))})),
    ("one value per channel, eval", "training=False, input (1, 3)", "fine: fixed statistics",
     lambda: _fn_vs_torch({"input": _t((1, C)), "training": False})),
    ("empty batch", "training, input (0, 3)", "empty output; running stats unchanged",
     lambda: _fn_vs_torch({"input": torch.ones(0, C)})),
    ("C = 0", "input (4, 0), (0,) stats and parameters", "empty output",
     _fn_no_channels),
    ("float16 input", "float16 input, float32 stats and parameters",
     "statistics in float32; output float16", lambda: _fn_vs_torch(
         {"input": _t((64, C), dtype=torch.float16)}, tol=4e-3)),
    ("bfloat16 input", "bfloat16 input, float32 stats and parameters",
     "statistics in float32; output bfloat16", lambda: _fn_vs_torch(
         {"input": _t((64, C), dtype=torch.bfloat16)}, tol=3e-2)),
    ("NaN in a channel", "one NaN in channel 1",
     "channel 1 NaN (output and running stats), others normal (as torch.nn)",
     lambda: _fn_nonfinite([(2, float("nan"))])),
    ("inf in a channel", "one +inf in channel 1", "running_mean inf, running_var NaN (as torch.nn)",
     lambda: _fn_nonfinite([(2, float("inf"))])),
    ("inf as first value", "+inf as the first value of channel 1",
     "as above (the shift skips non-finite values)", lambda: _fn_nonfinite([(0, float("inf"))])),
    ("transposed input", "input = a.t(), not contiguous", "the same as torch.nn",
     lambda: _fn_vs_torch({"input": _t((C, 8)).t()})),
    ("channels_last input", "(4, 3, 5, 5) in channels_last", "the same values; output channels_last",
     lambda: _fn_vs_torch({"input": _t((4, C, 5, 5)).to(memory_format=torch.channels_last)},
                          layout=torch.channels_last)),
    ("momentum = 0", "momentum=0.0", "running statistics unchanged",
     lambda: _fn_vs_torch({"momentum": 0.0})),
    ("negative running_var, eval", "training=False, running_var = (1, -1, 1)",
     "channel 1 NaN, no error (no device sync per call), as torch.nn",
     lambda: _fn_vs_torch({"training": False, "running_var": torch.tensor([1.0, -1.0, 1.0])})),
]


# ---------------------------------------------------------------------------------------------
# bnt.BatchNorm1d/2d/3d


def _mod_call(module, x, check=None):
    return _on(module, lambda: module(x), check)


def _mod_tampered(attribute, value):
    module = _trained_module()
    setattr(module, attribute, value)
    return _mod_call(module, _t((4, C, 2, 2)))


def _mod_vs_torch(x, cls="BatchNorm2d", steps=1, eval_mode=False, dtype=torch.float32,
                  tol=1e-6, layout=None, **kw):
    """A bnlib module and its torch.nn twin on the same inputs; compare y and every buffer."""
    ours = getattr(bnt, cls)(C, dtype=dtype, **kw)
    theirs = getattr(torch.nn, cls)(C, dtype=dtype, **kw)
    for i in range(steps - 1):
        batch = _t((4,) + tuple(x.shape[1:]), seed=10 + i, dtype=x.dtype)
        ours(batch)
        theirs(batch)
    ours.train(not eval_mode)
    theirs.train(not eval_mode)

    def check(result, before, after):
        want = theirs(x.clone())
        _expect(result.dtype == want.dtype, f"dtype {result.dtype}")
        _expect(_close(result, want, tol), "y differs from torch.nn")
        for k, v in theirs.state_dict().items():
            _expect(_close(after[k], v, tol), f"{k} differs from torch.nn")
            _expect(after[k].dtype == _array(v).dtype, f"{k} dtype")
        if layout is not None:
            _expect(result.is_contiguous(memory_format=layout), "memory format lost")
        return _summary(result, after, layout) + " (= torch.nn)"
    return _mod_call(ours, x, check)


def _mod_load(changes, strict=True, check=None):
    module = _trained_module()
    state = torch.nn.BatchNorm2d(C).state_dict()
    state.update(changes)
    state = {k: v for k, v in state.items() if v is not None}
    return _on(module, lambda: module.load_state_dict(state, strict=strict), check)


def _mod_load_old():
    def check(result, before, after):
        _expect(int(after["num_batches_tracked"]) == int(before["num_batches_tracked"]) == 1,
                "count not kept")
        return "loaded; num_batches_tracked keeps its value 1 (as torch.nn)"
    return _mod_load({"num_batches_tracked": None}, check=check)


def _mod_load_lenient():
    def check(result, before, after):
        _expect(result.unexpected_keys == ["scale"], f"reported {result}")
        _expect(int(after["num_batches_tracked"]) == 0, "not loaded")
        return f"loaded; {result}"
    return _mod_load({"scale": torch.ones(C)}, strict=False, check=check)


def _half_module_overflow():
    x = ((torch.rand(8, C, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1)
         * 6e4).half()
    return _mod_vs_torch(x, dtype=torch.float16, tol=1e-2)


_MODULES = [
    ("3-D input to BatchNorm2d", "BatchNorm2d(3), input (4, 3, 5)",
     "ValueError: expected 4D input (got 3D input ...)",
     lambda: _mod_call(_trained_module(), torch.ones(4, C, 5)), ValueError,
     r"expected 4D input \(got 3D input"),
    ("4-D input to BatchNorm1d", "BatchNorm1d(3), input (4, 3, 2, 2)",
     "ValueError: expected 2D or 3D input",
     lambda: _mod_call(_trained_module(bnt.BatchNorm1d, (8, C)), torch.ones(4, C, 2, 2)),
     ValueError, "expected 2D or 3D input"),
    ("4-D input to BatchNorm3d", "BatchNorm3d(3), input (4, 3, 2, 2)",
     "ValueError: expected 5D input",
     lambda: _mod_call(_trained_module(bnt.BatchNorm3d, (2, C, 2, 2, 2)), torch.ones(4, C, 2, 2)),
     ValueError, "expected 5D input"),
    ("channel mismatch", "BatchNorm2d(3), input (4, 5, 2, 2)",
     "ValueError naming both channel counts; state unchanged",
     lambda: _mod_call(_trained_module(), torch.ones(4, 5, 2, 2)), ValueError,
     "input has 5 channels .* but the layer expects 3"),
    ("one value per channel", "training, input (1, 3, 1, 1)", "ValueError; state unchanged",
     lambda: _mod_call(_trained_module(), torch.ones(1, C, 1, 1)), ValueError, ONE_VALUE),
    ("one value, no running stats", "track_running_stats=False, eval, input (1, 3, 1, 1)",
     "ValueError: batch statistics are used in eval too",
     lambda: _mod_call(_trained_module(track_running_stats=False).eval(),
                       torch.ones(1, C, 1, 1)), ValueError, ONE_VALUE),
    ("integer input", "input of dtype int64", "TypeError naming the dtype; state unchanged",
     lambda: _mod_call(_trained_module(), torch.ones(4, C, 2, 2, dtype=torch.long)), TypeError,
     "torch.int64"),
    ("NumPy input", "input a NumPy array", "TypeError: input must be a torch.Tensor",
     lambda: _mod_call(_trained_module(), np.ones((4, C, 2, 2), np.float32)), TypeError,
     "must be a torch.Tensor, got ndarray"),
    ("float64 input, float32 module", "float64 input to a float32 module",
     "TypeError naming both dtypes; state unchanged",
     lambda: _mod_call(_trained_module(), _t((4, C, 2, 2), dtype=torch.float64)), TypeError,
     "has dtype torch.float32 but the input has dtype torch.float64"),
    ("float32 input, float16 module", "float32 input to BatchNorm2d(3, dtype=float16)",
     "TypeError naming both dtypes (as torch.nn)",
     lambda: _mod_call(_trained_module(dtype=torch.float16), _t((4, C, 2, 2))), TypeError,
     "has dtype torch.float16 but the input has dtype torch.float32"),
    ("momentum reassigned", "module.momentum = 1.5, then a training step",
     "ValueError; nothing updated, count unchanged",
     lambda: _mod_tampered("momentum", 1.5), ValueError, r"momentum must be in \[0, 1\]"),
    ("eps reassigned", "module.eps = 0.0, then a training step", "ValueError; nothing updated",
     lambda: _mod_tampered("eps", 0.0), ValueError, "eps must be a finite number > 0"),
    ("running_mean reassigned", "module.running_mean = torch.zeros(5)",
     "ValueError naming the buffer; count unchanged",
     lambda: _mod_tampered("running_mean", torch.zeros(5)), ValueError,
     r"running_mean must have shape \(3,\)"),
    ("num_features = 0", "BatchNorm2d(0)",
     "ValueError at construction (torch.nn fails later, with an IndexError)",
     lambda: _build(bnt.BatchNorm2d, 0), ValueError, "num_features must be a positive int"),
    ("eps < 0", "BatchNorm1d(3, eps=-1.0)", "ValueError naming the value",
     lambda: _build(bnt.BatchNorm1d, C, eps=-1.0), ValueError, "got -1.0"),
    ("momentum > 1", "BatchNorm1d(3, momentum=1.5)",
     "ValueError (torch.nn accepts it silently)",
     lambda: _build(bnt.BatchNorm1d, C, momentum=1.5), ValueError, r"\[0, 1\].*got 1.5"),
    ("state_dict: wrong shape", "load_state_dict with running_var of shape (4,)",
     "RuntimeError (torch's message); nothing loaded (torch.nn loads the rest)",
     lambda: _mod_load({"running_var": torch.ones(4)}), RuntimeError,
     "size mismatch for running_var"),
    ("state_dict: missing key", "load_state_dict without 'bias'",
     "RuntimeError (torch's message); nothing loaded",
     lambda: _mod_load({"bias": None}), RuntimeError, "Missing key.*bias"),
    ("state_dict: unexpected key", "load_state_dict with an extra key 'scale'",
     "RuntimeError (torch's message); nothing loaded",
     lambda: _mod_load({"scale": torch.ones(C)}), RuntimeError, "Unexpected key.*scale"),
    ("NumPy integer num_features", "BatchNorm1d(np.int64(3))", "accepted (stored as int 3)",
     lambda: _build(bnt.BatchNorm1d, np.int64(C))),
    ("one value per channel, eval", "eval, input (1, 3, 1, 1)", "fine: fixed statistics",
     lambda: _mod_vs_torch(_t((1, C, 1, 1)), steps=2, eval_mode=True)),
    ("(1, C, 2) in training", "BatchNorm1d, training, input (1, 3, 2)", "fine: 2 values",
     lambda: _mod_vs_torch(_t((1, C, 2)), "BatchNorm1d")),
    ("empty batch", "training, input (0, 3, 2, 2)",
     "empty output; statistics unchanged; num_batches_tracked + 1 (as torch.nn)",
     lambda: _mod_vs_torch(torch.ones(0, C, 2, 2))),
    ("float16 input", "float16 input to a float32 module",
     "statistics in float32, output float16, buffers float32 (as torch.nn)",
     lambda: _mod_vs_torch(_t((8, C, 4, 4), dtype=torch.float16), tol=4e-3)),
    ("bfloat16 input", "bfloat16 input to a float32 module", "as for float16",
     lambda: _mod_vs_torch(_t((8, C, 4, 4), dtype=torch.bfloat16), tol=3e-2)),
    ("NaN in a channel", "training, one NaN in channel 1",
     "channel 1 NaN (output and buffers), others normal (as torch.nn)",
     lambda: _mod_vs_torch(_tset(_t((4, C, 2, 2)), (1, 1, 0, 1), float("nan")))),
    ("inf in a channel", "training, one +inf in channel 1",
     "running_mean inf, running_var NaN (as torch.nn)",
     lambda: _mod_vs_torch(_tset(_t((4, C, 2, 2)), (0, 1, 0, 0), float("inf")))),
    ("channels_last input", "(4, 3, 5, 5) in channels_last", "output channels_last, = torch.nn",
     lambda: _mod_vs_torch(_t((4, C, 5, 5)).to(memory_format=torch.channels_last),
                           layout=torch.channels_last)),
    ("non-contiguous input", "input = a.transpose(2, 3)", "the same as torch.nn",
     lambda: _mod_vs_torch(_t((4, C, 5, 6)).transpose(2, 3))),
    ("momentum = None", "momentum=None, two batches", "cumulative average (as torch.nn)",
     lambda: _mod_vs_torch(_t((4, C, 2, 2)), steps=2, momentum=None)),
    ("float16 module near the float16 limit", "BatchNorm2d(3).half(), |x| up to 6e4",
     "running_var overflows float16 to inf, as in torch.nn: keep BN in float32",
     _half_module_overflow),
    ("state_dict without count", "an old checkpoint without num_batches_tracked",
     "loaded; the count is kept (as torch.nn)", _mod_load_old),
    ("state_dict, strict=False", "extra key 'scale', strict=False",
     "loaded; 'scale' reported as unexpected (as torch.nn)", _mod_load_lenient),
]


def _rows(entry, rows):
    return [EdgeCase(entry, *row) for row in rows]


CASES = (_rows(NP_FORWARD, _FORWARD) + _rows(NP_BACKWARD, _BACKWARD)
         + _rows(NP_INFERENCE, _INFERENCE) + _rows(NP_LAYER, _LAYER)
         + _rows(T_FUNCTION, _FUNCTION) + _rows(T_MODULES, _MODULES))
"""Every row, grouped by entry point in the order of :data:`ENTRY_POINTS`."""
