"""Rounding noise for the notebooks' second nbval pass (an IPython startup file).

``make notebooks`` copies this file into the startup folder of a private IPython profile and
runs every notebook again with ``BNLIB_ROUNDING_NOISE=<seed>`` set. Then, after every step of
every ``torch.optim`` optimizer, each floating parameter ``p`` is multiplied elementwise by

    1 + 2 * eps * N(0, 1),        eps = torch.finfo(p.dtype).eps,

a relative change of a few units in the last place: the size of the difference between two
CPUs whose kernels round differently. The stored outputs must survive it unchanged. A printed
number that moves under this noise is not a measurement; it is what another machine would
print differently.

The noise has its own generator, so the notebook's random numbers (initialization, batch
order, dropout masks) are exactly those of the first pass. Without the variable set this file
does nothing, not even import torch.
"""

import os


def install(seed):
    """Register the perturbation for every optimizer created in this process; return the hook's
    handle (``.remove()`` unregisters it)."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def perturb(optimizer, args, kwargs):
        for group in optimizer.param_groups:
            for p in group["params"]:
                if p.is_floating_point():
                    noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                    p.mul_(1 + 2 * torch.finfo(p.dtype).eps * noise.to(p.device))

    return register_optimizer_step_post_hook(perturb)


if os.environ.get("BNLIB_ROUNDING_NOISE"):
    install(int(os.environ["BNLIB_ROUNDING_NOISE"]))
