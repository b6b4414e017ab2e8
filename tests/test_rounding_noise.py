"""The rounding-noise hook of the notebooks' second nbval pass: it perturbs every parameter by a
few ulp after each optimizer step, and leaves the notebook's own random numbers alone."""

import torch

from tests.rounding_noise import install


def _step(model, lr=0.0):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    model(torch.ones(2, 3, dtype=torch.float64)).sum().backward()
    optimizer.step()


def test_each_step_moves_every_parameter_by_a_few_ulp_only():
    model = torch.nn.Linear(3, 4, dtype=torch.float64)
    before = [p.clone() for p in model.parameters()]
    handle = install(seed=0)
    try:
        _step(model)  # lr 0: only the noise moves the parameters
    finally:
        handle.remove()
    eps = torch.finfo(torch.float64).eps
    for old, new in zip(before, model.parameters()):
        relative = ((new - old) / old).abs()
        assert (relative > 0).any() and relative.max() < 20 * eps


def test_the_notebook_s_random_numbers_are_unchanged_and_removal_stops_it():
    model = torch.nn.Linear(3, 4, dtype=torch.float64)
    torch.manual_seed(5)
    expected = torch.rand(3)
    handle = install(seed=0)
    torch.manual_seed(5)
    _step(model)
    assert torch.equal(torch.rand(3), expected)
    handle.remove()
    before = [p.clone() for p in model.parameters()]
    _step(model)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
