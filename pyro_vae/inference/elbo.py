"""The ELBO: Pyro's ``TraceMeanField_ELBO`` / ``Trace_ELBO`` and, beside them, the fused form that must equal them."""

from __future__ import annotations

import torch
from pyro.distributions import is_validation_enabled
from pyro.infer import ELBO, Trace_ELBO, TraceMeanField_ELBO

from pyro_vae.config import InferenceConfig
from pyro_vae.inference.kl import ANALYTIC, MONTE_CARLO, analytic_kl
from pyro_vae.model import VAE

ELBOS = {ANALYTIC: TraceMeanField_ELBO, MONTE_CARLO: Trace_ELBO}


def pyro_elbo(inference: InferenceConfig) -> ELBO:
    """``TraceMeanField_ELBO`` (``kl: analytic``) or ``Trace_ELBO`` (``monte_carlo``), ``num_particles`` vectorized."""
    k = inference.num_particles
    return ELBOS[inference.kl](num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)


def evaluation_elbo() -> ELBO:
    """The ELBO itself (analytic KL where Pyro has one) whatever the training objective, so that
    validation and test numbers mean the same thing for an IWAE-, Renyi- or score-function-trained run."""
    return TraceMeanField_ELBO(max_plate_nesting=1)


def fused_elbo_loss(vae: VAE, x: torch.Tensor, num_particles: int = 1, kl: str = ANALYTIC,
                    kl_weight: float | torch.Tensor = 1.0, eps: torch.Tensor | None = None) -> torch.Tensor:
    r"""Minus the ELBO of ``x`` ``(batch, x_dim)``, summed over the batch (like Pyro's ``differentiable_loss``).

    With ``K = num_particles`` draws ``z_k = q.rsample()`` from ``q = vae.encoder(x)`` and beta = ``kl_weight``:

    .. math::

        \mathcal{L} = \sum_b \Big[\frac{1}{K}\sum_k \log p(x_b | z_{kb})
                      - \beta\, \mathrm{KL}\big(q(z|x_b) \,\|\, p(z)\big)\Big]

    where the KL is closed-form when ``kl="analytic"`` and torch/Pyro register one for the pair
    (as :class:`~pyro.infer.TraceMeanField_ELBO` does), else its one-sample Monte Carlo estimate
    ``(1/K) sum_k [log q(z_kb|x_b) - log p(z_kb)]`` (as :class:`~pyro.infer.Trace_ELBO` does).

    Randomness: Pyro's vectorized particles expand q to batch shape ``(K, batch)`` and draw once;
    ``q.rsample((K,))`` draws the same standard variates in the same order, so the same seed gives
    the same ``z``. With ``K == 1`` Pyro adds no particle dimension and neither does this.

    The hot path builds no distribution it can do without: p(z) keeps batch shape ``()`` and
    broadcasts against q's ``(batch,)`` (the data plate's ``expand`` would give the same values),
    ``log p(x|z)`` is the likelihood's closed form, and with ``kl="analytic"``, validation off, a
    guide that declares ``loc_scale`` and a prior that declares ``kl_from_normal`` (the components'
    fast-path hooks, see :func:`declares_fast_path`), neither q nor p is built:
    ``(loc, scale) = vae.encoder.loc_scale(x)``, ``z`` from :func:`rsample_normal` and
    ``sum_b KL = vae.prior.kl_from_normal(loc, scale)``, the generic path's numbers bit for bit.

    ``eps``: the standard variates of ``z`` (the shape of ``z``), given instead of drawn, on the fast path
    only (else a ValueError): the loss is then a function of the parameters alone, so that a vectorized
    caller can draw each replica's variates from that replica's own generator
    (:mod:`pyro_vae.training.replicas`). ``eps=None``, the default, draws them as described above.
    """
    if kl == ANALYTIC and not is_validation_enabled() and declares_fast_path(vae.encoder, vae.prior):
        loc, scale = vae.encoder.loc_scale(x)  # (B, latent_dim) each: q(z|x_b) = N(loc_b, diag scale_b^2)
        z = rsample_normal(loc, scale, num_particles, eps)  # (K, B, latent_dim) or (B, latent_dim)
        kl_term = vae.prior.kl_from_normal(loc, scale)  # () = sum_b KL(q(z|x_b) || p)
    elif eps is not None:
        raise ValueError("fused_elbo_loss: eps is taken on the fast path only (kl=analytic, validation off, "
                         "a guide declaring loc_scale and a prior declaring kl_from_normal)")
    else:
        q = vae.encoder(x)  # batch (B,), event (latent_dim,)
        z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()  # (K, B, latent_dim) or (B, latent_dim)
        p = vae.prior()  # batch (), event (latent_dim,)
        kl_term = analytic_kl(q, p) if kl == ANALYTIC else None
        if kl_term is None:
            kl_term = _per_particle((q.log_prob(z) - p.log_prob(z)).sum(), num_particles)
    log_lik = log_likelihood_of(vae, vae.decoder(z), x)  # (K, B) or (B,)
    if not (isinstance(kl_weight, float) and kl_weight == 1.0):  # beta = 1 (a float): one op fewer, as Pyro skips scale
        kl_term = kl_weight * kl_term
    return kl_term - _per_particle(log_lik.sum(), num_particles)


def declares_fast_path(guide: torch.nn.Module, prior: torch.nn.Module) -> bool:
    """Whether the guide declares ``loc_scale`` (its q(z|x) is a diagonal Normal,
    :mod:`pyro_vae.components.guides`) and the prior ``kl_from_normal`` (its closed-form KL from one,
    :class:`pyro_vae.components.priors.Prior`): then the analytic ELBO needs neither distribution.

    The hooks are looked up on the classes: a method is a class attribute, and an instance lookup
    that misses goes through ``nn.Module.__getattr__`` and raises (microseconds on every step of a
    pair without hooks).
    """
    return callable(getattr(type(guide), "loc_scale", None)) and callable(getattr(type(prior), "kl_from_normal", None))


def rsample_normal(loc: torch.Tensor, scale: torch.Tensor, num_particles: int = 1,
                   eps: torch.Tensor | None = None) -> torch.Tensor:
    """``z = loc + eps * scale`` with ``eps ~ N(0, I)``: ``(K, *loc.shape)`` for ``K = num_particles > 1``,
    else ``loc.shape``; ``loc`` and ``scale`` of one shape; ``eps`` of that shape when given (else drawn).

    The draw of ``Normal(loc, scale).rsample((K,))`` (or ``.rsample()``), written out as torch writes it:
    the same standard variates from the same ``normal_`` call and the same two operations, so the same
    seed gives the same ``z`` and leaves the random stream where Pyro's path leaves it.
    """
    if eps is None:
        shape = (num_particles, *loc.shape) if num_particles > 1 else loc.shape
        eps = torch.empty(shape, dtype=loc.dtype, device=loc.device).normal_()
    return loc + eps * scale


def _per_particle(total: torch.Tensor, num_particles: int) -> torch.Tensor:
    return total / num_particles if num_particles > 1 else total  # x / 1 is x: skip the op and its backward


def log_likelihood_of(vae: VAE, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | z)`` ``params.shape[:-1]`` from the decoder output ``params``: the likelihood's closed form
    (:meth:`~pyro_vae.components.likelihoods.Likelihood.log_prob`), or its distribution when validation is on, which
    checks parameters and support (a NaN then raises where the Trainer can name the site)."""
    if is_validation_enabled():
        return vae.likelihood(params).log_prob(x)
    return vae.likelihood.log_prob(params, x)
