r"""Exact answers for the linear-Gaussian model (probabilistic PCA, factor analysis): log p(x) and the posterior p(z|x).

The model is :math:`z \sim N(0, I_K)`, :math:`x | z \sim N(W z + b, \Psi)` with :math:`\Psi = \mathrm{diag}\,\psi`
(``noise_var``: ``()`` for one sigma^2, or ``(D,)``); ``W`` is ``(D, K)`` and ``b`` is ``(D,)``. Then

.. math::

    p(x) = N(x; b, W W^\top + \Psi), \qquad p(z|x) = N(A (x - b), G), \quad
    G = (I + W^\top \Psi^{-1} W)^{-1}, \quad A = G W^\top \Psi^{-1}.

These are written once here, for the evaluation of a trained VAE and for the pPCA / factor-analysis
baselines (:mod:`pyro_vae.baselines.ppca`, which computes in float64). :func:`is_linear_gaussian` is
the one test of whether a model has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Tuple, Union

import pyro.distributions as dist
import torch

from pyro_vae.components.decoders import DECODERS, LinearDecoder
from pyro_vae.components.likelihoods import LIKELIHOODS, NormalLikelihood
from pyro_vae.components.priors import PRIORS, NormalPrior
from pyro_vae.model import VAE

if TYPE_CHECKING:
    from pyro_vae.config import ModelConfig


# -- which models: the component classes -----------------------------------------------------------
def is_linear_gaussian(model: Union[VAE, "ModelConfig"]) -> bool:
    """True when ``model`` is p(z) = N(0, I), g(z) = W z + b, x | z ~ N(g(z), diag sigma^2): exact log p(x), p(z|x).

    ``model`` is a built :class:`VAE` (its prior, decoder and likelihood are instances of
    :class:`NormalPrior`, :class:`LinearDecoder` and :class:`NormalLikelihood`, and the prior's
    ``loc`` / ``scale`` buffers are still 0 / 1: a loaded state dict could have moved them), or a
    config's model section before building (``cfg.model``: the classes its registry names give).
    Any ``learn_scale`` qualifies: whether sigma is fixed, global or per feature, p(x) is Gaussian.
    """
    if isinstance(model, VAE):
        parts = (model.prior, model.decoder, model.likelihood)
        classes = tuple(type(part) for part in parts)
    else:
        classes = tuple(registry.get(spec.name).cls for registry, spec in
                        ((PRIORS, model.prior), (DECODERS, model.decoder), (LIKELIHOODS, model.likelihood)))
    if not all(issubclass(c, base) for c, base in zip(classes, (NormalPrior, LinearDecoder, NormalLikelihood))):
        return False
    if isinstance(model, VAE):
        return bool(torch.all(model.prior.loc == 0) and torch.all(model.prior.scale == 1))
    return True


def linear_gaussian(vae: VAE, dtype: Optional[torch.dtype] = None) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(W, b, noise_var)`` of a linear-Gaussian ``vae`` (:func:`is_linear_gaussian`), detached, else None.

    ``W`` is ``(x_dim, latent_dim)``, ``b`` and ``noise_var = sigma^2`` are ``(x_dim,)`` (a global sigma is
    broadcast). ``dtype`` (default the VAE's) is applied before ``sigma^2 = exp(2 log sigma)``, so float64
    numbers are not the squares of float32-rounded sigmas.
    """
    if not is_linear_gaussian(vae):
        return None
    dtype = dtype or vae.decoder.weight.dtype
    W, b = vae.decoder.weight.detach().to(dtype), vae.decoder.bias.detach().to(dtype)
    noise_var = (2 * vae.likelihood.log_scale.detach().to(dtype)).exp().expand(W.shape[0])
    return W, b, noise_var


# -- the exact answers ----------------------------------------------------------------------------------
def marginal(W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor,
             dtype: Optional[torch.dtype] = None) -> dist.LowRankMultivariateNormal:
    r"""p(x) = N(b, W W^T + diag(noise_var)), batch ``()``, event ``(D,)``, without forming the (D, D) covariance.

    ``log_prob`` goes through the (K, K) capacitance :math:`I + W^\top \Psi^{-1} W` (Woodbury), so a
    784-pixel model costs K x K work, not D x D. Computed in ``dtype`` (default that of ``W``).
    """
    dtype = dtype or W.dtype
    W, b, noise_var = W.to(dtype), b.to(dtype), noise_var.to(dtype)
    return dist.LowRankMultivariateNormal(b, W, noise_var.expand(b.shape))


@torch.no_grad()
def mean_log_likelihood(x: torch.Tensor, W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor) -> float:
    """Exact mean log p(x_n) over the rows of ``x`` ``(N, D)`` (nats per data point), computed in float64."""
    return float(marginal(W, b, noise_var, torch.float64).log_prob(x.double()).mean())


def exact_log_likelihood(vae: VAE, x: torch.Tensor) -> float:
    """Exact mean log p(x_n) = log N(x_n; b, W W^T + diag sigma^2) over the rows of ``x`` for a linear-Gaussian VAE, in float64."""
    params = linear_gaussian(vae, torch.float64)
    if params is None:
        raise ValueError(f"exact_log_likelihood: {type(vae.prior).__name__}, {type(vae.decoder).__name__}, "
                         f"{type(vae.likelihood).__name__} is not a linear-Gaussian model")
    return mean_log_likelihood(x, *params)


def posterior(W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor,
              dtype: Optional[torch.dtype] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The exact posterior p(z|x) = N(A (x - b), G) as ``(A, b, G)``: ``A`` (K, D), the mean map, and ``G`` (K, K).

    :math:`G = (I + W^\top\Psi^{-1}W)^{-1}`, :math:`A = G W^\top \Psi^{-1}`; ``b`` is returned as given
    (in ``dtype``, default that of ``W``). G is symmetrized: the inverse is symmetric only up to
    rounding, and a covariance must be exactly so to pass Pyro's positive-definite check.
    """
    dtype = dtype or W.dtype
    W, b = W.to(dtype), b.to(dtype)
    Wt_psi_inv = W.T / noise_var.to(dtype).expand(W.shape[0])  # (K, D)
    G = torch.linalg.inv(torch.eye(W.shape[1], dtype=dtype, device=W.device) + Wt_psi_inv @ W)
    G = 0.5 * (G + G.T)
    return G @ Wt_psi_inv, b, G


def posterior_distribution(W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor,
                           x: torch.Tensor) -> dist.MultivariateNormal:
    """p(z|x_n) = N(A (x_n - b), G) for the rows of ``x`` ``(N, D)`` (:func:`posterior`): batch ``(N,)``, event ``(K,)``."""
    A, b, G = posterior(W, b, noise_var)
    return dist.MultivariateNormal((x - b) @ A.T, covariance_matrix=G.expand(x.shape[0], -1, -1))


def as_gaussian(q: dist.Distribution) -> Optional[dist.MultivariateNormal]:
    """q(z|x) as a MultivariateNormal with batch ``(batch,)`` if it is Gaussian, else None."""
    if isinstance(q, dist.MultivariateNormal):
        return q
    base = getattr(q, "base_dist", None)
    if isinstance(q, dist.Independent) and isinstance(base, dist.Normal):
        return dist.MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
    return None
