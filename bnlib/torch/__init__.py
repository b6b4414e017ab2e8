"""Batch normalization for PyTorch: a functional form and modules, CPU and CUDA.

>>> from bnlib import torch as bnt
>>> y = bnt.batch_norm(x, running_mean, running_var, weight, bias, training=True)  # = F.batch_norm
>>> bn = bnt.BatchNorm2d(16)                                                        # = nn.BatchNorm2d

Requires torch >= 2.4.
"""

from .functional import batch_norm
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "batch_norm"]
