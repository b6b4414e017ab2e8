"""bnlib.models and bnlib.training: structure, determinism, learning, divergence."""

import pytest
import torch

from bnlib.book import data, models, training
from bnlib import torch as bnt


def test_mlp_layout_and_redundant_bias():
    net = models.mlp(64, [32, 16], 10, activation="sigmoid", norm=bnt.BatchNorm1d)
    assert [list(block._modules) for block in net[:2]] == [["linear", "norm", "act"]] * 2
    assert net[0].linear.bias is None  # BN right after the Linear layer cancels its bias
    after = models.mlp(64, [32], 10, norm=bnt.BatchNorm1d, norm_position="after")
    assert list(after[0]._modules) == ["linear", "act", "norm"] and after[0].linear.bias is not None
    plain = models.mlp(64, [32], 10)
    assert list(plain[0]._modules) == ["linear", "act"]
    assert plain(torch.zeros(5, 64)).shape == (5, 10)
    with pytest.raises(ValueError, match="norm_position"):
        models.mlp(64, [32], 10, norm=bnt.BatchNorm1d, norm_position="middle")


def test_mlp_dropout_ends_each_hidden_block():
    net = models.mlp(64, [32, 16], 10, norm=bnt.BatchNorm1d, dropout=0.5)
    assert [list(block._modules) for block in net[:2]] == [["linear", "norm", "act", "dropout"]] * 2
    assert net[0].dropout.p == 0.5
    with pytest.raises(ValueError, match="dropout"):
        models.mlp(64, [32], 10, dropout=1.0)


def test_mlp_init_std_sets_every_linear_weight():
    torch.manual_seed(0)
    net = models.mlp(200, [400], 10, init_std=0.01)
    assert abs(net[0].linear.weight.std().item() - 0.01) < 5e-4
    assert net[1].bias.abs().max().item() == 0.0


def _run(seed, lr=0.1, steps=150):
    training.deterministic(seed)
    net = models.mlp(64, [32], 10, norm=bnt.BatchNorm1d)
    return training.train(net, data.load_digits(), steps=steps, batch_size=32, lr=lr,
                          eval_every=50, seed=seed)


def test_training_learns_and_is_reproducible():
    a, b = _run(0), _run(0)
    assert a.test_accuracy == b.test_accuracy and a.train_loss == b.train_loss
    assert a.steps == [0, 50, 100, 150]
    assert a.test_accuracy[0] < 0.3 and a.final_accuracy > 0.85
    assert a.steps_to(0.85) is not None and a.steps_to(1.01) is None
    assert not a.diverged


def test_a_huge_learning_rate_is_reported_as_divergence():
    training.deterministic(0)
    net = models.mlp(64, [32], 10)
    with torch.no_grad():
        net[0].linear.weight.mul_(1e150)
    h = training.train(net, data.load_digits(), steps=50, lr=1e300, eval_every=10)
    assert h.diverged and h.final_accuracy == pytest.approx(0.1)
    assert h.steps == sorted(set(h.steps))


def test_deterministic_makes_the_data_s_dtype_the_default():
    torch.set_default_dtype(torch.float32)
    training.deterministic(0)
    assert torch.get_default_dtype() == data.DTYPE == torch.float64
    assert models.mlp(4, [3], 2)[0].linear.weight.dtype == torch.float64


def test_training_refuses_a_model_of_another_dtype_before_any_step():
    training.deterministic(0)
    net = models.mlp(64, [8], 10).float()
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(TypeError, match="torch.float32.*torch.float64"):
        training.train(net, data.load_digits(), steps=5)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_evaluate_restores_every_module_s_own_mode():
    training.deterministic(0)
    net = models.mlp(64, [8], 10, norm=bnt.BatchNorm1d)
    d = data.load_digits()
    net.train()
    net[0].norm.eval()  # frozen statistics inside a training model
    training.evaluate(net, d.x_test, d.y_test)
    assert net.training and net[0].linear.training
    assert not net[0].norm.training


def test_mean_and_spread():
    assert training.mean_and_spread([1.0, 3.0]) == (2.0, 1.0, 1.0, 3.0)
