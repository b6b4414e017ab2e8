"""bnlib.book.inference: the running averages of a module's buffers replayed, and predictions
normalized with each group's own batch statistics. (Algorithm 2, folding, frozen batch norm:
tests/torch/test_inference.py.)"""

import copy

import numpy as np
import pytest
import torch

from bnlib import torch as bnt
from bnlib.book import inference
from tests.reference import assert_buffers_equal, randomize_affine, rows, small_mlp

NORMS_1D = {"torch.nn": torch.nn.BatchNorm1d, "bnlib": bnt.BatchNorm1d}


# running_average ---------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0, None])
@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_running_average_replays_the_buffers_of_a_module(norm, momentum):
    bn = norm(4, momentum=momentum, dtype=torch.float64)
    means, variances = [], []
    for t in range(7):
        x = rows(10, 4, seed=t)
        bn(x)
        means.append(x.mean(0))
        variances.append(x.var(0))  # unbiased, as stored
        mean_path = inference.running_average(torch.stack(means), momentum, initial=0.0)
        var_path = inference.running_average(torch.stack(variances), momentum, initial=1.0)
        assert np.allclose(mean_path[-1], bn.running_mean.numpy(), rtol=1e-12, atol=1e-14)
        assert np.allclose(var_path[-1], bn.running_var.numpy(), rtol=1e-12, atol=1e-14)


def test_running_average_start_up_bias_and_cumulative_mean():
    values = np.full((30, 2), 5.0)
    path = inference.running_average(values, 0.1, initial=0.0)
    assert np.allclose(path[:, 0], 5.0 * (1 - 0.9 ** np.arange(1, 31)), rtol=1e-14)
    cumulative = inference.running_average(np.arange(1.0, 11.0), None, initial=123.0)
    assert np.allclose(cumulative, np.cumsum(np.arange(1.0, 11.0)) / np.arange(1, 11))


def test_running_average_rejects_bad_momentum_and_scalars():
    with pytest.raises(ValueError, match="momentum must be in"):
        inference.running_average(np.ones(3), 1.5)
    with pytest.raises(TypeError, match="momentum"):
        inference.running_average(np.ones(3), "0.1")
    with pytest.raises(ValueError, match="leading batch axis"):
        inference.running_average(np.float64(1.0), 0.1)


# predictions with batch statistics ---------------------------------------------------------

def test_predict_with_batch_statistics_normalizes_each_group_on_its_own():
    x = rows()
    model = randomize_affine(small_mlp(bnt.BatchNorm1d)).eval()
    before = copy.deepcopy(model)
    groups = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(50)
    out = inference.predict_with_batch_statistics(model, x, groups)
    reference = copy.deepcopy(model).train()
    for g in groups:
        assert torch.allclose(out[g], reference(x[g]), rtol=0, atol=1e-12)
    assert_buffers_equal(model, before)
    assert not model.training


def test_predict_with_batch_statistics_refuses_groups_that_are_not_a_partition_or_too_small():
    x, model = rows(10), small_mlp(bnt.BatchNorm1d)
    with pytest.raises(ValueError, match="exactly once"):
        inference.predict_with_batch_statistics(model, x, [torch.arange(5), torch.arange(5)])
    with pytest.raises(ValueError, match="batches is empty"):
        inference.predict_with_batch_statistics(model, x, [])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        inference.predict_with_batch_statistics(model, x, torch.arange(10).split(9))
