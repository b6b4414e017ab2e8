"""bnlib.book.experiments: repeated runs, ranking, dropout's variance shift, gradient norms."""

import copy
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


# fine_tune: runs continued from trained models, side by side --------------------------------

def _starts(digits, norm, seeds=(0, 1)):
    starts = {}
    for seed in seeds:
        training.deterministic(seed)
        model = models.mlp(64, [16, 16], 10, norm=norm)
        training.train(model, digits, steps=20, batch_size=20, lr=0.1, eval_every=20, seed=seed)
        starts[seed] = model
    return starts


@pytest.mark.parametrize("kind", ["training mode", "frozen", "body frozen"])
def test_fine_tune_matches_separate_runs_of_train(digits, kind):
    starts = _starts(digits, torch.nn.BatchNorm1d if kind == "training mode" else bnt.BatchNorm1d)
    if kind != "training mode":
        starts = {seed: bnt.freeze_batch_norms(m) for seed, m in starts.items()}
    if kind == "body frozen":
        for model in starts.values():
            model[0].linear.weight.requires_grad_(False)
    before = {seed: {k: v.clone() for k, v in m.state_dict().items()} for seed, m in starts.items()}
    runs = experiments.fine_tune(starts, digits, lrs=[0.1, 0.01], steps=15, batch_size=4)
    assert list(runs) == [0.01, 0.1]
    for lr, lr_runs in runs.items():
        assert lr_runs.seeds == [0, 1] and lr_runs.diverged == 0
        for seed, model, history in zip(lr_runs.seeds, lr_runs.models, lr_runs.histories):
            reference = copy.deepcopy(starts[seed])
            expected = training.train(reference, digits, steps=15, batch_size=4, lr=lr,
                                      eval_steps=[15], seed=seed)
            for name, value in reference.state_dict().items():
                assert torch.allclose(model.state_dict()[name], value, rtol=0, atol=1e-12), name
            assert history.final_accuracy == expected.final_accuracy
            assert history.test_accuracy == expected.test_accuracy
            assert history.train_loss == pytest.approx(expected.train_loss, abs=1e-12)
    for seed, model in starts.items():  # the starts are not modified
        for name, value in model.state_dict().items():
            assert torch.equal(value, before[seed][name])
    if kind == "body frozen":
        for lr_runs in runs.values():
            for seed, model in zip(lr_runs.seeds, lr_runs.models):
                assert torch.equal(model[0].linear.weight, starts[seed][0].linear.weight)


def test_fine_tune_stops_only_the_runs_that_diverge(digits):
    starts = {seed: bnt.freeze_batch_norms(m) for seed, m in _starts(digits, bnt.BatchNorm1d).items()}
    runs = experiments.fine_tune(starts, digits, lrs=[0.01, 1e8], steps=10, batch_size=4)
    assert runs[1e8].diverged == 2 and runs[0.01].diverged == 0
    assert all(h.test_accuracy == 0.1 and h.test_correct is None for h in runs[1e8].histories)
    reference = copy.deepcopy(starts[1])
    expected = training.train(reference, digits, steps=10, batch_size=4, lr=0.01, eval_steps=[10],
                              seed=1)
    assert runs[0.01].histories[1].final_accuracy == expected.final_accuracy


def test_fine_tune_rejects_bad_arguments(digits):
    starts = _starts(digits, torch.nn.BatchNorm1d, seeds=(0,))
    with pytest.raises(ValueError, match="non-empty"):
        experiments.fine_tune({}, digits, lrs=[0.1], steps=1)
    with pytest.raises(ValueError, match="distinct"):
        experiments.fine_tune(starts, digits, lrs=[0.1, 0.1], steps=1)
    other = {0: starts[0], 1: models.mlp(64, [8], 10)}
    with pytest.raises(ValueError, match="differs"):
        experiments.fine_tune(other, digits, lrs=[0.1], steps=1)
    frozen = copy.deepcopy(starts[0]).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        experiments.fine_tune({0: frozen}, digits, lrs=[0.1], steps=1)


# Snapshots -----------------------------------------------------------------------------------


def test_snapshots_keep_every_runs_state_without_changing_the_runs(digits):
    snapshots = experiments.Snapshots(every=10)
    kept = experiments.repeat(snapshots.watch(_small(bnt.BatchNorm1d)), digits, seeds=[0, 1],
                              steps=25, lr=0.1, eval_every=5, on_step=snapshots)
    plain = experiments.repeat(_small(bnt.BatchNorm1d), digits, seeds=[0, 1], steps=25, lr=0.1,
                               eval_every=5)
    assert [h.accuracy for h in kept.histories] == [h.accuracy for h in plain.histories]
    for seed, model in zip([0, 1], kept.models):
        assert [step for step, _ in snapshots[model]] == [0, 10, 20]
        training.deterministic(seed)  # step 0 is the initialization
        initial = _small(bnt.BatchNorm1d)()
        for name, value in initial.state_dict().items():
            assert torch.equal(snapshots[model][0][1][name], value)
    # the state after 20 updates is that of a run stopped there
    training.deterministic(1)
    model = _small(bnt.BatchNorm1d)()
    training.train(model, digits, steps=20, lr=0.1, eval_every=5, seed=1)
    for name, value in model.state_dict().items():
        assert torch.equal(snapshots[kept.models[1]][2][1][name], value)


