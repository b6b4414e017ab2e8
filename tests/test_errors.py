"""Bad arguments raise a clear error that names the problem, and change no state: the checks
that the edge-case table (bnlib.book.edge_cases, run row by row by tests/book/test_edge_cases.py)
does not hold. Every error row of the table also checks that nothing changed; a check that
repeats a row (same entry point, same argument, same exception and message) is not kept here.
"""

import pytest
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt


@pytest.mark.parametrize("make", [bnp.BatchNorm, bnt.BatchNorm1d, bnt.BatchNorm2d],
                         ids=["numpy", "torch1d", "torch2d"])
@pytest.mark.parametrize("kwargs,exc,message", [
    ({"eps": "1e-5"}, TypeError, "eps"),
], ids=["eps-str"])
def test_constructors_reject_bad_settings(make, kwargs, exc, message):
    """The table's constructor rows check eps's value; these check its type."""
    args = {"num_features": 3, **kwargs}
    with pytest.raises(exc, match=message):
        make(**args)


def _stats():
    return torch.zeros(3), torch.ones(3)


FUNCTIONAL_CASES = [  # (id, kwargs overriding a valid call, exception, message fragment)
    ("stats-shape", {"running_mean": torch.zeros(5)}, ValueError, "running_mean must have shape"),
]


@pytest.mark.parametrize("override,exc,message", [c[1:] for c in FUNCTIONAL_CASES],
                         ids=[c[0] for c in FUNCTIONAL_CASES])
def test_batch_norm_function_rejects_bad_arguments_before_updating(override, exc, message):
    """The table's rows for bnt.batch_norm check the running statistics' type, dtype, device
    and requires_grad; this checks their shape."""
    mean, var = _stats()
    call = dict(input=torch.randn(4, 3), running_mean=mean, running_var=var,
                weight=torch.ones(3), bias=torch.zeros(3), training=True, momentum=0.1, eps=1e-5)
    call.update(override)
    with pytest.raises(exc, match=message):
        bnt.batch_norm(**call)
    assert torch.equal(mean, torch.zeros(3)) and torch.equal(var, torch.ones(3))
