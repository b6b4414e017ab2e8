"""bnlib.book.models.cnn: layout, shapes, the redundant conv bias, parity of BN factories, errors."""

import pytest
import torch

from bnlib.book import data, models, training
from bnlib import torch as bnt


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
    assert h.test_accuracy[0] < 0.3 and h.final_accuracy > 0.85 and not h.diverged


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
