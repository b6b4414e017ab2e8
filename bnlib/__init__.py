"""bnlib: batch normalization, exact and readable, in NumPy and PyTorch.

The companion library of the book *Batch Normalization, Measured*. Two implementations with
the semantics of ``torch.nn.BatchNorm*`` (biased variance to normalize, unbiased variance in
``running_var``, ``momentum`` = weight of the new batch, ``momentum=None`` = cumulative
average), tested against ``torch.nn`` in float64:

>>> from bnlib import numpy as bnp    # NumPy: functions, layers, a gradient checker
>>> from bnlib import torch as bnt    # PyTorch: batch_norm (= F.batch_norm), BatchNorm1d/2d/3d,
...                                   # variants, population statistics, folding

``bnlib`` and ``bnlib.numpy`` need only NumPy; ``bnlib.torch`` needs torch >= 2.4 and is
imported only when asked for. ``python -m bnlib.bench`` times bnlib against torch's kernels.
The book's notebooks use a toolkit apart from the library, :mod:`bnlib.book` (data, models,
training, the experimental protocol, figures).
"""

__version__ = "0.1.0"
