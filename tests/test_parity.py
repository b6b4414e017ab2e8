"""Parity with torch.nn.BatchNorm1d/2d/3d in float64: both bnlib versions, every output.

Each configuration runs three training steps and two eval steps on the same inputs in bnlib
and in torch.nn, and compares the output, dx, dgamma, dbeta, running_mean, running_var and
num_batches_tracked after every step (relative error <= 1e-10). On both CPU routes of
bnlib.torch (the compiled loops and torch operations, the ``cpu_route`` fixture).
"""

import itertools

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt
from tests.reference import (BNT_MODULES, TOL, batch, dx_scale, forward_backward, rel_err,
                             torch_module_for)

pytestmark = pytest.mark.usefixtures("cpu_route")

SHAPES = [(16, 5), (7, 4, 9), (4, 3, 6, 5), (2, 3, 2, 3, 4), (2, 6, 1)]
MOMENTA = [0.1, 0.7, None]
CONFIGS = list(itertools.product(SHAPES, MOMENTA, [True, False], [True, False]))


class TorchCandidate:
    """bnlib.torch module driven like the reference."""

    def __init__(self, ndim, **kw):
        self.module = BNT_MODULES[ndim](**kw, dtype=torch.float64)

    def step(self, x, dy):
        return forward_backward(self.module, x, dy)

    def state(self):
        return self.module.state_dict()


class NumpyCandidate:
    """bnlib.numpy layer driven like the reference."""

    def __init__(self, ndim, **kw):
        self.module = bnp.BatchNorm(**kw, dtype=np.float64)

    def step(self, x, dy):
        y = self.module(x)
        return (y, *self.module.backward(dy))

    def state(self):
        return self.module.state_dict()


def assert_step_matches(got, want, what, dx_terms):
    for name, g, w in zip(("y", "dx", "dgamma", "dbeta"), got, want):
        if w is None:
            assert g is None, f"{what}: {name} should be None"
            continue
        err = rel_err(g, w, scale=dx_terms if name == "dx" else 0.0)
        assert err <= TOL, f"{what}: {name} relative error {err:.3g}"


def assert_state_matches(got, want, what):
    assert list(got) == list(want), f"{what}: state_dict keys {list(got)} != {list(want)}"
    for key in want:
        if key == "num_batches_tracked":
            assert int(got[key]) == int(want[key]), f"{what}: {key}"
        else:
            assert rel_err(got[key], want[key]) <= TOL, f"{what}: {key}"


@pytest.mark.parametrize("candidate", [TorchCandidate, NumpyCandidate], ids=["torch", "numpy"])
@pytest.mark.parametrize("shape,momentum,affine,track", CONFIGS,
                         ids=[f"{s}-m{m}-affine{a}-track{t}" for s, m, a, t in CONFIGS])
def test_training_then_eval_matches_torch_nn(candidate, shape, momentum, affine, track):
    rng = np.random.default_rng(abs(hash((shape, momentum, affine, track))) % 2**32)
    kw = dict(num_features=shape[1], momentum=momentum, affine=affine, track_running_stats=track)
    ref = torch_module_for(len(shape))(**kw, dtype=torch.float64)
    if affine:  # non-trivial gamma and beta so that their gradients are exercised
        with torch.no_grad():
            ref.weight.copy_(torch.tensor(rng.uniform(0.5, 2.0, shape[1])))
            ref.bias.copy_(torch.tensor(rng.uniform(-1.0, 1.0, shape[1])))
    ours = candidate(len(shape), **kw)
    ours.module.load_state_dict(ref.state_dict())

    for mode, steps in (("train", 3), ("eval", 2)):
        ref.train(mode == "train")
        ours.module.train(mode == "train")
        for i in range(steps):
            x, dy = batch(rng, shape), rng.normal(size=shape)
            what = f"{mode} step {i}"
            gamma = ref.weight.detach().numpy() if affine else None
            assert_step_matches(ours.step(x, dy), forward_backward(ref, x, dy), what,
                                dx_terms=dx_scale(x, dy, gamma))
            assert_state_matches(ours.state(), ref.state_dict(), what)


FUNCTIONAL_CASES = list(itertools.product(
    [(16, 5), (4, 3, 6, 5)], [True, False], [True, False], [0.0, 0.3, 1.0]))


@pytest.mark.parametrize("shape,training,with_params,momentum", FUNCTIONAL_CASES)
def test_batch_norm_function_matches_F_batch_norm(shape, training, with_params, momentum):
    rng = np.random.default_rng(1)
    c = shape[1]
    x = torch.tensor(batch(rng, shape))
    dy = torch.tensor(rng.normal(size=shape))
    stats = [torch.tensor(rng.normal(size=c)), torch.tensor(rng.uniform(0.5, 2, c))]
    params = [torch.tensor(rng.uniform(0.5, 2, c)), torch.tensor(rng.normal(size=c))]
    results = []
    for fn in (torch.nn.functional.batch_norm, bnt.batch_norm):
        xi = x.clone().requires_grad_()
        pi = [p.clone().requires_grad_() for p in params] if with_params else [None, None]
        si = [s.clone() for s in stats]
        y = fn(xi, *si, *pi, training=training, momentum=momentum, eps=1e-5)
        y.backward(dy)
        results.append([y, xi.grad, *si] + [p.grad for p in pi if p is not None])
    for got, want in zip(results[1], results[0]):
        assert rel_err(got, want) <= TOL


@pytest.mark.parametrize("shape", [(16, 5), (3, 4, 5, 6)])
def test_numpy_functions_match_F_batch_norm(shape):
    rng = np.random.default_rng(2)
    c = shape[1]
    x, dy = batch(rng, shape), rng.normal(size=shape)
    gamma, beta = rng.uniform(0.5, 2, c), rng.normal(size=c)
    mean, var = rng.normal(size=c), rng.uniform(0.5, 2, c)
    for training in (True, False):
        xt = torch.tensor(x, requires_grad=True)
        gt, bt = torch.tensor(gamma, requires_grad=True), torch.tensor(beta, requires_grad=True)
        yt = torch.nn.functional.batch_norm(xt, torch.tensor(mean), torch.tensor(var), gt, bt,
                                            training=training)
        yt.backward(torch.tensor(dy))
        if training:
            y, cache = bnp.batch_norm_forward(x, gamma, beta)
        else:
            y, cache = bnp.batch_norm_inference(x, mean, var, gamma, beta)
        dx, dgamma, dbeta = bnp.batch_norm_backward(dy, cache)
        for got, want in ((y, yt), (dx, xt.grad), (dgamma, gt.grad), (dbeta, bt.grad)):
            assert rel_err(got, want) <= TOL


def test_module_on_device_matches_torch_nn_on_the_same_device(device):
    """The same comparison on each device (CUDA runs only where a GPU is present)."""
    rng = np.random.default_rng(3)
    ref = torch.nn.BatchNorm2d(4, momentum=None, dtype=torch.float64, device=device)
    ours = bnt.BatchNorm2d(4, momentum=None, dtype=torch.float64, device=device)
    for training, steps in ((True, 3), (False, 1)):
        ref.train(training)
        ours.train(training)
        for _ in range(steps):
            x = torch.tensor(batch(rng, (8, 4, 5, 5)), device=device)
            dy = torch.tensor(rng.normal(size=(8, 4, 5, 5)), device=device)
            expected, actual = (forward_backward(module, x, dy) for module in (ref, ours))
            for got, want in zip(actual, expected):
                assert got.device.type == device and rel_err(got, want) <= TOL
            assert_state_matches(ours.state_dict(), ref.state_dict(), f"{device} training={training}")
