"""The variance of a stochastic gradient at fixed parameters, per parameter group (encoder, decoder)."""

from __future__ import annotations

from typing import Dict

import torch

from pyro_vae.evaluation.bounds import unit_kl_weight
from pyro_vae.model import VAE


def gradient_variance(vae: VAE, elbo, x: torch.Tensor, repeats: int = 50) -> Dict[str, float]:
    """Trace of the covariance of the stochastic gradient of ``elbo`` (per point) at the current parameters.

    ``repeats`` independent gradient evaluations on the fixed batch ``x``; ``encoder`` covers the
    guide's parameters, ``decoder`` every generative-model parameter (decoder, likelihood, prior).
    """
    groups = {"encoder": [p for p in vae.encoder.parameters() if p.requires_grad],
              "decoder": [p for n, p in vae.named_parameters() if not n.startswith("encoder.") and p.requires_grad]}
    draws = {k: [] for k in groups}
    with unit_kl_weight(vae):
        for _ in range(repeats):
            vae.zero_grad(set_to_none=True)
            (elbo.differentiable_loss(vae.model, vae.guide, x) / x.shape[0]).backward()
            for k, params in groups.items():
                grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in params]
                draws[k].append(torch.cat(grads) if grads else torch.zeros(0, device=x.device))
    vae.zero_grad(set_to_none=True)
    return {k: float(torch.stack(v).double().var(0, unbiased=True).sum()) if v[0].numel() else 0.0
            for k, v in draws.items()}
