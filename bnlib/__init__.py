"""bnlib: batch normalization, exact and readable, in NumPy and PyTorch.

The companion library of the book *Batch Normalization, Measured*. Two implementations with
the semantics of ``torch.nn.BatchNorm*`` (biased variance to normalize, unbiased variance in
``running_var``, ``momentum`` = weight of the new batch, ``momentum=None`` = cumulative
average), tested against ``torch.nn`` in float64:

>>> from bnlib import numpy as bnp    # NumPy: functions, a layer, a gradient checker
>>> from bnlib import torch as bnt    # PyTorch: batch_norm (= F.batch_norm), BatchNorm1d/2d/3d

``bnlib.torch`` is imported only when asked for, so the NumPy part works without torch.
Helpers for the book's notebooks: :mod:`bnlib.plotting` (figures), :mod:`bnlib.book` (glue).
"""

__version__ = "0.1.0"
