"""bnlib.torch.modules (BatchNorm1d/2d/3d): state_dict interchange with torch.nn, empty
batches, copies (deepcopy, pickle), .to(device, dtype), all-or-nothing loading. (Parity with
torch.nn step by step: tests/test_parity.py; bad input: tests/book/test_edge_cases.py.)"""

import copy
import pickle

import pytest
import torch

from bnlib import torch as bnt
from tests.reference import assert_same_state, old_checkpoint, trained


def test_torch_module_state_dict_loads_both_ways_with_torch_nn():
    theirs = trained(torch.nn.BatchNorm2d(4, dtype=torch.float64))
    ours = bnt.BatchNorm2d(4, dtype=torch.float64).eval()
    ours.load_state_dict(theirs.state_dict())
    assert_same_state(ours.state_dict(), theirs.state_dict())
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    assert torch.allclose(ours(x), theirs(x), rtol=0, atol=1e-14)

    back = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    back.load_state_dict(trained(bnt.BatchNorm2d(4, dtype=torch.float64)).state_dict())
    assert int(back.num_batches_tracked) == 3


def test_old_checkpoints_without_num_batches_tracked_load():
    layer = bnt.BatchNorm1d(4)
    layer.load_state_dict(old_checkpoint(4))
    assert int(layer.state_dict()["num_batches_tracked"]) == 0


def test_a_module_without_running_statistics_has_torchs_keys():
    assert list(bnt.BatchNorm1d(3, track_running_stats=False).state_dict()) == list(
        torch.nn.BatchNorm1d(3, track_running_stats=False).state_dict())


def test_an_empty_batch_gives_an_empty_output_and_counts_like_torch():
    x = torch.empty(0, 3)
    for layer in (torch.nn.BatchNorm1d(3), bnt.BatchNorm1d(3)):
        assert layer(x).shape == (0, 3)
        assert torch.equal(layer.running_mean, torch.zeros(3))
        assert int(layer.num_batches_tracked) == 1


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
    assert_same_state(twin.state_dict(), original.state_dict())
    assert isinstance(twin.weight, torch.nn.Parameter) and twin.weight.requires_grad
    x = torch.randn(shape)
    assert torch.equal(twin(x), original(x))  # the same training step on both
    assert_same_state(twin.state_dict(), original.state_dict())
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


def test_a_failed_load_inside_a_larger_model_leaves_the_module_unchanged():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), bnt.BatchNorm1d(3))
    model(torch.randn(8, 3))
    before = {k: v.clone() for k, v in model[1].state_dict().items()}
    state = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3)).state_dict()
    state["1.running_var"] = torch.ones(5)
    with pytest.raises(RuntimeError, match="size mismatch for 1.running_var"):
        model.load_state_dict(state)
    assert_same_state(model[1].state_dict(), before)
