"""bnlib.book.experiments: repeated runs, ranking, dropout's variance shift, gradient norms."""

import math

import pytest
import torch

from bnlib.book import data, experiments, models, training
from bnlib import torch as bnt


@pytest.fixture(scope="module")
def digits():
    return data.load_digits()


def _small(norm=None):
    return lambda: models.mlp(64, [16], 10, norm=norm)


def test_repeat_is_reproducible_and_seeds_each_run(digits):
    a = experiments.repeat(_small(), digits, seeds=[0, 1], steps=30, lr=0.1, eval_every=10)
    b = experiments.repeat(_small(), digits, seeds=[0, 1], steps=30, lr=0.1, eval_every=10)
    assert [h.accuracy for h in a.histories] == [h.accuracy for h in b.histories]
    assert a.histories[0].train_loss != a.histories[1].train_loss  # the seed matters
    assert a.seeds == [0, 1] and len(a.models) == 2 and all(s >= 0 for s in a.seconds)
    assert a.final_accuracy == [h.final_accuracy for h in a.histories]
    assert a.mean_final_accuracy == pytest.approx(sum(a.final_accuracy) / 2)
    assert a.seconds_per_step() > 0 and a.diverged == 0


def test_repeat_matches_a_hand_written_run(digits):
    runs = experiments.repeat(_small(bnt.BatchNorm1d), digits, seeds=[3], steps=20, lr=0.1,
                              eval_every=5)
    training.deterministic(3)
    model = _small(bnt.BatchNorm1d)()
    history = training.train(model, digits, steps=20, lr=0.1, eval_every=5, seed=3)
    assert runs.histories[0].accuracy == history.accuracy
    for p, q in zip(runs.models[0].parameters(), model.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("kwargs, message", [
    (dict(seeds=[], steps=5), "seeds is empty"),
    (dict(seeds=[1, 1], steps=5), "distinct"),
    (dict(seeds=[0], steps=5, seed=0), "`seeds`"),
    (dict(seeds=[0]), "steps"),
])
def test_repeat_rejects_bad_arguments(digits, kwargs, message):
    with pytest.raises(ValueError, match=message):
        experiments.repeat(_small(), digits, **kwargs)
    with pytest.raises(TypeError, match="build"):
        experiments.repeat(models.mlp(64, [4], 10), digits, seeds=[0], steps=1)


def _history(steps, acc, diverged=False):
    return training.History(steps=steps, accuracy=acc, train_loss=[1.0] * steps[-1],
                            diverged=diverged)


def test_steps_to_and_curves_count_divergence_as_failure():
    runs = experiments.Runs(seeds=[0, 1], histories=[
        _history([0, 10, 20], [0.1, 0.5, 0.9]),
        _history([0, 10, 13], [0.1, 0.6, 0.1], diverged=True),
    ], seconds=[2.0, 1.3])
    assert runs.steps_to(0.5) == [10, 10] and runs.mean_steps_to(0.5) == 10.0
    assert runs.steps_to(0.9) == [20, None] and runs.mean_steps_to(0.9) == math.inf
    assert runs.diverged == 1
    steps, acc = runs.accuracy_curves()
    assert steps.tolist() == [0, 10, 20]
    assert acc.tolist() == [[0.1, 0.5, 0.9], [0.1, 0.6, 0.1]]
    assert runs.seconds_per_step() == pytest.approx((2.0 / 20 + 1.3 / 13) / 2)


def test_best_takes_the_highest_score_and_the_first_of_ties():
    assert experiments.best({"a": 1, "b": 3, "c": 3}, score=lambda v: v) == "b"
    assert experiments.best({0.1: 5.0, 1.0: -math.inf}, score=lambda v: v) == 0.1
    with pytest.raises(ValueError, match="empty"):
        experiments.best({}, score=lambda v: v)
    with pytest.raises(ValueError, match="NaN"):
        experiments.best({"a": float("nan")}, score=lambda v: v)


def _dropout_net(p=0.5, dtype=torch.float64):
    torch.manual_seed(0)
    return models.mlp(8, [32, 32], 3, norm=torch.nn.BatchNorm1d, dropout=p).to(dtype)


def test_without_dropout_shares_everything_but_dropout():
    net = _dropout_net()
    view = experiments.without_dropout(net)
    assert isinstance(net[0].dropout, torch.nn.Dropout)  # the model is unchanged
    assert isinstance(view[0].dropout, torch.nn.Identity)
    assert view[0].linear is net[0].linear and view[1].norm is net[1].norm
    assert view[-1] is net[-1]  # no dropout inside: returned as it is
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.Dropout):
            m.eval()
    x = torch.randn(64, 8, dtype=torch.float64)
    view.train()
    assert torch.equal(view(x), net(x))
    assert experiments.without_dropout(net[-1]) is net[-1]
    with pytest.raises(TypeError, match="torch.nn.Module"):
        experiments.without_dropout(lambda x: x)


