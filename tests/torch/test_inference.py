"""bnlib.torch.inference: population statistics by Algorithm 2 (against torch's update_bn),
folding into the layer before (against torch.nn.utils.fusion), frozen batch norm. (Running
averages and predictions with batch statistics: tests/book/test_inference.py.)"""

import copy

import pytest
import torch
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from torch.optim.swa_utils import update_bn

from bnlib import numpy as bnp
from bnlib import torch as bnt
from bnlib.book import models
from tests.reference import (assert_buffers_equal, batch_norms, randomize_affine, rows,
                             small_mlp)

FOLD_TOL = {torch.float32: 1e-5, torch.float64: 1e-12}  # max abs difference, folded vs not
NORMS_1D = {"torch.nn": torch.nn.BatchNorm1d, "bnlib": bnt.BatchNorm1d}
NORMS_2D = {"torch.nn": torch.nn.BatchNorm2d, "bnlib": bnt.BatchNorm2d}


def _cnn(norm, dtype=torch.float64, seed=0, bias=False, affine=True):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, bias=bias), norm(4, affine=affine), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 5, 3, padding=1, bias=bias), norm(5, affine=affine),
    ).to(dtype)



# recompute_statistics (Algorithm 2) --------------------------------------------------------

@pytest.mark.parametrize("norm", NORMS_1D.values(), ids=NORMS_1D.keys())
def test_recompute_equals_update_bn_on_an_mlp(norm):
    x = rows()
    ours, theirs = small_mlp(norm), small_mlp(torch.nn.BatchNorm1d)
    theirs.load_state_dict(ours.state_dict())
    for model in (ours, theirs):
        model(x[:50])  # running statistics that are not the initial ones
    ours.eval()
    theirs.eval()
    bnt.recompute_statistics(ours, x.split(40))
    update_bn(x.split(40), theirs)
    assert_buffers_equal(ours, theirs, atol=1e-12)
    assert not ours.training and all(bn.momentum == 0.1 for bn in batch_norms(ours))


@pytest.mark.parametrize("norm", NORMS_2D.values(), ids=NORMS_2D.keys())
def test_recompute_equals_update_bn_on_a_cnn_with_a_loader_of_pairs(norm):
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(30, 2, 6, 6, generator=gen, dtype=torch.float64) * 2 + 1
    loader = [(images[i:i + 10], torch.zeros(10)) for i in range(0, 30, 10)]
    ours, theirs = _cnn(norm), _cnn(torch.nn.BatchNorm2d)
    theirs.load_state_dict(ours.state_dict())
    bnt.recompute_statistics(ours, loader)
    update_bn(loader, theirs)
    assert_buffers_equal(ours, theirs, atol=1e-12)


def test_recompute_is_algorithm_2_average_of_batch_means_and_unbiased_variances():
    x = rows()
    model = small_mlp(bnt.BatchNorm1d)
    bnt.recompute_statistics(model, x.split(30))
    z = model[0].linear(x).detach()  # the first batch norm's input does not depend on BN
    batch_means = torch.stack([b.mean(0) for b in z.split(30)])
    batch_vars = torch.stack([b.var(0, unbiased=False) for b in z.split(30)])
    m = 30
    assert torch.allclose(model[0].norm.running_mean, batch_means.mean(0), atol=1e-12)
    assert torch.allclose(model[0].norm.running_var, m / (m - 1) * batch_vars.mean(0), atol=1e-12)
    assert int(model[0].norm.num_batches_tracked) == len(batch_means)


def test_one_batch_gives_the_statistics_of_the_inference_network():
    x = rows(n=2000)
    model = randomize_affine(small_mlp(bnt.BatchNorm1d))
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
    model = small_mlp(bnt.BatchNorm1d)
    model[0].norm.momentum, model[1].norm.momentum = None, 0.3
    model.train()
    model[1].norm.eval()  # frozen by hand inside a training model: must stay frozen
    bnt.recompute_statistics(model, rows().split(60))
    assert model.training and model[0].norm.training and not model[1].norm.training
    assert model[0].norm.momentum is None and model[1].norm.momentum == 0.3


