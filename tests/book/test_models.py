"""bnlib.book.models: the MLP (layout, the redundant bias, dropout, init), the CNN (layout,
shapes, the redundant conv bias, parity of BN factories, errors) and the recurrent classifier
(the Elman recurrence it documents, sequences longer than max_steps, errors)."""

import copy

import pytest
import torch

from bnlib import torch as bnt
from bnlib.book import data, models, training
from bnlib.book.models import RecurrentClassifier
from tests.reference import TOL, rel_err

# mlp -----------------------------------------------------------------------------------------

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


# cnn -----------------------------------------------------------------------------------------

def test_cnn_layout_with_norm_before_drops_the_conv_bias():
    net = models.cnn(1, [8, 16], 10, norm=bnt.BatchNorm2d)
    assert [list(block._modules) for block in net[:2]] == [["conv", "norm", "act", "pool"]] * 2
    assert all(block.conv.bias is None for block in net[:2])  # BN right after cancels a bias
    assert [block.norm.num_features for block in net[:2]] == [8, 16]
    assert isinstance(net[0].norm, bnt.BatchNorm2d)
    assert list(net[-1]._modules) == ["gap", "flatten", "linear"]


def test_cnn_layout_with_norm_after_or_without_norm_keeps_the_bias():
    after = models.cnn(1, [8], 10, norm=torch.nn.BatchNorm2d, norm_position="after")
    assert list(after[0]._modules) == ["conv", "act", "norm", "pool"]
    assert after[0].conv.bias is not None
    plain = models.cnn(3, [4, 4], 5, activation="tanh", pool=1)
    assert list(plain[0]._modules) == ["conv", "act"] and plain[0].conv.bias is not None
    assert isinstance(plain[0].act, torch.nn.Tanh)


@pytest.mark.parametrize("image_size, channels, pool, flat", [
    (28, [8, 16], 2, 16 * 7 * 7), (14, [8, 16], 2, 16 * 3 * 3), (8, [4], 1, 4 * 8 * 8),
    (9, [4, 4], 3, 4 * 1 * 1),
])
@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_cnn_flattening_head_matches_the_pooled_size(image_size, channels, pool, flat, kernel_size):
    net = models.cnn(2, channels, 7, norm=bnt.BatchNorm2d, kernel_size=kernel_size, pool=pool,
                     image_size=image_size)
    assert net[-1].linear.in_features == flat
    assert net(torch.randn(3, 2, image_size, image_size)).shape == (3, 7)


def test_cnn_global_pooling_head_accepts_any_image_size():
    net = models.cnn(1, [4, 6], 10, norm=bnt.BatchNorm2d)
    assert net[-1].linear.in_features == 6
    for side in (8, 14, 28):
        assert net(torch.randn(2, 1, side, side)).shape == (2, 10)


@pytest.mark.parametrize("norm_position", ["before", "after"])
def test_cnn_with_bnlib_bn_equals_cnn_with_torch_bn_in_float64(norm_position):
    torch.manual_seed(0)
    ours = models.cnn(1, [3, 5], 4, norm=bnt.BatchNorm2d, norm_position=norm_position,
                      image_size=8).double()
    ref = models.cnn(1, [3, 5], 4, norm=torch.nn.BatchNorm2d, norm_position=norm_position,
                     image_size=8).double()
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(6, 1, 8, 8, dtype=torch.float64)
    readout = torch.randn(6, 4, dtype=torch.float64)
    for net in (ours, ref):
        (net(x) * readout).sum().backward()
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    for name, buf in ours.state_dict().items():
        torch.testing.assert_close(buf, ref.state_dict()[name], rtol=1e-12, atol=1e-12, msg=name)


def test_cnn_with_bn_learns_the_8x8_digits():
    training.deterministic(0)
    net = models.cnn(1, [8], 10, norm=bnt.BatchNorm2d, image_size=8)
    h = training.train(net, data.load_digits(images=True), steps=100, batch_size=32, lr=0.1,
                       eval_every=100)
    assert h.accuracy[0] < 0.3 and h.final_accuracy > 0.85 and not h.diverged


