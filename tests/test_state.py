"""State: state_dict interchange with torch.nn, empty batches, the momentum=None average;
copies (deepcopy, pickle), .to(device, dtype), np.savez round trips, all-or-nothing loading."""

import copy
import pickle

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from bnlib import torch as bnt


def _trained(module, steps=3, shape=(8, 4, 3, 3)):
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        module(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1)
    if module.affine:
        with torch.no_grad():
            module.weight.uniform_(0.5, 2, generator=gen)
            module.bias.uniform_(-1, 1, generator=gen)
    return module.eval()


def _assert_same_state(a, b):
    assert list(a) == list(b)
    for k in a:
        assert np.array_equal(np.asarray(a[k]), np.asarray(b[k])), k


def test_torch_module_state_dict_loads_both_ways_with_torch_nn():
    theirs = _trained(torch.nn.BatchNorm2d(4, dtype=torch.float64))
    ours = bnt.BatchNorm2d(4, dtype=torch.float64).eval()
    ours.load_state_dict(theirs.state_dict())
    _assert_same_state(ours.state_dict(), theirs.state_dict())
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-14)

    back = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    back.load_state_dict(_trained(bnt.BatchNorm2d(4, dtype=torch.float64)).state_dict())
    assert int(back.num_batches_tracked) == 3


def test_numpy_layer_state_dict_loads_both_ways_with_torch_nn():
    theirs = _trained(torch.nn.BatchNorm2d(4, dtype=torch.float64))
    ours = bnp.BatchNorm(4).eval()
    ours.load_state_dict(theirs.state_dict())
    _assert_same_state(ours.state_dict(), theirs.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3))
    assert np.abs(ours(x) - theirs(torch.tensor(x)).detach().numpy()).max() < 1e-14

    back = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    _assert_same_state(back.state_dict(), theirs.state_dict())


@pytest.mark.parametrize("make", [lambda: bnp.BatchNorm(4), lambda: bnt.BatchNorm1d(4)],
                         ids=["numpy", "torch"])
def test_old_checkpoints_without_num_batches_tracked_load(make):
    layer = make()
    old = {k: v for k, v in torch.nn.BatchNorm1d(4).state_dict().items()
           if k != "num_batches_tracked"}
    layer.load_state_dict(old)
    assert int(layer.state_dict()["num_batches_tracked"]) == 0


def test_numpy_layer_rejects_a_state_dict_that_does_not_fit():
    layer = bnp.BatchNorm(4)
    before = layer.state_dict()
    with pytest.raises(KeyError, match="missing keys"):
        layer.load_state_dict({"weight": np.ones(4)})
    bad = {**torch.nn.BatchNorm1d(4).state_dict(), "running_var": torch.ones(5)}
    with pytest.raises(ValueError, match="running_var"):
        layer.load_state_dict(bad)
    _assert_same_state(layer.state_dict(), before)


def test_layers_without_affine_or_tracking_have_torchs_keys():
    assert list(bnp.BatchNorm(3, affine=False).state_dict()) == list(
        torch.nn.BatchNorm1d(3, affine=False).state_dict())
    assert list(bnt.BatchNorm1d(3, track_running_stats=False).state_dict()) == list(
        torch.nn.BatchNorm1d(3, track_running_stats=False).state_dict())


def test_an_empty_batch_gives_an_empty_output_and_counts_like_torch():
    x = torch.empty(0, 3)
    for layer in (torch.nn.BatchNorm1d(3), bnt.BatchNorm1d(3)):
        assert layer(x).shape == (0, 3)
        assert torch.equal(layer.running_mean, torch.zeros(3))
        assert int(layer.num_batches_tracked) == 1
    layer = bnp.BatchNorm(3)
    assert layer(np.empty((0, 3))).shape == (0, 3)
    assert np.array_equal(layer.running_mean, np.zeros(3)) and int(layer.num_batches_tracked) == 1


def test_momentum_none_keeps_the_exact_average_of_the_batch_statistics():
    rng = np.random.default_rng(0)
    batches = [rng.normal(loc=i, size=(10, 2)) for i in range(5)]
    layer = bnp.BatchNorm(2, momentum=None)
    for b in batches:
        layer(b)
    assert np.allclose(layer.running_mean, np.mean([b.mean(0) for b in batches], 0), atol=1e-14)
    assert np.allclose(layer.running_var, np.mean([b.var(0, ddof=1) for b in batches], 0),
                       atol=1e-14)


