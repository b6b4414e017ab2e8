"""Batch normalization in NumPy: functions, a layer, and a gradient checker.

>>> from bnlib import numpy as bnp
>>> y, cache = bnp.batch_norm_forward(x, gamma, beta, eps=1e-5)   # training: batch statistics
>>> dx, dgamma, dbeta = bnp.batch_norm_backward(dy, cache)         # closed form
>>> y, cache = bnp.batch_norm_inference(x, mean, var, gamma, beta) # fixed statistics
>>> bn = bnp.BatchNorm(num_features)                               # torch.nn.BatchNorm's twin
>>> y, cache = bnp.batch_norm_forward_staged(x, gamma, beta)       # node by node, for teaching
>>> dx, dgamma, dbeta = bnp.batch_norm_backward_staged(dy, cache)  # the graph in reverse
>>> ln, gn = bnp.LayerNorm(64), bnp.GroupNorm(4, 16)               # torch.nn.LayerNorm/GroupNorm
"""

from .functional import (BatchNormCache, batch_norm_backward, batch_norm_forward,
                         batch_norm_inference)
from .gradcheck import numerical_gradient, relative_error
from .layer import BatchNorm
from .norms import (GroupNorm, LayerNorm, group_norm_backward, group_norm_forward,
                    layer_norm_backward, layer_norm_forward)
from .staged import StagedCache, batch_norm_backward_staged, batch_norm_forward_staged

__all__ = [
    "BatchNorm",
    "BatchNormCache",
    "GroupNorm",
    "LayerNorm",
    "StagedCache",
    "batch_norm_backward",
    "batch_norm_backward_staged",
    "batch_norm_forward",
    "batch_norm_forward_staged",
    "batch_norm_inference",
    "group_norm_backward",
    "group_norm_forward",
    "layer_norm_backward",
    "layer_norm_forward",
    "numerical_gradient",
    "relative_error",
]