@pytest.mark.parametrize("kwargs, message", [
    (dict(in_channels=0), "in_channels"),
    (dict(num_classes=1.5), "num_classes"),
    (dict(activation="gelu"), "activation"),
    (dict(channels=[]), "channels"),
    (dict(channels=[8, 0]), "channels"),
    (dict(channels=[8.0]), "channels"),
    (dict(norm_position="middle"), "norm_position"),
    (dict(kernel_size=4), "kernel_size"),
    (dict(kernel_size=0), "kernel_size"),
    (dict(pool=0), "pool"),
    (dict(image_size=3, channels=[4, 4]), "image_size"),
    (dict(image_size=0), "image_size"),
    (dict(image_size=14.0), "image_size"),
])
def test_cnn_rejects_bad_arguments(kwargs, message):
    args = dict(in_channels=1, channels=[4], num_classes=10, norm=bnt.BatchNorm2d)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        models.cnn(**args)


# RecurrentClassifier -------------------------------------------------------------------------

def test_classifier_is_the_elman_recurrence_it_documents():
    torch.manual_seed(0)
    model = RecurrentClassifier(1, 5, 3, norm="layer", chunk=2).double()
    x = torch.randn(4, 6, dtype=torch.float64)
    steps = x.reshape(4, 3, 2)
    h = torch.zeros(4, 5, dtype=torch.float64)
    for t in range(3):
        a = steps[:, t] @ model.input.weight.T + h @ model.recurrent.weight.T
        h = torch.tanh(torch.nn.functional.layer_norm(a, (5,), model.norm.weight, model.norm.bias))
    logits, states = model(x, return_states=True)
    assert rel_err(logits, model.output(h)) <= TOL
    assert states.shape == (4, 3, 5)


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_classifier_accepts_sequences_longer_than_max_steps(norm):
    model = RecurrentClassifier(2, 8, 4, norm=norm, max_steps=3)
    model(torch.randn(6, 3, 2))
    assert model.eval()(torch.randn(2, 9, 2)).shape == (2, 4)


@pytest.mark.parametrize("call,exc,message", [
    (lambda: RecurrentClassifier(1, 4, 2, norm="group"), ValueError, "norm must be"),
    (lambda: RecurrentClassifier(1, 4, 2, norm="batch"), ValueError, "needs max_steps"),
    (lambda: RecurrentClassifier(1, 4, 2, chunk=4)(torch.ones(2, 6)), ValueError,
     "does not split into steps of 4"),
], ids=["norm", "max-steps", "chunk"])
def test_recurrent_classifier_rejects_bad_settings_with_a_clear_error(call, exc, message):
    with pytest.raises(exc, match=message):
        call()


# he_init -------------------------------------------------------------------------------------

def test_he_init_draws_every_weight_with_variance_two_over_fan_in():
    training.deterministic(0)
    net = models.he_init(models.cnn(16, [64, 64], 10, norm=bnt.BatchNorm2d, image_size=8))
    for layer, fan_in in ((net[0].conv, 16 * 9), (net[1].conv, 64 * 9), (net[2].linear, 64 * 2 * 2)):
        assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
        assert layer.bias is None or layer.bias.abs().max().item() == 0.0
    assert net[2].linear.bias.abs().max().item() == 0.0
    assert torch.equal(net[0].norm.weight, torch.ones(64))  # gamma and beta are left alone
    assert torch.equal(net[0].norm.bias, torch.zeros(64))


def test_he_init_keeps_the_signal_through_relu_layers_where_torch_default_shrinks_it():
    training.deterministic(0)
    x = torch.randn(512, 512)
    gain = {}
    for name, build in (("default", lambda: models.mlp(512, [512] * 4, 10)),
                        ("he", lambda: models.he_init(models.mlp(512, [512] * 4, 10)))):
        net = build()
        with torch.no_grad():
            first, fourth = net[0].linear(x), net[3].linear(net[:3](x))  # pre-activations
        gain[name] = (fourth.pow(2).mean() / first.pow(2).mean()).item()
    # three ReLU layers: He keeps E[z^2]; torch's default divides it by about 6 per layer
    # (6^3 = 216; its random biases add back a little)
    assert 0.8 < gain["he"] < 1.25
    assert gain["default"] < 1 / 100


def test_he_init_rejects_what_it_cannot_initialize():
    with pytest.raises(TypeError, match="Module"):
        models.he_init(lambda: None)
    with pytest.raises(ValueError, match="nothing to initialize"):
        models.he_init(torch.nn.ReLU())


