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


# population statistics one layer at a time ------------------------------------------------

@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_layer_by_layer_collects_each_layer_on_inputs_normalized_as_at_inference(norm):
    x = rows()
    model = randomize_affine(small_mlp(norm)).train()
    model[1].norm.eval()  # a mode of its own, to be restored
    momenta = [bn.momentum for bn in (model[0].norm, model[1].norm)]
    batches = x.split(4)
    inference.recompute_statistics_layer_by_layer(model, batches)
    # layer 1 sees the raw inputs: the same statistics as Algorithm 2
    algorithm2 = copy.deepcopy(model)
    bnt.recompute_statistics(algorithm2, batches)
    assert torch.allclose(model[0].norm.running_mean, algorithm2[0].norm.running_mean, atol=1e-12)
    assert torch.allclose(model[0].norm.running_var, algorithm2[0].norm.running_var, atol=1e-12)
    # layer 2: Algorithm 2 on the outputs of block 1 in eval mode (its new statistics)
    with torch.no_grad():
        z = [model[1].linear(model[0].eval()(b)) for b in batches]
    model[0].train()
    mean = torch.stack([b.mean(0) for b in z]).mean(0)
    var = torch.stack([b.var(0) for b in z]).mean(0)  # unbiased per batch, as stored
    assert torch.allclose(model[1].norm.running_mean, mean, atol=1e-12)
    assert torch.allclose(model[1].norm.running_var, var, atol=1e-12)
    assert not torch.allclose(model[1].norm.running_var, algorithm2[1].norm.running_var, rtol=1e-3)
    assert model.training and model[0].norm.training and not model[1].norm.training
    assert [bn.momentum for bn in (model[0].norm, model[1].norm)] == momenta


def test_layer_by_layer_leaves_everything_as_it_was_after_an_error():
    model = randomize_affine(small_mlp(bnt.BatchNorm1d))
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        inference.recompute_statistics_layer_by_layer(model, [rows(8), rows(1)])
    assert_buffers_equal(model, before)
    with pytest.raises(ValueError, match="batches is empty"):
        inference.recompute_statistics_layer_by_layer(model, [])
    with pytest.raises(ValueError, match="no batch-norm layer"):
        inference.recompute_statistics_layer_by_layer(torch.nn.Linear(3, 2), [rows(4, 3)])


# calibration -------------------------------------------------------------------------------

def test_calibration_nll_and_ece_by_hand():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    labels = torch.tensor([0, 0, 0, 1])
    result = inference.calibration(logits, labels, bins=10)
    p = logits.softmax(1)
    assert result.nll == pytest.approx(float(-p[torch.arange(4), labels].log().mean()))
    assert result.per_example_nll.shape == (4,)
    # confidences 0.881 (right), 0.731 (wrong), 0.953 (right), 0.5 (argmax 0: wrong),
    # one per bin of width 0.1: ECE = mean |correct - confidence|
    conf = p.max(1).values
    expected = float(((torch.tensor([1.0, 0.0, 1.0, 0.0]) - conf).abs()).mean())
    assert result.ece == pytest.approx(expected)
    # one bin: |accuracy - mean confidence|
    one = inference.calibration(logits, labels, bins=1)
    assert one.ece == pytest.approx(abs(0.5 - float(conf.mean())))


def test_calibration_of_honest_probabilities_is_near_zero_and_bad_input_is_refused():
    gen = torch.Generator().manual_seed(0)
    confidence = torch.rand(20000, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    right = torch.rand(20000, generator=gen, dtype=torch.float64) < confidence
    logits = torch.stack([torch.log(confidence), torch.log(1 - confidence)], 1)
    labels = (~right).long()  # class 0 (the predicted one) is right with probability p
    assert inference.calibration(logits, labels).ece < 0.02
    with pytest.raises(ValueError, match="logits"):
        inference.calibration(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="bins"):
        inference.calibration(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), bins=0)


def test_entropy_adaptation_trains_only_gamma_and_beta_with_batch_statistics_online():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), bnt.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3)).double().eval()
    before = copy.deepcopy(model.state_dict())
    batches = [torch.randn(8, 4, dtype=torch.float64) * 3 + 1 for _ in range(3)]
    logits, adapted = inference.entropy_adaptation(model, batches, lr=0.1)
    for name, value in model.state_dict().items():  # the model itself is untouched
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)
    # the first batch is predicted before any update, with its own batch statistics
    expected = model[3](model[2](torch.nn.functional.batch_norm(
        model[0](batches[0]), None, None, model[1].weight, model[1].bias, training=True)))
    torch.testing.assert_close(logits[:8], expected, rtol=1e-12, atol=1e-12)
    assert logits.shape == (24, 3)
    torch.testing.assert_close(adapted[0].weight, model[0].weight, rtol=0, atol=0)  # frozen
    assert not torch.equal(adapted[1].weight, model[1].weight)  # gamma moved
    assert adapted[1].running_mean is None and not adapted[1].training  # batch statistics in eval


def test_entropy_adaptation_lowers_the_entropy_of_a_batch_seen_again():
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), bnt.BatchNorm1d(6), torch.nn.ReLU(),
                                torch.nn.Linear(6, 3)).double().eval()
    x = torch.randn(16, 4, dtype=torch.float64)

    def entropy(logits):
        log_p = torch.log_softmax(logits, 1)
        return float(-(log_p.exp() * log_p).sum(1).mean())

    logits, adapted = inference.entropy_adaptation(model, [x] * 5, lr=0.5)
    assert entropy(adapted(x).detach()) < entropy(logits[:16])


def test_entropy_adaptation_refuses_what_it_cannot_adapt():
    with pytest.raises(ValueError, match="empty"):
        inference.entropy_adaptation(torch.nn.BatchNorm1d(2), [], lr=0.1)
    with pytest.raises(ValueError, match="no batch norm"):
        inference.entropy_adaptation(torch.nn.Linear(2, 2), [torch.randn(4, 2)], lr=0.1)