def test_variance_shift_is_one_for_exact_statistics_and_below_one_after_dropout():
    net = _dropout_net(p=0.5)
    x = torch.randn(4096, 8, dtype=torch.float64)
    n = x.shape[0]
    # Statistics collected with dropout active, as in training.
    bnt.recompute_statistics(net, [x])
    shifts = experiments.variance_shift(net, x, ["0.norm", "1.norm"])
    assert shifts["0.norm"] == pytest.approx((n - 1) / n, abs=1e-9)  # no dropout before it
    assert shifts["1.norm"] < 0.9  # dropout before it inflated the training variance
    # Statistics collected with dropout off fit the test-time input again.
    bnt.recompute_statistics(experiments.without_dropout(net), [x])
    shifts = experiments.variance_shift(net, x, ["0.norm", "1.norm"])
    assert shifts["0.norm"] == pytest.approx((n - 1) / n, abs=1e-9)
    assert shifts["1.norm"] == pytest.approx(1.0, abs=2e-3)


def test_variance_shift_matches_the_dropout_formula():
    """Var_train(w . (u * m / q)) = Var(w . u) + (1 - q) / q * sum_i w_i^2 E[u_i^2] (Li et al.)."""
    torch.manual_seed(0)
    p, q = 0.3, 0.7
    dropout, linear = torch.nn.Dropout(p), torch.nn.Linear(6, 4, bias=False, dtype=torch.float64)
    bn = torch.nn.BatchNorm1d(4, momentum=None, dtype=torch.float64)
    net = torch.nn.Sequential(dropout, linear, bn)
    u = torch.rand(200_000, 6, dtype=torch.float64) + 0.5  # a positive mean, like ReLU outputs
    with torch.no_grad():
        net.train()(u)
    w = linear.weight.detach()
    test_var = (u @ w.T).var(dim=0, unbiased=False)
    train_var = test_var + (1 - q) / q * (w**2 @ (u**2).mean(dim=0))
    predicted = (test_var / train_var).mean().item()
    assert experiments.variance_shift(net, u, ["2"])["2"] == pytest.approx(predicted, rel=1e-2)


def test_variance_shift_rejects_layers_without_statistics():
    net = _dropout_net()
    with pytest.raises(ValueError, match="batch-norm"):
        experiments.variance_shift(net, torch.randn(4, 8, dtype=torch.float64), ["0.linear"])
    with pytest.raises(ValueError, match="no submodule"):
        experiments.variance_shift(net, torch.randn(4, 8, dtype=torch.float64), ["9.norm"])


def test_weight_gradient_norms_match_autograd_and_leave_grad_untouched():
    torch.manual_seed(0)
    net = models.mlp(8, [16, 16], 3, norm=torch.nn.BatchNorm1d).double()
    x, y = torch.randn(32, 8, dtype=torch.float64), torch.randint(0, 3, (32,))
    norms = experiments.weight_gradient_norms(net, x, y)
    assert all(p.grad is None for p in net.parameters())
    torch.nn.functional.cross_entropy(net(x), y).backward()
    expected = [net[0].linear.weight.grad.norm().item(), net[1].linear.weight.grad.norm().item(),
                net[2].weight.grad.norm().item()]
    assert norms == pytest.approx(expected, rel=1e-12)
    with pytest.raises(ValueError, match="no Linear"):
        experiments.weight_gradient_norms(torch.nn.Sequential(torch.nn.ReLU()), x, y)