# glorot_init ---------------------------------------------------------------------------------

def test_glorot_init_draws_every_weight_with_variance_two_over_fan_in_plus_fan_out():
    training.deterministic(0)
    net = models.glorot_init(models.mlp(784, [100, 100], 10, activation="sigmoid"))
    for layer, fans in ((net[0].linear, 784 + 100), (net[1].linear, 200), (net[2], 110)):
        assert layer.weight.std().item() == pytest.approx((2 / fans) ** 0.5, rel=0.06)
        assert layer.bias.abs().max().item() == 0.0
    conv = models.glorot_init(models.cnn(8, [16], 10, norm=bnt.BatchNorm2d))
    assert conv[0].conv.weight.std().item() == pytest.approx((2 / (8 * 9 + 16 * 9)) ** 0.5,
                                                             rel=0.06)
    assert torch.equal(conv[0].norm.weight, torch.ones(16))  # gamma and beta are left alone


def test_glorot_init_keeps_the_sigmoid_signal_where_torch_default_shrinks_it():
    # the spread of the last hidden layer's pre-activation over the examples (what tells the
    # digits apart), relative to the first layer's: torch's default loses far more of it
    training.deterministic(0)
    x = data.load_mnist().x_train[:500]
    spread = {}
    for name, build in (("default", lambda: models.mlp(784, [100] * 3, 10, "sigmoid")),
                        ("glorot", lambda: models.glorot_init(
                            models.mlp(784, [100] * 3, 10, "sigmoid")))):
        net = build()
        with torch.no_grad():
            first, third = net[0].linear(x), net[2].linear(net[:2](x))
        spread[name] = (third.std(0).mean() / first.std(0).mean()).item()
    assert spread["glorot"] > 2 * spread["default"]


def test_glorot_init_gain_multiplies_the_standard_deviation_and_defaults_to_one():
    # gain=4 is Bengio's (2012) scale for sigmoid units; the default is unchanged (gain 1)
    stds = {}
    for gain in (None, 1.0, 4):
        training.deterministic(0)
        net = models.mlp(784, [100, 100], 10, activation="sigmoid")
        net = models.glorot_init(net) if gain is None else models.glorot_init(net, gain=gain)
        stds[gain] = [net[0].linear.weight.std().item(), net[1].linear.weight.std().item()]
        assert net[0].linear.bias.abs().max().item() == 0.0
    assert stds[None] == stds[1.0]  # the same draws
    for with_four, with_one in zip(stds[4], stds[1.0]):
        assert with_four == pytest.approx(4 * with_one, rel=1e-12)
    assert stds[4][0] == pytest.approx(4 * (2 / (784 + 100)) ** 0.5, rel=0.06)


@pytest.mark.parametrize("gain", [0, -1.0, float("inf"), float("nan"), True, "4"])
def test_glorot_init_rejects_a_gain_that_is_not_positive_and_finite(gain):
    net = models.mlp(8, [4], 2, activation="sigmoid")
    before = [p.clone() for p in net.parameters()]
    with pytest.raises(ValueError, match="gain"):
        models.glorot_init(net, gain=gain)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))  # left unchanged


def test_glorot_init_rejects_what_it_cannot_initialize():
    with pytest.raises(TypeError, match="Module"):
        models.glorot_init(lambda: None)
    with pytest.raises(ValueError, match="nothing to initialize"):
        models.glorot_init(torch.nn.Sigmoid())


# RecurrentClassifier: Cooijmans et al.'s and the sequence-wise normalization, initialization ---

def _manual_recurrence(model, x, term):
    """The recurrence written out with torch.nn.functional in training mode; ``term(t, u, r)``
    gives a_t from the input term u and the recurrent term r."""
    steps = model.steps(x)
    h = x.new_zeros(x.shape[0], model.hidden_size)
    for t in range(steps.shape[1]):
        h = torch.tanh(term(t, steps[:, t] @ model.input.weight.T, h @ model.recurrent.weight.T))
    return model.output(h)