def test_snapshots_replay_copies_and_leaves_the_model_alone(digits):
    snapshots = experiments.Snapshots(every=10)
    runs = experiments.repeat(snapshots.watch(_small()), digits, seeds=[0], steps=20, lr=0.1,
                              on_step=snapshots)
    model = runs.models[0]
    before = {name: value.clone() for name, value in model.state_dict().items()}
    replayed = [(step, copy.state_dict()["0.linear.weight"].clone())
                for step, copy in snapshots.replay(model)]
    assert [step for step, _ in replayed] == [0, 10, 20]
    assert torch.equal(replayed[-1][1], model.state_dict()["0.linear.weight"])
    assert not torch.equal(replayed[0][1], replayed[-1][1])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name])


def test_snapshots_refuse_bad_settings_and_unwatched_models():
    with pytest.raises(ValueError, match="positive int"):
        experiments.Snapshots(every=0)
    snapshots = experiments.Snapshots(every=5)
    with pytest.raises(TypeError, match="function"):
        snapshots.watch(_small()())
    with pytest.raises(KeyError, match="watched"):
        snapshots(4, _small()())


# repeat_stacked ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def signals():
    return data.load_mnist1d(n_val=200)


def _rnn(norm):
    return lambda: models.RecurrentClassifier(1, 8, 10, norm=norm, max_steps=3, chunk=10,
                                              init="glorot")


@pytest.mark.parametrize("norm", [None, "batch", "batch_separate"])
def test_repeat_stacked_gives_the_runs_of_repeat_at_every_learning_rate(signals, norm):
    kwargs = dict(steps=15, batch_size=16, momentum=0.9)
    grid = experiments.repeat_stacked(_rnn(norm), signals, [0, 1], [0.3, 0.03], **kwargs)
    assert list(grid) == [0.03, 0.3]
    for lr, runs in grid.items():
        want = experiments.repeat(_rnn(norm), signals, [0, 1], lr=lr, eval_every=15, **kwargs)
        assert runs.seeds == [0, 1]
        for h, w in zip(runs.histories, want.histories):
            assert (h.split, h.steps, h.accuracy, h.diverged) == (w.split, w.steps, w.accuracy,
                                                                   w.diverged)
            assert h.train_loss == pytest.approx(w.train_loss, rel=1e-10)
            assert h.test_accuracy == w.test_accuracy
            assert torch.equal(h.test_correct, w.test_correct)
        for model, reference in zip(runs.models, want.models):
            for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
                assert torch.allclose(a.double(), b.double(), rtol=1e-10, atol=1e-12)


def test_repeat_stacked_stops_a_diverged_run_as_train_does_and_the_others_go_on(signals):
    kwargs = dict(steps=10, batch_size=16, momentum=0.9)
    # lr 1e308: the first update overflows the weights, the second step's loss is NaN
    grid = experiments.repeat_stacked(_rnn(None), signals, [0], [1e308, 0.05], **kwargs)
    blown = grid[1e308].histories[0]
    reference = experiments.repeat(_rnn(None), signals, [0], lr=1e308, eval_every=10, **kwargs)
    ref = reference.histories[0]
    assert blown.diverged and ref.diverged and blown.steps == [0, 1]
    assert (blown.steps, blown.accuracy, blown.test_accuracy) == (ref.steps, ref.accuracy,
                                                                   ref.test_accuracy)
    assert blown.test_correct is None and blown.train_loss == pytest.approx(ref.train_loss)
    assert grid[1e308].diverged == 1 and grid[0.05].diverged == 0
    calm = experiments.repeat(_rnn(None), signals, [0], lr=0.05, eval_every=10, **kwargs)
    assert grid[0.05].histories[0].accuracy == calm.histories[0].accuracy


def test_repeat_stacked_refuses_bad_arguments(signals):
    with pytest.raises(TypeError, match="build must be a function"):
        experiments.repeat_stacked(_rnn(None)(), signals, [0], [0.1], steps=1)
    with pytest.raises(ValueError, match="non-empty"):
        experiments.repeat_stacked(_rnn(None), signals, [0], [], steps=1)
    with pytest.raises(ValueError, match="distinct"):
        experiments.repeat_stacked(_rnn(None), signals, [0, 0], [0.1], steps=1)
    with pytest.raises(TypeError, match="only RecurrentClassifier"):
        experiments.repeat_stacked(lambda: models.mlp(40, [8], 10), signals, [0], [0.1], steps=1)


def test_runs_join_keeps_every_part_in_order_and_refuses_a_repeated_seed():
    a = experiments.Runs(seeds=[0], histories=["h0"], models=["m0"], seconds=[1.0])
    b = experiments.Runs(seeds=[1, 2], histories=["h1", "h2"], models=["m1", "m2"],
                         seconds=[2.0, 3.0])
    joined = experiments.Runs.join(a, b)
    assert joined == experiments.Runs(seeds=[0, 1, 2], histories=["h0", "h1", "h2"],
                                      models=["m0", "m1", "m2"], seconds=[1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="more than one part"):
        experiments.Runs.join(a, a)
    with pytest.raises(ValueError, match="at least one"):
        experiments.Runs.join()
