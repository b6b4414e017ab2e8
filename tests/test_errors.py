"""Bad input raises a clear error that names the problem, and changes no state."""

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt

ONE_PER_CHANNEL = "more than 1 value per channel"

NUMPY_LAYER_CASES = [  # (id, input, exception, message fragment)
    ("rank-1", np.ones(3), ValueError, "at least 2 dimensions"),
    ("channels", np.ones((4, 5)), ValueError, "input has 5 channels"),
    ("one-value", np.ones((1, 3)), ValueError, ONE_PER_CHANNEL),
    ("one-value-spatial", np.ones((1, 3, 1, 1)), ValueError, ONE_PER_CHANNEL),
    ("int", np.ones((4, 3), dtype=np.int64), TypeError, "floating-point"),
    ("bool", np.ones((4, 3), dtype=bool), TypeError, "floating-point"),
]

TORCH_MODULE_CASES = [
    ("rank-3", torch.ones(4, 3, 5), ValueError, "expected 4D input"),
    ("rank-5", torch.ones(2, 3, 2, 2, 2), ValueError, "expected 4D input"),
    ("channels", torch.ones(4, 5, 2, 2), ValueError, "input has 5 channels"),
    ("one-value", torch.ones(1, 3, 1, 1), ValueError, ONE_PER_CHANNEL),
    ("int", torch.ones(4, 3, 2, 2, dtype=torch.long), TypeError, "floating-point"),
    ("bool", torch.ones(4, 3, 2, 2, dtype=torch.bool), TypeError, "floating-point"),
    ("float64-into-float32", torch.ones(4, 3, 2, 2, dtype=torch.float64), TypeError, "dtype"),
    ("not-a-tensor", np.ones((4, 3, 2, 2), dtype=np.float32), TypeError, "torch.Tensor"),
]


def _trained_numpy_layer():
    bn = bnp.BatchNorm(3)
    bn(np.random.default_rng(0).normal(size=(8, 3)))
    return bn


def _trained_torch_module():
    bn = bnt.BatchNorm2d(3)
    bn(torch.randn(4, 3, 2, 2, generator=torch.Generator().manual_seed(0)))
    return bn


def _numpy(v):
    return v.detach().cpu().numpy().copy() if isinstance(v, torch.Tensor) else np.array(v)


def _snapshot(state):
    return {k: _numpy(v) for k, v in state.items()}


def _assert_unchanged(before, after):
    assert before.keys() == after.keys()
    for k in before:
        assert np.array_equal(before[k], _numpy(after[k])), f"{k} changed after an error"


@pytest.mark.parametrize("x,exc,message", [c[1:] for c in NUMPY_LAYER_CASES],
                         ids=[c[0] for c in NUMPY_LAYER_CASES])
def test_numpy_layer_rejects_bad_input_and_keeps_its_state(x, exc, message):
    bn = _trained_numpy_layer()
    before = _snapshot(bn.state_dict())
    with pytest.raises(exc, match=message):
        bn(x)
    _assert_unchanged(before, bn.state_dict())


@pytest.mark.parametrize("x,exc,message", [c[1:] for c in TORCH_MODULE_CASES],
                         ids=[c[0] for c in TORCH_MODULE_CASES])
def test_torch_module_rejects_bad_input_and_keeps_its_state(x, exc, message):
    bn = _trained_torch_module()
    before = _snapshot(bn.state_dict())
    with pytest.raises(exc, match=message):
        bn(x)
    _assert_unchanged(before, bn.state_dict())


@pytest.mark.parametrize("make", [bnp.BatchNorm, bnt.BatchNorm1d, bnt.BatchNorm2d],
                         ids=["numpy", "torch1d", "torch2d"])