def _bnt_trained(cls=bnt.BatchNorm2d, shape=(4, 3, 2, 2)):
    module = cls(3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(2):
        module(torch.randn(shape, generator=gen) * 3 + 1)
    with torch.no_grad():
        module.weight.uniform_(0.5, 2, generator=gen)
    return module


def _tensors(module):
    return dict(module.named_parameters()) | dict(module.named_buffers())


@pytest.mark.parametrize("clone", [copy.deepcopy, lambda m: pickle.loads(pickle.dumps(m))],
                         ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("cls", [bnt.BatchNorm1d, bnt.BatchNorm2d, bnt.BatchNorm3d])
def test_torch_module_copies_carry_every_buffer_and_are_independent(clone, cls):
    shape = {bnt.BatchNorm1d: (8, 3), bnt.BatchNorm2d: (4, 3, 2, 2),
             bnt.BatchNorm3d: (2, 3, 2, 2, 2)}[cls]
    original = _bnt_trained(cls, shape)
    twin = clone(original)
    _assert_same_state(twin.state_dict(), original.state_dict())
    assert isinstance(twin.weight, torch.nn.Parameter) and twin.weight.requires_grad
    x = torch.randn(shape)
    assert torch.equal(twin(x), original(x))  # the same training step on both
    _assert_same_state(twin.state_dict(), original.state_dict())
    twin(x * 5)  # a step on the copy only
    assert int(twin.num_batches_tracked) == int(original.num_batches_tracked) + 1
    assert not torch.equal(twin.running_mean, original.running_mean)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_to_device_and_dtype_moves_every_parameter_and_buffer(device, dtype):
    module = _bnt_trained()
    before = {k: v.detach().clone() for k, v in _tensors(module).items()}
    assert module.to(device, dtype) is module
    for name, tensor in _tensors(module).items():
        assert tensor.device.type == device, name
        if name == "num_batches_tracked":
            assert tensor.dtype == torch.long and int(tensor) == 2
        else:
            assert tensor.dtype == dtype, name
            assert torch.equal(tensor.cpu(), before[name].to(dtype)), name
    assert isinstance(module.weight, torch.nn.Parameter)
    x = torch.randn(4, 3, 2, 2, device=device, dtype=dtype)
    assert module(x).device.type == device and int(module.num_batches_tracked) == 3


def test_numpy_layer_copies_carry_every_array_and_are_independent():
    original = bnp.BatchNorm(3)
    original(np.random.default_rng(0).normal(size=(8, 3)))
    for twin in (copy.deepcopy(original), pickle.loads(pickle.dumps(original))):
        _assert_same_state(twin.state_dict(), original.state_dict())
        twin(np.random.default_rng(1).normal(size=(8, 3)))
        assert int(twin.num_batches_tracked) == 2 and int(original.num_batches_tracked) == 1


@pytest.mark.parametrize("kwargs", [{}, {"dtype": np.float32}, {"dtype": np.float16},
                                    {"affine": False}, {"momentum": None}],
                         ids=["float64", "float32", "float16", "no-affine", "cumulative"])
def test_numpy_layer_state_round_trips_through_np_savez_exactly(tmp_path, kwargs):
    rng = np.random.default_rng(0)
    layer = bnp.BatchNorm(3, **kwargs)
    for _ in range(3):
        layer(rng.normal(size=(8, 3, 4)) * 3 + 1)
    if layer.affine:
        layer.weight[:] = rng.uniform(0.5, 2, size=3)
    path = tmp_path / "bn.npz"
    np.savez(path, **layer.state_dict())
    loaded = bnp.BatchNorm(3, **kwargs)
    with np.load(path, allow_pickle=False) as saved:  # plain arrays: no pickle involved
        loaded.load_state_dict(saved)
    for key, value in layer.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype and np.array_equal(got, value), key
    x = rng.normal(size=(5, 3, 4))
    assert np.array_equal(loaded.eval()(x), layer.eval()(x))


def test_a_failed_load_inside_a_larger_model_leaves_the_module_unchanged():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), bnt.BatchNorm1d(3))
    model(torch.randn(8, 3))
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    state = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).state_dict()
    state["1.running_var"] = torch.ones(5)
    with pytest.raises(RuntimeError, match="size mismatch for 1.running_var"):
        model.load_state_dict(state)
    _assert_same_state(model[1].state_dict(), before)
