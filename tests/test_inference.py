"""bnlib.inference: running averages, Algorithm 2 (against update_bn), folding (against
torch.nn.utils.fusion), frozen batch norm, predictions with batch statistics."""

import copy

import numpy as np
import pytest
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.optim.swa_utils import update_bn

from bnlib.book import inference, models
from bnlib import numpy as bnp
from bnlib import torch as bnt

FOLD_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # max abs difference, folded vs not
NORMS_1D = {"torch.nn": torch.nn.BatchNorm1d, "bnlib": bnt.BatchNorm1d}
NORMS_2D = {"torch.nn": torch.nn.BatchNorm2d, "bnlib": bnt.BatchNorm2d}


def _data(n=240, d=12, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=dtype) * torch.linspace(0.5, 3, d) + 2


def _mlp(norm, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return models.mlp(12, [8, 6], 3, norm=norm).to(dtype)


def _cnn(norm, dtype=torch.float64, seed=0, bias=False, affine=True):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, bias=bias), norm(4, affine=affine), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1, bias=bias), norm(5, affine=affine),
    ).to(dtype)


def _bns(model):
    return [m for m in model.modules() if bnt.is_batch_norm(m)]


def _randomize_affine(model, seed=1):
    """gamma and beta away from 1 and 0, so that a test sees them."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in _bns(model):
            if bn.weight is not None:
                bn.weight.copy_(torch.rand(bn.num_features, generator=gen, dtype=bn.weight.dtype) + 0.5)
                bn.bias.copy_(torch.randn(bn.num_features, generator=gen, dtype=bn.bias.dtype))
    return model


def _assert_buffers_equal(a, b, atol=0.0):
    for bn_a, bn_b in zip(_bns(a), _bns(b)):
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            x, y = getattr(bn_a, name), getattr(bn_b, name)
            assert torch.allclose(x.double(), y.double(), rtol=0, atol=atol), name


# running_average ---------------------------------------------------------------------------

@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0, 0.0, None])
@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_running_average_replays_the_buffers_of_a_module(norm, momentum):
    bn = norm(4, momentum=momentum, dtype=torch.float64)
    means, variances = [], []
    for t in range(7):
        x = _data(10, 4, seed=t)
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


# recompute_statistics (Algorithm 2) --------------------------------------------------------

@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_recompute_equals_update_bn_on_an_mlp(norm):
    x = _data()
    ours, theirs = _mlp(norm), _mlp(torch.nn.BatchNorm1d)
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        model(x[:50])  # running statistics that are not the initial ones
    ours.eval()
    theirs.eval()
    bnt.recompute_statistics(ours, x.split(40))
    update_bn(x.split(40), theirs)
    _assert_buffers_equal(ours, theirs, atol=1e-12)
    assert not ours.training and all(bn.momentum == 0.1 for bn in _bns(ours))


@pytest.mark.parametrize("norm", NORMS_2D.values(), ids=NORMS_2D.keys())
def test_recompute_equals_update_bn_on_a_cnn_with_a_loader_of_pairs(norm):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(30, 2, 6, 6, generator=gen, dtype=torch.float64) * 2 + 1
    loader = [(images[i:i + 10], torch.zeros(10)) for i in range(0, 30, 10)]
    ours, theirs = _cnn(norm), _cnn(torch.nn.BatchNorm2d)
    theirs.load_state_dict(ours.state_dict())
    bnt.recompute_statistics(ours, loader)
    update_bn(loader, theirs)
    _assert_buffers_equal(ours, theirs, atol=1e-12)


def test_recompute_is_algorithm_2_average_of_batch_means_and_unbiased_variances():
    x = _data()
    model = _mlp(bnt.BatchNorm1d)
    bnt.recompute_statistics(model, x.split(30))
    z = model[0].linear(x).detach()  # the first batch norm's input does not depend on BN
    batch_means = torch.stack([b.mean(0) for b in z.split(30)])
    batch_vars = torch.stack([b.var(0, unbiased=False) for b in z.split(30)])
    m = 30
    assert torch.allclose(model[0].norm.running_mean, batch_means.mean(0), atol=1e-12)
    assert torch.allclose(model[0].norm.running_var, m / (m - 1) * batch_vars.mean(0), atol=1e-12)
    assert int(model[0].norm.num_batches_tracked) == len(batch_means)


def test_one_batch_gives_the_statistics_of_the_inference_network():
    x = _data(n=2000)
    model = _randomize_affine(_mlp(bnt.BatchNorm1d))
    bnt.recompute_statistics(model, [x])
    model.eval()
    z0 = model[0].linear(x)
    z1 = model[1].linear(model[0](x)).detach()  # layer 1 fed by layer 0 in eval mode
    assert torch.allclose(model[0].norm.running_mean, z0.mean(0), atol=1e-12)
    assert torch.allclose(model[0].norm.running_var, z0.var(0), atol=1e-12)
    # Upstream was normalized with the biased variance, eval mode uses the unbiased one:
    # they differ by the factor n / (n - 1).
    assert torch.allclose(model[1].norm.running_mean, z1.mean(0), rtol=1e-3, atol=1e-3)
    assert torch.allclose(model[1].norm.running_var, z1.var(0), rtol=2e-3)


def test_recompute_restores_each_modules_mode_and_each_momentum():
    model = _mlp(bnt.BatchNorm1d)
    model[0].norm.momentum, model[1].norm.momentum = None, 0.3
    model.train()
    model[1].norm.eval()  # frozen by hand inside a training model: must stay frozen
    bnt.recompute_statistics(model, _data().split(60))
    assert model.training and model[0].norm.training and not model[1].norm.training
    assert model[0].norm.momentum is None and model[1].norm.momentum == 0.3


def test_recompute_leaves_everything_as_it_was_when_a_batch_fails():
    x = _data()
    model = _mlp(bnt.BatchNorm1d)
    model(x)
    model.eval()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnt.recompute_statistics(model, [x[:50], x[50:51]])  # a batch of one
    _assert_buffers_equal(model, before)
    assert not model.training and all(bn.momentum == 0.1 for bn in _bns(model))


def test_recompute_errors():
    x = _data()
    with pytest.raises(ValueError, match="no batch-norm layer"):
        bnt.recompute_statistics(torch.nn.Linear(12, 3), [x])
    with pytest.raises(ValueError, match="no batch-norm layer"):
        bnt.recompute_statistics(
            _mlp(lambda w: bnt.BatchNorm1d(w, track_running_stats=False)), [x])
    model = _mlp(bnt.BatchNorm1d)
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="batches is empty"):
        bnt.recompute_statistics(model, [])
    _assert_buffers_equal(model, before)
    with pytest.raises(TypeError, match="model must be"):
        bnt.recompute_statistics("model", [x])


# folding -----------------------------------------------------------------------------------

def _linear_pair(norm, bias, affine, dtype, device):
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 6, bias=bias).to(dtype=dtype, device=device)
    bn = norm(6, affine=affine).to(dtype=dtype, device=device)
    pair = _randomize_affine(torch.nn.Sequential(linear, bn))
    bnt.recompute_statistics(pair, _data(dtype=dtype).to(device).split(60))
    return pair.eval()


def _conv_pair(norm, bias, affine, dtype, device):
    model = _randomize_affine(_cnn(norm, dtype, bias=bias, affine=affine)).to(device)
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(24, 2, 7, 7, generator=gen, dtype=dtype) * 3 + 1
    bnt.recompute_statistics(model, images.to(device).split(8))
    return model[:2].eval()


@pytest.mark.parametrize("dtype", FOLD_TOL, ids=["float32", "float64"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_folded_linear_equals_linear_then_bn_in_eval_and_torch_fusion(norm, bias, affine,
                                                                      dtype, device):
    pair = _linear_pair(norm, bias, affine, dtype, device)
    folded = bnt.fold_batch_norm(pair[0], pair[1])
    x = (_data(50, dtype=dtype) * 3).to(device)
    with torch.no_grad():
        assert (folded(x) - pair(x)).abs().max().item() <= FOLD_TOL[dtype]
    assert isinstance(folded, torch.nn.Linear) and folded.bias is not None
    assert folded.weight.dtype == dtype and folded.weight.device == pair[0].weight.device
    if affine and norm is torch.nn.BatchNorm1d:  # torch's linear fusion needs gamma and beta
        fused = fuse_linear_bn_eval(pair[0], pair[1])
        assert torch.allclose(folded.weight, fused.weight, rtol=FOLD_TOL[dtype], atol=0)
        assert torch.allclose(folded.bias, fused.bias, rtol=FOLD_TOL[dtype],
                              atol=FOLD_TOL[dtype])


@pytest.mark.parametrize("dtype", FOLD_TOL, ids=["float32", "float64"])
@pytest.mark.parametrize("affine", [True, False], ids=["affine", "no_affine"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no_bias"])
@pytest.mark.parametrize("norm", NORMS_2D.values(), ids=NORMS_2D.keys())
def test_folded_conv2d_equals_conv_then_bn_in_eval_and_torch_fusion(norm, bias, affine,
                                                                    dtype, device):
    pair = _conv_pair(norm, bias, affine, dtype, device)
    folded = bnt.fold_batch_norm(pair[0], pair[1])
    gen = torch.Generator().manual_seed(1)
    x = (torch.randn(5, 2, 9, 9, generator=gen, dtype=dtype) * 3 + 1).to(device)
    with torch.no_grad():
        assert (folded(x) - pair(x)).abs().max().item() <= FOLD_TOL[dtype]
    if norm is torch.nn.BatchNorm2d:
        fused = fuse_conv_bn_eval(pair[0], pair[1])
        assert torch.allclose(folded.weight, fused.weight, rtol=FOLD_TOL[dtype], atol=0)
        with torch.no_grad():
            assert (folded(x) - fused(x)).abs().max().item() <= FOLD_TOL[dtype]


def test_fold_leaves_its_inputs_alone_and_keeps_requires_grad():
    pair = _linear_pair(bnt.BatchNorm1d, True, True, torch.float64, "cpu")
    before = copy.deepcopy(pair)
    pair[0].weight.requires_grad_(False)
    folded = bnt.fold_batch_norm(pair[0], pair[1])
    assert not folded.weight.requires_grad
    for a, b in zip(pair.state_dict().values(), before.state_dict().values()):
        assert torch.equal(a, b)


def test_fold_errors():
    pair = _linear_pair(bnt.BatchNorm1d, False, True, torch.float64, "cpu")
    linear, bn = pair[0], pair[1]
    with pytest.raises(ValueError, match="training mode"):
        bnt.fold_batch_norm(linear, copy.deepcopy(bn).train())
    with pytest.raises(ValueError, match="no running statistics"):
        bnt.fold_batch_norm(linear, bnt.BatchNorm1d(6, track_running_stats=False).eval())
    with pytest.raises(ValueError, match="channel mismatch"):
        bnt.fold_batch_norm(linear, bnt.BatchNorm1d(5).double().eval())
    with pytest.raises(TypeError, match="Linear or torch.nn.Conv"):
        bnt.fold_batch_norm(torch.nn.ConvTranspose2d(3, 6, 3), bn)
    with pytest.raises(TypeError, match="bn must be"):
        bnt.fold_batch_norm(linear, torch.nn.LayerNorm(6))
    with pytest.raises(TypeError, match="bn must be"):
        bnt.fold_batch_norm(linear, bnp.BatchNorm(6).eval())


@pytest.mark.parametrize("dtype", FOLD_TOL, ids=["float32", "float64"])
def test_fold_batch_norms_folds_every_pair_of_an_mlp_and_keeps_the_rest(dtype):
    model = _randomize_affine(models.mlp(12, [8, 6], 3, norm=bnt.BatchNorm1d)).to(dtype)
    bnt.recompute_statistics(model, _data(dtype=dtype).split(40))
    model.eval()
    folded = bnt.fold_batch_norms(model)
    assert [type(block.norm) for block in folded[:2]] == [torch.nn.Identity] * 2
    assert all(isinstance(block.norm, bnt.BatchNorm1d) for block in model[:2])
    x = _data(70, dtype=dtype) * 2
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() <= FOLD_TOL[dtype]
    after = models.mlp(12, [8], 3, norm=bnt.BatchNorm1d, norm_position="after").eval()
    kept = bnt.fold_batch_norms(after)  # BN after the activation: nothing to fold into
    assert isinstance(kept[0].norm, bnt.BatchNorm1d)
    with pytest.raises(ValueError, match="training mode"):
        bnt.fold_batch_norms(model.train())


def test_fold_batch_norms_on_a_cnn_matches_eval_mode():
    model = _randomize_affine(_cnn(bnt.BatchNorm2d, torch.float32))
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(32, 2, 8, 8, generator=gen) * 2 - 1
    bnt.recompute_statistics(model, images.split(16))
    model.eval()
    folded = bnt.fold_batch_norms(model)
    assert not any(bnt.is_batch_norm(m) for m in folded.modules())
    with torch.no_grad():
        assert (folded(images) - model(images)).abs().max().item() <= FOLD_TOL[torch.float32]


# frozen batch norm -------------------------------------------------------------------------

@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_frozen_batch_norm_is_eval_mode_whatever_the_mode_and_learns_only_gamma_beta(norm):
    model = _randomize_affine(_mlp(norm))
    model(_data())
    model.eval()
    frozen = bnt.freeze_batch_norms(model)
    assert [type(block.norm) for block in frozen[:2]] == [bnt.FrozenBatchNorm] * 2
    x = _data(30, seed=3)
    frozen.train()
    assert torch.allclose(frozen(x), model(x), rtol=0, atol=1e-12)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    optimizer = torch.optim.SGD(frozen.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        frozen(x).square().sum().backward()
        optimizer.step()
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert torch.equal(frozen[0].norm.state_dict()[name], before[f"0.norm.{name}"])
    assert not torch.equal(frozen[0].norm.weight, before["0.norm.weight"])
    back = norm(8, dtype=torch.float64)
    back.load_state_dict(frozen[0].norm.state_dict())
    assert torch.equal(back.running_var, frozen[0].norm.running_var)


def test_freeze_errors_and_single_module():
    with pytest.raises(ValueError, match="no running statistics"):
        bnt.freeze_batch_norms(_mlp(lambda w: bnt.BatchNorm1d(w, track_running_stats=False)))
    with pytest.raises(TypeError, match="bn must be"):
        bnt.FrozenBatchNorm(torch.nn.LayerNorm(3))
    frozen = bnt.freeze_batch_norms(torch.nn.BatchNorm1d(3, affine=False))
    assert isinstance(frozen, bnt.FrozenBatchNorm) and frozen.weight is None
    assert torch.equal(frozen(torch.ones(1, 3)), torch.nn.BatchNorm1d(3).eval()(torch.ones(1, 3)))


# predictions with batch statistics ---------------------------------------------------------

def test_predict_with_batch_statistics_normalizes_each_group_on_its_own():
    x = _data()
    model = _randomize_affine(_mlp(bnt.BatchNorm1d)).eval()
    before = copy.deepcopy(model)
    groups = torch.randperm(len(x), generator=torch.Generator().manual_seed(0)).split(50)
    out = inference.predict_with_batch_statistics(model, x, groups)
    reference = copy.deepcopy(model).train()
    for g in groups:
        assert torch.allclose(out[g], reference(x[g]), rtol=0, atol=1e-12)
    _assert_buffers_equal(model, before)
    assert not model.training


def test_predict_with_batch_statistics_errors():
    x, model = _data(10), _mlp(bnt.BatchNorm1d)
    with pytest.raises(ValueError, match="exactly once"):
        inference.predict_with_batch_statistics(model, x, [torch.arange(5), torch.arange(5)])
    with pytest.raises(ValueError, match="batches is empty"):
        inference.predict_with_batch_statistics(model, x, [])
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        inference.predict_with_batch_statistics(model, x, torch.arange(10).split(9))