@pytest.mark.parametrize("kwargs,exc,message", [
    ({"eps": 0.0}, ValueError, "eps must be a finite number > 0"),
    ({"eps": -1e-5}, ValueError, "eps must be a finite number > 0"),
    ({"eps": float("nan")}, ValueError, "eps"),
    ({"eps": "1e-5"}, TypeError, "eps"),
    ({"momentum": 1.5}, ValueError, r"momentum must be in \[0, 1\]"),
    ({"momentum": -0.1}, ValueError, r"momentum must be in \[0, 1\]"),
    ({"num_features": 0}, ValueError, "num_features"),
    ({"num_features": 2.5}, ValueError, "num_features"),
], ids=["eps0", "eps-neg", "eps-nan", "eps-str", "mom-big", "mom-neg", "C0", "C-float"])
def test_constructors_reject_bad_settings(make, kwargs, exc, message):
    args = {"num_features": 3, **kwargs}
    with pytest.raises(exc, match=message):
        make(**args)


def _stats():
    return torch.zeros(3), torch.ones(3)


FUNCTIONAL_CASES = [  # (id, kwargs overriding a valid call, exception, message fragment)
    ("rank-1", {"input": torch.ones(3)}, ValueError, "at least 2 dimensions"),
    ("one-value", {"input": torch.ones(1, 3)}, ValueError, ONE_PER_CHANNEL),
    ("int", {"input": torch.ones(4, 3, dtype=torch.int32)}, TypeError, "floating-point"),
    ("eps0", {"eps": 0.0}, ValueError, "eps"),
    ("momentum", {"momentum": 2.0}, ValueError, "momentum"),
    ("momentum-none", {"momentum": None}, ValueError, "cumulative average"),
    ("mean-only", {"running_var": None}, ValueError, "given together; only running_mean"),
    ("weight-shape", {"weight": torch.ones(4)}, ValueError, r"weight must have shape \(3,\)"),
    ("bias-dtype", {"bias": torch.zeros(3, dtype=torch.float64)}, TypeError, "bias has dtype"),
    ("stats-shape", {"running_mean": torch.zeros(5)}, ValueError, "running_mean must have shape"),
]


@pytest.mark.parametrize("override,exc,message", [c[1:] for c in FUNCTIONAL_CASES],
                         ids=[c[0] for c in FUNCTIONAL_CASES])
def test_batch_norm_function_rejects_bad_arguments_before_updating(override, exc, message):
    mean, var = _stats()
    call = dict(input=torch.randn(4, 3), running_mean=mean, running_var=var,
                weight=torch.ones(3), bias=torch.zeros(3), training=True, momentum=0.1, eps=1e-5)
    call.update(override)
    with pytest.raises(exc, match=message):
        bnt.batch_norm(**call)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(var, torch.ones(3))


def test_eval_without_running_statistics_is_an_error():
    with pytest.raises(ValueError, match="required when training=False"):
        bnt.batch_norm(torch.randn(4, 3), None, None, training=False)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: bnp.batch_norm_forward(np.ones((4, 3)), gamma=np.ones(2)), ValueError,
     r"gamma must have shape \(3,\)"),
    (lambda: bnp.batch_norm_forward(np.ones((4, 3)), eps=0), ValueError, "eps"),
    (lambda: bnp.batch_norm_forward(np.ones((1, 3))), ValueError, ONE_PER_CHANNEL),
    (lambda: bnp.batch_norm_forward([[1, 2], [3, 4]]), TypeError, "floating-point"),
    (lambda: bnp.batch_norm_backward(np.ones((2, 3)), bnp.batch_norm_forward(np.eye(3))[1]),
     ValueError, "dy must have the shape of x"),
    (lambda: bnp.batch_norm_inference(np.ones((4, 3)), np.zeros(3), np.ones(2)), ValueError,
     r"var must have shape \(3,\)"),
    (lambda: bnp.BatchNorm(3).backward(np.ones((4, 3))), RuntimeError, "before forward"),
], ids=["gamma-shape", "eps", "one-value", "int-list", "dy-shape", "var-shape", "no-forward"])
def test_numpy_functions_reject_bad_arguments(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


def test_a_batch_of_one_is_fine_in_eval_mode():
    bn = _trained_torch_module().eval()
    assert bn(torch.ones(1, 3, 1, 1)).shape == (1, 3, 1, 1)
    layer = _trained_numpy_layer().eval()
    assert layer(np.ones((1, 3))).shape == (1, 3)
