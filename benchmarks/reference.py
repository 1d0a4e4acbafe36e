"""The hand-written references: an eager PyTorch VAE and Pyro's plain ``SVI`` loop of the same model.

The PyTorch VAE has exactly pyro_vae's default architecture (``mean_field`` guide with a shared
tanh trunk and softplus scale, ``mlp`` decoder) and objective (one reparameterized draw, the
closed-form KL to N(0, I), the loss per data point, one ``torch.optim.Adam``), written the way a
PyTorch user would write it: no distributions objects, no effect handlers.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits, softplus

MIN_SCALE = 1e-4  # as pyro_vae.components.networks.MIN_SCALE
LOG_2PI = math.log(2 * math.pi)


class TorchVAE(nn.Module):
    """x_dim -> hidden... -> (loc, scale) of q(z|x); z -> hidden... -> decoder output; ``likelihood`` normal or bernoulli.

    ``hidden`` is one width or a list of widths (tanh after each), as pyro_vae's ``hidden`` keys.
    """

    def __init__(self, x_dim: int, hidden: Union[int, Sequence[int]], latent_dim: int, likelihood: str,
                 scale: float = 0.1):
        super().__init__()
        widths = [hidden] if isinstance(hidden, int) else list(hidden)
        self.trunk = _tanh_mlp([x_dim, *widths])
        self.loc_head = nn.Linear(widths[-1], latent_dim)
        self.scale_head = nn.Linear(widths[-1], latent_dim)
        self.decoder = nn.Sequential(*_tanh_mlp([latent_dim, *widths]), nn.Linear(widths[-1], x_dim))
        self.likelihood = likelihood
        self.log_scale = math.log(scale)

    def loss(self, x: torch.Tensor, eps: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Minus the ELBO per data point: ``-(1/B) sum_b [log p(x_b | z_b) - KL(q(z|x_b) || N(0, I))]``.

        ``z = loc + scale * eps`` with ``eps`` (B, latent_dim) standard normal noise, drawn unless given
        (given, the loss is a deterministic function of the weights: how the NumPyro peer is checked).
        """
        h = self.trunk(x)
        loc, scale = self.loc_head(h), softplus(self.scale_head(h)) + MIN_SCALE
        z = loc + scale * (torch.randn_like(loc) if eps is None else eps)
        out = self.decoder(z)
        if self.likelihood == "bernoulli":
            nll = binary_cross_entropy_with_logits(out, x, reduction="sum")
        else:
            nll = 0.5 * (((x - out) / math.exp(self.log_scale)) ** 2).sum() + x.numel() * (self.log_scale + 0.5 * LOG_2PI)
        kl = 0.5 * (loc ** 2 + scale ** 2 - 1.0).sum() - scale.log().sum()
        return (nll + kl) / x.shape[0]


def _tanh_mlp(widths: Sequence[int]) -> nn.Sequential:
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.Tanh()]
    return nn.Sequential(*layers)


def load_into_pyro_vae(ref: TorchVAE, vae) -> None:
    """Copy the reference's weights into a pyro_vae VAE of the same architecture (to evaluate both alike)."""
    pairs = [(vae.encoder.trunk, ref.trunk), (vae.encoder.loc_head, ref.loc_head),
             (vae.encoder.scale_head, ref.scale_head), (vae.decoder.net, ref.decoder)]
    for theirs, mine in pairs:
        theirs.load_state_dict(mine.state_dict())


def torch_epoch(model: TorchVAE, optimizer: torch.optim.Optimizer, x: torch.Tensor, batch_size: int,
                order: torch.Generator) -> int:
    """One epoch of the plain PyTorch loop (seeded permutation, no host sync per step); returns examples seen.

    ``model`` and ``x`` live on the same device; the permutation is drawn on the CPU (``order``).
    """
    total = torch.zeros((), device=x.device)
    for idx in torch.randperm(len(x), generator=order).split(batch_size):
        optimizer.zero_grad(set_to_none=True)
        loss = model.loss(x[idx])
        loss.backward()
        optimizer.step()
        total = total + loss.detach()
    return len(x)


def svi_epoch_fn(vae, x: torch.Tensor, batch_size: int, lr: float, seed: int) -> Callable[[], int]:
    """One epoch of the loop in Pyro's VAE tutorial: ``SVI(model, guide, pyro.optim.Adam, Trace_ELBO()).step``."""
    svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": lr}), Trace_ELBO())
    order = torch.Generator().manual_seed(seed)

    def epoch() -> int:
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            svi.step(x[idx])
        return len(x)

    return epoch