def test_separate_norm_is_cooijmans_batch_norm_of_each_term_with_gamma_init():
    training.deterministic(0)
    model = RecurrentClassifier(1, 5, 3, norm="batch_separate", max_steps=2, chunk=2,
                                gamma_init=0.1)
    assert model.norm.weight.tolist() == [0.1] * 5 and model.recurrent_norm.bias is None
    x = torch.randn(6, 6)
    bn = torch.nn.functional.batch_norm
    want = _manual_recurrence(model, x, lambda t, u, r: (
        bn(u, None, None, model.norm.weight, model.norm.bias, True)
        + bn(r, None, None, model.recurrent_norm.weight, None, True)))
    assert rel_err(model(x), want) <= TOL
    assert rel_err(model.recurrent_norm.running_mean[0], torch.zeros(5)) == 0.0  # h_0 = 0


def test_sequence_norm_takes_its_statistics_over_batch_and_time():
    training.deterministic(0)
    model = RecurrentClassifier(1, 5, 3, norm="batch_sequence", chunk=2)
    x = torch.randn(6, 8)
    inputs = model.steps(x) @ model.input.weight.T  # (N, T, H)
    flat = inputs.reshape(-1, 5)
    normalized = torch.nn.functional.batch_norm(flat, None, None, model.norm.weight,
                                                model.norm.bias, True).reshape(inputs.shape)
    want = _manual_recurrence(model, x, lambda t, u, r: normalized[:, t] + r)
    assert rel_err(model(x), want) <= TOL
    # the running variance: the unbiased variance of the N * T values of each unit
    assert rel_err(model.norm.running_var, 0.9 + 0.1 * flat.var(0)) <= TOL


def test_glorot_init_draws_the_input_and_output_layers_and_keeps_w_h_orthogonal():
    training.deterministic(0)
    model = RecurrentClassifier(1, 64, 10, chunk=4, init="glorot")
    for layer in (model.input, model.output):
        fan_in, fan_out = layer.in_features, layer.out_features
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.15)
        assert layer.bias.abs().max().item() == 0.0
    w = model.recurrent.weight
    assert rel_err(w @ w.T, torch.eye(64)) <= 1e-12
    with pytest.raises(ValueError, match="init must be"):
        RecurrentClassifier(1, 4, 2, init="he")
    with pytest.raises(ValueError, match="needs max_steps"):
        RecurrentClassifier(1, 4, 2, norm="batch_separate")


# StackedRecurrentClassifier -----------------------------------------------------------------

@pytest.mark.parametrize("norm", [None, "layer", "batch", "batch_separate", "batch_sequence"])
def test_stacked_models_compute_what_each_model_computes_in_training_mode(norm):
    training.deterministic(0)
    models_ = [RecurrentClassifier(1, 6, 3, norm=norm, max_steps=2, chunk=2, gamma_init=0.5)
               for _ in range(3)]
    copies = [copy.deepcopy(m) for m in models_]
    stacked = models.StackedRecurrentClassifier(models_)
    x = torch.randn(3, 5, 6)  # 3 steps, one more than max_steps
    logits = stacked(x)
    logits.square().sum().backward()
    for k, (model, reference) in enumerate(zip(models_, copies)):
        want = reference(x[k])
        want.square().sum().backward()
        assert rel_err(logits[k], want) <= TOL
        for (name, p), q in zip(model.named_parameters(), reference.parameters()):
            assert rel_err(p.grad, q.grad) <= TOL, name
    stacked.sync()
    for model, reference in zip(models_, copies):
        for (name, b), c in zip(model.named_buffers(), reference.buffers()):
            assert rel_err(b, c) <= TOL, name


def test_stacked_models_refuse_what_they_cannot_stack():
    with pytest.raises(ValueError, match="empty"):
        models.StackedRecurrentClassifier([])
    with pytest.raises(TypeError, match="only RecurrentClassifier"):
        models.StackedRecurrentClassifier([torch.nn.Linear(2, 2)])
    with pytest.raises(ValueError, match="differ in configuration"):
        models.StackedRecurrentClassifier([RecurrentClassifier(1, 4, 2),
                                           RecurrentClassifier(1, 4, 2, norm="layer")])
    stacked = models.StackedRecurrentClassifier([RecurrentClassifier(1, 4, 2)] * 2)
    with pytest.raises(ValueError, match="one batch per model"):
        stacked(torch.ones(3, 5, 4))
    with pytest.raises(ValueError, match="training mode only"):
        stacked.eval()(torch.ones(2, 5, 4))
