"""Batch normalization for PyTorch: a functional form and modules, CPU and CUDA.

>>> from bnlib import torch as bnt
>>> y = bnt.batch_norm(x, running_mean, running_var, weight, bias, training=True)  # = F.batch_norm
>>> bn = bnt.BatchNorm2d(16)                       # a torch.nn.BatchNorm2d computed by bnlib
>>> y = bnt.batch_norm_compiled(x, None, None, weight, bias, training=True)  # opt-in, torch.compile

>>> ln, gn = bnt.LayerNorm(64), bnt.GroupNorm(4, 16)   # torch.nn.LayerNorm, GroupNorm
>>> brn = bnt.BatchRenorm(16, r_max=3.0, d_max=5.0)    # Batch Renormalization
>>> gbn = bnt.GhostBatchNorm(16, group_size=4)         # statistics per group of 4 examples
>>> sbn = bnt.SyncBatchNorm(16)                        # statistics over all processes
>>> rbn = bnt.RecurrentBatchNorm(64, max_steps=10)     # statistics per time step

>>> bnt.recompute_statistics(model, batches)           # population statistics (Algorithm 2)
>>> fast = bnt.fold_batch_norms(model.eval())          # BN folded into the layer before it
>>> tuned = bnt.freeze_batch_norms(model)              # statistics fixed for fine-tuning

Every module is a subclass of its ``torch.nn`` counterpart (``BatchNorm2d`` of
``torch.nn.BatchNorm2d``, the variants of torch's ``_BatchNorm``), so torch's own utilities
find them. Requires torch >= 2.4. On a CPU, batch norm runs compiled loops where they were
built at install (``fused_loops_available()``), torch operations elsewhere.
"""

from .functional import batch_norm, fused_loops_available, use_fused_loops
from .compiled import batch_norm_compiled
from .modules import BatchNorm1d, BatchNorm2d, BatchNorm3d
from .norms import GroupNorm, LayerNorm, group_norm, layer_norm
from .ghost import GhostBatchNorm, ghost_batch_norm
from .renorm import BatchRenorm, batch_renorm, relax_limits, renorm_limits
from .sync import SyncBatchNorm, sync_batch_norm
from .recurrent import RecurrentBatchNorm
from .inference import (FrozenBatchNorm, fold_batch_norm, fold_batch_norms, freeze_batch_norms,
                        is_batch_norm, recompute_statistics)

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "BatchRenorm", "FrozenBatchNorm",
           "GhostBatchNorm", "GroupNorm", "LayerNorm", "RecurrentBatchNorm", "SyncBatchNorm",
           "batch_norm", "batch_norm_compiled", "batch_renorm", "fold_batch_norm",
           "fold_batch_norms", "freeze_batch_norms", "fused_loops_available",
           "ghost_batch_norm", "group_norm", "is_batch_norm", "layer_norm",
           "recompute_statistics", "relax_limits", "renorm_limits", "sync_batch_norm",
           "use_fused_loops"]