def test_recompute_leaves_everything_as_it_was_when_a_batch_fails():
    x = rows()
    model = small_mlp(bnt.BatchNorm1d)
    model(x)
    model.eval()
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bnt.recompute_statistics(model, [x[:50], x[50:51]])  # a batch of one
    assert_buffers_equal(model, before)
    assert not model.training and all(bn.momentum == 0.1 for bn in batch_norms(model))


def test_recompute_refuses_models_without_running_statistics_empty_batches_and_non_modules():
    x = rows()
    with pytest.raises(ValueError, match="no batch-norm layer"):
        bnt.recompute_statistics(torch.nn.Linear(12, 3), [x])
    with pytest.raises(ValueError, match="no batch-norm layer"):
        bnt.recompute_statistics(
            small_mlp(lambda w: bnt.BatchNorm1d(w, track_running_stats=False)), [x])
    model = small_mlp(bnt.BatchNorm1d)
    before = copy.deepcopy(model)
    with pytest.raises(ValueError, match="batches is empty"):
        bnt.recompute_statistics(model, [])
    assert_buffers_equal(model, before)
    with pytest.raises(TypeError, match="model must be"):
        bnt.recompute_statistics("model", [x])


# folding -----------------------------------------------------------------------------------

def _linear_pair(norm, bias, affine, dtype, device):
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 6, bias=bias).to(dtype=dtype, device=device)
    bn = norm(6, affine=affine).to(dtype=dtype, device=device)
    pair = randomize_affine(torch.nn.Sequential(linear, bn))
    bnt.recompute_statistics(pair, rows(dtype=dtype).to(device).split(60))
    return pair.eval()


def _conv_pair(norm, bias, affine, dtype, device):
    model = randomize_affine(_cnn(norm, dtype, bias=bias, affine=affine)).to(device)
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
    x = (rows(50, dtype=dtype) * 3).to(device)
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


def test_fold_refuses_training_mode_missing_statistics_and_mismatched_layers():
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
    model = randomize_affine(models.mlp(12, [8, 6], 3, norm=bnt.BatchNorm1d)).to(dtype)
    bnt.recompute_statistics(model, rows(dtype=dtype).split(40))
    model.eval()
    folded = bnt.fold_batch_norms(model)
    assert [type(block.norm) for block in folded[:2]] == [torch.nn.Identity] * 2
    assert all(isinstance(block.norm, bnt.BatchNorm1d) for block in model[:2])
    x = rows(70, dtype=dtype) * 2
    with torch.no_grad():
        assert (folded(x) - model(x)).abs().max().item() <= FOLD_TOL[dtype]
    after = models.mlp(12, [8], 3, norm=bnt.BatchNorm1d, norm_position="after").eval()
    kept = bnt.fold_batch_norms(after)  # BN after the activation: nothing to fold into
    assert isinstance(kept[0].norm, bnt.BatchNorm1d)
    with pytest.raises(ValueError, match="training mode"):
        bnt.fold_batch_norms(model.train())


def test_fold_batch_norms_on_a_cnn_matches_eval_mode():
    model = randomize_affine(_cnn(bnt.BatchNorm2d, torch.float32))
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
    model = randomize_affine(small_mlp(norm))
    model(rows())
    model.eval()
    frozen = bnt.freeze_batch_norms(model)
    assert [type(block.norm) for block in frozen[:2]] == [bnt.FrozenBatchNorm] * 2
    x = rows(30, seed=3)
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


def test_freeze_refuses_untracked_statistics_and_freezes_a_lone_module():
    with pytest.raises(ValueError, match="no running statistics"):
        bnt.freeze_batch_norms(small_mlp(lambda w: bnt.BatchNorm1d(w, track_running_stats=False)))
    with pytest.raises(TypeError, match="bn must be"):
        bnt.FrozenBatchNorm(torch.nn.LayerNorm(3))
    frozen = bnt.freeze_batch_norms(torch.nn.BatchNorm1d(3, affine=False))
    assert isinstance(frozen, bnt.FrozenBatchNorm) and frozen.weight is None
    assert torch.equal(frozen(torch.ones(1, 3)), torch.nn.BatchNorm1d(3).eval()(torch.ones(1, 3)))
