"""bnlib.numpy.layer.BatchNorm: state_dict interchange with torch.nn, empty batches, the
momentum=None average, copies (deepcopy, pickle), np.savez round trips, all-or-nothing loading.
(Parity with torch.nn step by step: tests/test_parity.py; bad input: tests/book/test_edge_cases.py.)"""

import copy
import pickle

import numpy as np
import pytest
import torch

from bnlib import numpy as bnp
from tests.reference import assert_same_state, old_checkpoint, trained


def test_numpy_layer_state_dict_loads_both_ways_with_torch_nn():
    theirs = trained(torch.nn.BatchNorm2d(4, dtype=torch.float64))
    ours = bnp.BatchNorm(4).eval()
    ours.load_state_dict(theirs.state_dict())
    assert_same_state(ours.state_dict(), theirs.state_dict())
    x = np.random.default_rng(0).normal(size=(2, 4, 3, 3))
    assert np.abs(ours(x) - theirs(torch.tensor(x)).detach().numpy()).max() < 1e-14

    back = torch.nn.BatchNorm2d(4, dtype=torch.float64)
    back.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    assert_same_state(back.state_dict(), theirs.state_dict())


def test_old_checkpoints_without_num_batches_tracked_load():
    layer = bnp.BatchNorm(4)
    layer.load_state_dict(old_checkpoint(4))
    assert int(layer.state_dict()["num_batches_tracked"]) == 0


def test_numpy_layer_rejects_a_state_dict_that_does_not_fit():
    layer = bnp.BatchNorm(4)
    before = layer.state_dict()
    with pytest.raises(KeyError, match="missing keys"):
        layer.load_state_dict({"weight": np.ones(4)})
    bad = {**torch.nn.BatchNorm1d(4).state_dict(), "running_var": torch.ones(5)}
    with pytest.raises(ValueError, match="running_var"):
        layer.load_state_dict(bad)
    assert_same_state(layer.state_dict(), before)


def test_a_layer_without_affine_has_torchs_keys():
    assert list(bnp.BatchNorm(3, affine=False).state_dict()) == list(
        torch.nn.BatchNorm1d(3, affine=False).state_dict())


def test_an_empty_batch_gives_an_empty_output_and_counts_like_torch():
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


def test_numpy_layer_copies_carry_every_array_and_are_independent():
    original = bnp.BatchNorm(3)
    original(np.random.default_rng(0).normal(size=(8, 3)))
    for twin in (copy.deepcopy(original), pickle.loads(pickle.dumps(original))):
        assert_same_state(twin.state_dict(), original.state_dict())
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
