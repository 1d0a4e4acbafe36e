r"""Linear-Gaussian models x = W z + b + eps, z ~ N(0, I): closed-form pPCA and exact EM for pPCA and factor analysis.

The marginal is :math:`p(x) = N(x; b, C)` with :math:`C = W W^\top + \Psi`, where
:math:`\Psi = \sigma^2 I` (probabilistic PCA, Tipping & Bishop 1999) or diagonal (factor analysis,
matching ``likelihood.learn_scale: per_feature``). All computation is in float64; ``x`` is
``(N, D)``, ``W`` is ``(D, K)``, ``b`` is ``(D,)`` and ``noise_var`` is ``()`` or ``(D,)``. The exact
marginal, log-likelihood and posterior are :mod:`pyro_vae.evaluation.linear_gaussian`'s, the ones the
evaluation of a trained VAE uses, here in float64.
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import pyro.distributions as dist
import torch

from pyro_vae.baselines.history import Fit, History, check_convergence, out_of_time
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation import linear_gaussian
from pyro_vae.evaluation.linear_gaussian import mean_log_likelihood as log_likelihood  # noqa: F401  (ppca.log_likelihood)


def _moments(x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The sample mean ``(D,)`` and the ML (1/N) sample covariance ``(D, D)`` of ``x``."""
    x = x.to(torch.float64)
    b = x.mean(0)
    xc = x - b
    return b, xc.T @ xc / len(x)


def _check_dims(x: torch.Tensor, latent_dim: int) -> None:
    if not 0 < latent_dim < x.shape[1]:
        raise ConfigError(f"model.latent_dim: {latent_dim} must be between 1 and x_dim - 1 = {x.shape[1] - 1} "
                          "for a linear-Gaussian model with a noise term")


def marginal(W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor) -> dist.LowRankMultivariateNormal:
    """p(x) = N(b, W W^T + diag(noise_var)) in float64, without forming the (D, D) covariance
    (:func:`pyro_vae.evaluation.linear_gaussian.marginal`)."""
    return linear_gaussian.marginal(W, b, noise_var, torch.float64)


def _loglik_from_moments(S: torch.Tensor, W: torch.Tensor, noise_var: torch.Tensor) -> float:
    r"""Mean log-likelihood with b at the sample mean: :math:`-\tfrac12(D\log 2\pi + \log|C| + \mathrm{tr}(C^{-1}S))`."""
    D = S.shape[0]
    C = W @ W.T + torch.diag(noise_var.expand(D))
    L = torch.linalg.cholesky(C)
    logdet = 2 * torch.log(torch.diagonal(L)).sum()
    trace = torch.cholesky_solve(S, L).diagonal().sum()
    return float(-0.5 * (D * math.log(2 * math.pi) + logdet + trace))


def _record(history: History, it: int, S, W, b, noise_var, x_val: Optional[torch.Tensor]) -> None:
    """Training log-likelihood (the algorithm's own convergence check) and, off the clock, validation's."""
    extra = {}
    if x_val is not None and len(x_val):
        with history.paused():
            xc = x_val.double() - b  # second moment about the model's b, not the validation mean
            extra["val_log_likelihood"] = _loglik_from_moments(xc.T @ xc / len(xc), W, noise_var)
    history.record(it, _loglik_from_moments(S, W, noise_var), **extra)


def ppca_closed_form(x: torch.Tensor, latent_dim: int, x_val: Optional[torch.Tensor] = None) -> Fit:
    r"""The maximum-likelihood pPCA solution (Tipping & Bishop 1999, eqs. 7-8).

    With :math:`S = U \Lambda U^\top` (eigenvalues descending): :math:`b = \bar x`,
    :math:`\sigma^2 = \frac{1}{D-K}\sum_{j>K}\lambda_j`, :math:`W = U_K(\Lambda_K - \sigma^2 I)^{1/2}`
    (the rotation R = I, so :math:`W^\top W` is diagonal and the exact posterior is mean-field).
    """
    _check_dims(x, latent_dim)
    history = History()
    b, S = _moments(x)
    evals, evecs = torch.linalg.eigh(S)
    evals, evecs = evals.flip(0), evecs.flip(1)
    noise_var = evals[latent_dim:].mean()
    W = evecs[:, :latent_dim] * (evals[:latent_dim] - noise_var).clamp_min(0).sqrt()
    _record(history, 0, S, W, b, noise_var, x_val)
    return Fit({"W": W, "b": b, "noise_var": noise_var}, history, iterations=0, converged=True, kind="ppca")


