"""Batch normalization for PyTorch: a functional form and modules, CPU and CUDA.

>>> from bnlib import torch as bnt
>>> y = bnt.batch_norm(x, running_mean, running_var, weight, bias, training=True)  # = F.batch_norm
>>> bn = bnt.BatchNorm2d(16)                                                        # = nn.BatchNorm2d
>>> y = bnt.batch_norm_compiled(x, None, None, weight, bias, training=True)  # opt-in, torch.compile

>>> ln, gn = bnt.LayerNorm(64), bnt.GroupNorm(4, 16)   # = nn.LayerNorm, nn.GroupNorm
>>> brn = bnt.BatchRenorm(16, r_max=3.0, d_max=5.0)    # Batch Renormalization
>>> gbn = bnt.GhostBatchNorm(16, group_size=4)         # statistics per group of 4 examples
>>> sbn = bnt.SyncBatchNorm(16)                        # statistics over all processes

Requires torch >= 2.4.
"""

from .functional import batch_norm
from .compiled import batch_norm_compiled
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .norms import GroupNorm, LayerNorm, group_norm, layer_norm
from .ghost import GhostBatchNorm, ghost_batch_norm
from .renorm import BatchRenorm, batch_renorm, relax_limits, renorm_limits
from .sync import SyncBatchNorm, sync_batch_norm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm", "GhostBatchNorm",
           "GroupNorm", "LayerNorm", "SyncBatchNorm", "batch_norm", "batch_norm_compiled",
           "batch_renorm", "ghost_batch_norm", "group_norm", "layer_norm", "relax_limits",
           "renorm_limits", "sync_batch_norm"]
