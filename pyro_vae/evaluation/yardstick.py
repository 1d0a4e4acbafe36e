r"""The yardstick of a comparison: one estimator of log p(x), on one fixed set of validation points, for every method.

Judging methods by their own training objective favours some of them (an IWAE-trained model has a poor
ELBO and a good log-likelihood), so every method of a comparison is scored while it trains, and selected,
on the same number:

- the exact :math:`\log p(x) = \log N(x; b, W W^\top + \sigma^2 I)` when the model is linear-Gaussian;
- otherwise the importance-weighted bound with a fixed :math:`K` (Burda et al. 2016),

  .. math:: \mathcal{L}_K(x) = \mathbb{E}\Big[\log \frac1K \sum_{k=1}^K w_k\Big], \qquad
            w_k = \frac{p(x, z_k)}{q(z_k|x)},\ z_k \sim q(z|x),
            \qquad \mathrm{ELBO} = \mathcal{L}_1 \le \mathcal{L}_K \le \log p(x),

  which tightens with :math:`K`, so a poor q(z|x) costs less than it does in the ELBO.

The ELBO reported beside it is the mean of the same log-weights, :math:`\frac1K \sum_k \log w_k`.
"""

from __future__ import annotations

from typing import Dict

import torch

from pyro_vae.evaluation.iwae import proposal_iwae
from pyro_vae.evaluation.linear_gaussian import exact_log_likelihood, is_linear_gaussian
from pyro_vae.model import VAE

SUBSET_SEED = 0  # the points are the same for every method and seed of a comparison


def fixed_rows(x: torch.Tensor, n: int) -> torch.Tensor:
    """``n`` rows of ``x`` ``(N, ...)`` drawn once with a generator seeded :data:`SUBSET_SEED`, kept in their order
    (``x`` itself when it has no more than ``n``): the same rows for every method and seed of a comparison."""
    if len(x) <= n:
        return x
    g = torch.Generator().manual_seed(SUBSET_SEED)
    return x[torch.randperm(len(x), generator=g)[:n].sort().values]


class Yardstick:
    """Scores a VAE on ``num_points`` fixed rows of ``x`` (all of them when there are fewer): mean log p(x) in
    nats per point, exact or IWAE with ``num_samples`` importance samples, and the ELBO from the same draws.

    ``x`` is ``(N, x_dim)``; the rows are a seeded random subset (:data:`SUBSET_SEED`), kept in their order.
    """

    def __init__(self, x: torch.Tensor, num_samples: int = 100, num_points: int = 500):
        if num_samples < 1 or num_points < 1:
            raise ValueError(f"yardstick: num_samples and num_points must be >= 1, got {num_samples}, {num_points}")
        self.points, self.num_samples = fixed_rows(x, num_points), num_samples

    def estimator(self, vae: VAE) -> str:
        """``exact`` or ``IWAE-K``: what :meth:`__call__` computes for ``vae``."""
        return "exact" if is_linear_gaussian(vae) else f"IWAE-{self.num_samples}"

    @torch.no_grad()
    def __call__(self, vae: VAE) -> Dict[str, float]:
        """``{"log_px", "elbo"}`` of ``vae`` on the points, nats per point (draws from torch's global generator)."""
        device = next(vae.parameters()).device
        x = self.points.to(device)
        lse, mean = _log_weight_stats(vae, x, self.num_samples)
        log_px = exact_log_likelihood(vae, x) if is_linear_gaussian(vae) else float(lse.mean())
        return {"log_px": log_px, "elbo": float(mean.mean())}


def _log_weight_stats(vae: VAE, x: torch.Tensor, num_samples: int) -> "tuple[torch.Tensor, torch.Tensor]":
    """Per point, ``log (1/K) sum_k w_k`` (:func:`proposal_iwae` with the encoder's q(z|x)) and
    ``(1/K) sum_k log w_k`` of the same K draws."""
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    lse = proposal_iwae(vae, vae.encoder(x), x, num_samples, observe=lambda log_w: total.add_(log_w.double().sum(0)))
    return lse, total / num_samples