def _init(S: torch.Tensor, latent_dim: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scale = (S.diagonal().mean() / latent_dim).sqrt()
    return torch.randn(S.shape[0], latent_dim, generator=g, dtype=torch.float64) * scale


def ppca_em(x: torch.Tensor, latent_dim: int, *, tol: float = 1e-6, max_iter: int = 2000, seed: int = 0,
            W: Optional[torch.Tensor] = None, noise_var: Optional[float] = None,
            x_val: Optional[torch.Tensor] = None, seconds: Optional[float] = None) -> Fit:
    r"""Exact EM for probabilistic PCA in its covariance form (Tipping & Bishop 1999, eqs. 29-30).

    With :math:`M = W^\top W + \sigma^2 I` (K x K)::

        W_new     = S W (sigma^2 I + M^-1 W^T S W)^-1
        sigma2_new = tr(S - S W M^-1 W_new^T) / D

    which fuses the E-step (posterior moments of z) with the M-step. ``b`` is the sample mean
    (its ML value for any W, sigma^2). The log-likelihood is recorded after every iteration and
    never decreases; iteration stops when it changes by less than ``tol`` nats per point, after
    ``max_iter`` iterations (with a :class:`ConvergenceWarning`), or once ``seconds`` are spent.
    """
    _check_dims(x, latent_dim)
    history = History()
    b, S = _moments(x)
    D, K = S.shape[0], latent_dim
    W = _init(S, K, seed) if W is None else W.double().clone()
    sigma2 = S.diagonal().mean() if noise_var is None else torch.tensor(float(noise_var), dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    _record(history, 0, S, W, b, sigma2, x_val)
    converged, it = False, 0
    while it < max_iter and not converged and not out_of_time(history, seconds):
        it += 1
        M_inv = torch.linalg.inv(W.T @ W + sigma2 * eye)
        SW = S @ W
        W_new = SW @ torch.linalg.inv(sigma2 * eye + M_inv @ W.T @ SW)
        sigma2 = torch.trace(S - SW @ M_inv @ W_new.T) / D
        W = W_new
        _record(history, it, S, W, b, sigma2, x_val)
        converged = check_convergence(history, tol, max_iter, "pPCA EM")
    return Fit({"W": W, "b": b, "noise_var": sigma2}, history, iterations=it, converged=converged, kind="ppca")


def factor_analysis_em(x: torch.Tensor, latent_dim: int, *, tol: float = 1e-6, max_iter: int = 2000,
                       seed: int = 0, W: Optional[torch.Tensor] = None,
                       noise_var: Optional[torch.Tensor] = None, x_val: Optional[torch.Tensor] = None,
                       seconds: Optional[float] = None) -> Fit:
    r"""Exact EM for factor analysis, per-feature noise :math:`\Psi = \mathrm{diag}(\psi)` (Rubin & Thayer 1982).

    E-step: :math:`G = (I + W^\top\Psi^{-1}W)^{-1}` is Cov[z|x] and :math:`\beta = G W^\top \Psi^{-1}`
    maps x - b to E[z|x]; averaged over the data, :math:`E[zz^\top] = G + \beta S \beta^\top`.
    M-step: :math:`W = S\beta^\top E[zz^\top]^{-1}`, :math:`\psi = \mathrm{diag}(S - W\beta S)`.
    """
    _check_dims(x, latent_dim)
    history = History()
    b, S = _moments(x)
    K = latent_dim
    W = _init(S, K, seed) if W is None else W.double().clone()
    psi = S.diagonal().clone() if noise_var is None else noise_var.double().clone()
    eye = torch.eye(K, dtype=torch.float64)
    _record(history, 0, S, W, b, psi, x_val)
    converged, it = False, 0
    while it < max_iter and not converged and not out_of_time(history, seconds):
        it += 1
        Wt_psi_inv = W.T / psi  # (K, D)
        G = torch.linalg.inv(eye + Wt_psi_inv @ W)
        beta = G @ Wt_psi_inv
        Ezz = G + beta @ S @ beta.T
        W = S @ beta.T @ torch.linalg.inv(Ezz)
        psi = (S - W @ beta @ S).diagonal().clone()
        _record(history, it, S, W, b, psi, x_val)
        converged = check_convergence(history, tol, max_iter, "factor analysis EM")
    return Fit({"W": W, "b": b, "noise_var": psi}, history, iterations=it, converged=converged, kind="factor_analysis")


def posterior(W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The exact posterior p(z|x) = N(A (x - b), G) in float64: returns ``A`` (K, D), the mean map, ``b`` and ``G`` (K, K).

    :math:`G = (I + W^\top\Psi^{-1}W)^{-1}`, :math:`A = G W^\top \Psi^{-1}`
    (:func:`pyro_vae.evaluation.linear_gaussian.posterior`).
    """
    return linear_gaussian.posterior(W, b, noise_var, torch.float64)


def diagonalize(W: torch.Tensor, noise_var: torch.Tensor) -> torch.Tensor:
    r"""The rotation :math:`W R` of the same model whose posterior covariance is diagonal.

    p(x) depends on W only through :math:`WW^\top`, so any orthogonal R gives the same model;
    choosing R from the eigenvectors of :math:`W^\top\Psi^{-1}W` makes
    :math:`G = (I + R^\top W^\top\Psi^{-1}WR)^{-1}` diagonal, so a mean-field guide can be exact.
    """
    W = W.double()
    _, R = torch.linalg.eigh(W.T @ (W / noise_var.double().expand(W.shape[0])[:, None]))
    return W @ R.flip(1)
