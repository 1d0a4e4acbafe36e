r"""The noise of a stochastic gradient at fixed parameters, per parameter group (encoder, decoder).

For R independent evaluations :math:`g^{(1)}, \dots, g^{(R)}` of the gradient of a loss on one fixed batch,
with per-coordinate sample mean :math:`\bar g_i` and standard deviation :math:`s_i`:

- the **variance**, :math:`\mathrm{tr}\,\widehat{\mathrm{Cov}}(g) = \sum_i s_i^2`;
- the **signal-to-noise ratio** of Rainforth et al. (2018, "Tighter variational bounds are not necessarily
  better"), :math:`\mathrm{SNR} = \frac{1}{|I|} \sum_{i \in I} |\bar g_i| / s_i`, averaged over the coordinates
  ``I`` that vary (:math:`s_i > 0`), and its median over those coordinates (a few coordinates with a steady
  gradient can carry the mean). Their result: for the IWAE bound the encoder's SNR falls like
  :math:`1/\sqrt{K}` as the number of particles K grows while the decoder's rises like :math:`\sqrt{K}`; DReG
  (Tucker et al. 2019) restores the encoder's. With R repeats a coordinate whose true mean is 0 still shows
  :math:`E|\bar g_i| / s_i \approx \sqrt{2 / (\pi R)}` (0.11 for R = 50): an SNR near that floor is no signal.
"""

from __future__ import annotations

import math
from typing import Dict

import torch

from pyro_vae.evaluation.bounds import unit_kl_weight
from pyro_vae.model import VAE


def _groups(vae: VAE) -> Dict[str, list]:
    """``encoder``: the guide's parameters; ``decoder``: every generative-model parameter (decoder, likelihood, prior)."""
    return {"encoder": [p for p in vae.encoder.parameters() if p.requires_grad],
            "decoder": [p for n, p in vae.named_parameters() if not n.startswith("encoder.") and p.requires_grad]}


def _loss(vae: VAE, elbo, x: torch.Tensor) -> torch.Tensor:
    """Minus the objective summed over ``x``: a Pyro loss's ``differentiable_loss``, or a fused loss
    ``elbo(vae, x)`` (:class:`~pyro_vae.inference.engine.FusedELBO`: the objectives without a Pyro form)."""
    if hasattr(elbo, "differentiable_loss"):
        return elbo.differentiable_loss(vae.model, vae.guide, x)
    return elbo(vae, x)


def gradient_draws(vae: VAE, elbo, x: torch.Tensor, repeats: int = 50) -> Dict[str, torch.Tensor]:
    """``repeats`` independent gradients of ``elbo`` per point on the fixed batch ``x`` (a Pyro loss, or a
    fused one called as ``elbo(vae, x)``), per group: ``{"encoder": (R, P_enc), "decoder": (R, P_dec)}``
    float64 (the loss at KL weight 1)."""
    groups = _groups(vae)
    draws = {k: [] for k in groups}
    with unit_kl_weight(vae):
        for _ in range(repeats):
            vae.zero_grad(set_to_none=True)
            (_loss(vae, elbo, x) / x.shape[0]).backward()
            for k, params in groups.items():
                grads = [p.grad.reshape(-1) if p.grad is not None else torch.zeros_like(p).reshape(-1) for p in params]
                draws[k].append(torch.cat(grads).double() if grads else torch.zeros(0, dtype=torch.float64))
    vae.zero_grad(set_to_none=True)
    return {k: torch.stack(v) for k, v in draws.items()}


def gradient_statistics(vae: VAE, elbo, x: torch.Tensor, repeats: int = 50) -> Dict[str, Dict[str, float]]:
    """Per group, ``{"variance", "snr", "snr_median", "snr_floor"}`` of the gradient of ``elbo`` on ``x`` (module
    docstring): the trace of its covariance, Rainforth et al.'s mean per-coordinate SNR, its median over the
    coordinates, and the mean SNR's no-signal floor :math:`\\sqrt{2 / (\\pi R)}`."""
    floor = math.sqrt(2 / (math.pi * repeats))
    out = {}
    for k, g in gradient_draws(vae, elbo, x, repeats).items():
        if g.shape[1] == 0:
            out[k] = {"variance": 0.0, "snr": math.nan, "snr_median": math.nan, "snr_floor": floor}
            continue
        sd = g.std(0, unbiased=True)
        varies = sd > 0
        ratio = g.mean(0)[varies].abs() / sd[varies] if bool(varies.any()) else torch.full((1,), math.nan)
        out[k] = {"variance": float(sd.pow(2).sum()), "snr": float(ratio.mean()), "snr_median": float(ratio.median()),
                  "snr_floor": floor}
    return out


def gradient_variance(vae: VAE, elbo, x: torch.Tensor, repeats: int = 50) -> Dict[str, float]:
    """Trace of the covariance of the stochastic gradient of ``elbo`` (per point) at the current parameters,
    ``{"encoder", "decoder"}`` (:func:`gradient_statistics`' ``variance``)."""
    return {k: s["variance"] for k, s in gradient_statistics(vae, elbo, x, repeats).items()}
