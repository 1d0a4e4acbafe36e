"""The ELBO of a :class:`~pyro_vae.model.VAE` computed straight from its component distributions (no effect handlers).

Pyro's ELBO stays the definition: ``fused_elbo_loss`` is the value and gradient that
``build_elbo(cfg.inference).differentiable_loss(vae.model, vae.guide, x)`` returns for the same
parameters and the same random state (``tests/test_fused.py`` checks it for every registered
prior, guide and likelihood), but without tracing, so one training step costs what a hand-written
PyTorch VAE costs, and the function is plain enough for ``torch.compile``.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Callable, Dict, Optional, Tuple

import torch
from pyro.distributions import is_validation_enabled
from pyro.distributions.kl import kl_divergence
from torch.distributions import Distribution, Independent

from .guides import MeanFieldGuide
from .model import VAE
from .priors import NormalPrior

ANALYTIC, MONTE_CARLO = "analytic", "monte_carlo"


def fused_elbo_loss(vae: VAE, x: torch.Tensor, num_particles: int = 1, kl: str = ANALYTIC,
                    kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
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
    ``log p(x|z)`` is the likelihood's closed form, and a (guide, prior) pair in
    :data:`CLOSED_FORMS` draws ``z`` and sums the KL without building q or p; unless validation is on.
    """
    closed = CLOSED_FORMS.get((type(vae.encoder), type(vae.prior))) if kl == ANALYTIC else None
    if closed is not None and not is_validation_enabled():
        z, kl_term = closed(vae, x, num_particles)
    else:
        q = vae.encoder(x)  # batch (B,), event (latent_dim,)
        z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()  # (K, B, latent_dim) or (B, latent_dim)
        p = vae.prior()  # batch (), event (latent_dim,)
        kl_term = analytic_kl(q, p) if kl == ANALYTIC else None
        if kl_term is None:
            kl_term = _per_particle((q.log_prob(z) - p.log_prob(z)).sum(), num_particles)
    log_lik = _log_likelihood(vae, vae.decoder(z), x)  # (K, B) or (B,)
    if not (isinstance(kl_weight, float) and kl_weight == 1.0):  # beta = 1 (a float): one op fewer, as Pyro skips scale
        kl_term = kl_weight * kl_term
    return kl_term - _per_particle(log_lik.sum(), num_particles)


ClosedForm = Callable[[VAE, torch.Tensor, int], Tuple[torch.Tensor, torch.Tensor]]
CLOSED_FORMS: Dict[Tuple[type, type], ClosedForm] = {}
"""``(guide class, prior class) -> f(vae, x, num_particles) = (z, sum_b KL(q(z|x_b) || p))``: the reparameterized
draw and the analytic KL written out on the tensors, where building q and p costs more than the arithmetic
(~30 us a step at the digits shape). Each must give the generic path's numbers bit for bit (tests/test_fused.py)."""


def closed_form(guide: type, prior: type) -> Callable[[ClosedForm], ClosedForm]:
    """Register the decorated function as the closed form for the exact classes ``(guide, prior)``."""
    def register(fn: ClosedForm) -> ClosedForm:
        CLOSED_FORMS[guide, prior] = fn
        return fn
    return register


@closed_form(MeanFieldGuide, NormalPrior)
def _mean_field_normal(vae: VAE, x: torch.Tensor, num_particles: int) -> Tuple[torch.Tensor, torch.Tensor]:
    r"""q = N(mu, diag v^2) against p = N(m, diag s^2) (the prior's buffers, 0 and 1): ``z = mu + eps v`` with
    ``eps`` drawn as ``Normal.rsample`` draws it, and torch's ``kl_normal_normal``,
    :math:`\tfrac12 (r + ((\mu - m)/s)^2 - 1 - \log r)`, :math:`r = (v/s)^2`, in its own order of operations."""
    loc, scale = vae.encoder.loc_scale(x)  # (B, latent_dim) each
    shape = (num_particles, *loc.shape) if num_particles > 1 else loc.shape
    z = loc + torch.empty(shape, dtype=loc.dtype, device=loc.device).normal_() * scale
    prior = vae.prior
    var_ratio = (scale / prior.scale).pow(2)
    t1 = ((loc - prior.loc) / prior.scale).pow(2)
    return z, (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum()


def _per_particle(total: torch.Tensor, num_particles: int) -> torch.Tensor:
    return total / num_particles if num_particles > 1 else total  # x / 1 is x: skip the op and its backward


def _log_likelihood(vae: VAE, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``log p(x | z)`` ``params.shape[:-1]`` from the decoder output ``params``: the likelihood's closed form
    (:meth:`~pyro_vae.likelihoods.Likelihood.log_prob`), or its distribution when validation is on, which
    checks parameters and support (a NaN then raises where the Trainer can name the site)."""
    if is_validation_enabled():
        return vae.likelihood(params).log_prob(x)
    return vae.likelihood.log_prob(params, x)


def analytic_kl(q: Distribution, p: Distribution) -> Optional[torch.Tensor]:
    """``sum_b KL(q_b || p)`` over all of q's batch, or ``None`` where no closed form is registered for the pair.

    Two ``Independent`` of the same rank (a mean-field guide and a factorized prior) are unwrapped
    first: their KL is the sum of their base distributions' KLs, Pyro's own rule, which would build
    two new distributions per call to get there.
    """
    if isinstance(q, Independent) and isinstance(p, Independent) \
            and q.reinterpreted_batch_ndims == p.reinterpreted_batch_ndims:
        q, p = q.base_dist, p.base_dist
    try:
        return kl_divergence(q, p).sum()
    except NotImplementedError:  # TraceMeanField_ELBO's own fallback for a pair without a closed form
        return None


def fused_renyi_loss(vae: VAE, x: torch.Tensor, num_particles: int = 1, alpha: float = 0.0,
                     kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    r"""Minus the Renyi bound of ``x`` ``(batch, x_dim)``, summed over the batch, as
    :class:`pyro_vae.objectives.RenyiBound` computes it (``alpha = 0``: the IWAE bound of Burda et al.).

    With ``K = num_particles`` reparameterized draws ``z_k ~ q(z|x_b)`` and beta = ``kl_weight``
    (``poutine.scale`` on ``z`` in model and guide scales both of its log-densities),

    .. math::

        \log w_{kb} = \log p(x_b | z_{kb}) + \beta\,[\log p(z_{kb}) - \log q(z_{kb}|x_b)], \qquad
        \mathcal{L}_\alpha = \sum_b \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k w_{kb}^{1-\alpha}.

    The same draws as Pyro's vectorized particle plate for the same seed (``q.rsample((K,))``).
    """
    q = vae.encoder(x)
    z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()  # (K, B, latent_dim) or (B, latent_dim)
    log_w = _log_likelihood(vae, vae.decoder(z), x) + kl_weight * (vae.prior().log_prob(z) - q.log_prob(z))
    log_w = log_w.reshape(num_particles, -1)  # (K, B)
    bound = (torch.logsumexp((1.0 - alpha) * log_w, dim=0) - math.log(num_particles)) / (1.0 - alpha)
    return -bound.sum()


# objective -> (the fused loss, its argument after num_particles read from the inference config)
LOSSES: Dict[str, Tuple[Callable, Callable]] = {
    "elbo": (fused_elbo_loss, lambda inference: getattr(inference, "kl", ANALYTIC)),
    "iwae": (fused_renyi_loss, lambda inference: 0.0),
    "renyi": (fused_renyi_loss, lambda inference: inference.alpha),
}


def unsupported_reason(vae: VAE, inference, probe: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the fused loss cannot stand in for Pyro's here (``None``: it can).

    It covers the objectives in :data:`LOSSES` with ``estimator: reparam`` (older configs without
    those fields are ``elbo`` with ``reparam``) on the stock :class:`VAE` model and guide, with a
    guide that can ``rsample``.
    """
    objective = getattr(inference, "objective", "elbo")
    estimator = getattr(inference, "estimator", "reparam")
    if objective not in LOSSES or estimator != "reparam":
        return (f"inference.objective={objective}, inference.estimator={estimator} "
                f"(fused covers {', '.join(LOSSES)} with reparam)")
    if type(vae).model is not VAE.model or type(vae).guide is not VAE.guide:
        return f"{type(vae).__name__} overrides model/guide"
    if probe is not None:
        with torch.no_grad():
            if not vae.encoder(probe[:1]).has_rsample:
                return f"guide {type(vae.encoder).__name__} is not reparameterized"
    return None


class FusedELBO:
    """``loss(vae, x, kl_weight)``: the fused loss of one inference config's objective (:data:`LOSSES`),
    optionally ``torch.compile``-d.

    Compiling keeps eager semantics for random numbers (inductor's ``fallback_random``), so a
    compiled step draws the same ``z`` as an eager one; AOTAutograd compiles the backward too.
    The first call runs eagerly: it fills torch's KL-dispatch memo, which the compiled graph then
    reads as a dict lookup instead of breaking the graph on the dispatch search.
    """

    def __init__(self, inference, compile: bool = False):
        self.num_particles = inference.num_particles
        loss, option = LOSSES[getattr(inference, "objective", "elbo")]
        self.option = option(inference)  # the ELBO's kl, or the Renyi bound's alpha
        self.compiled = compile
        self._calls = 0
        self._eager: Callable = loss
        self._fn: Callable = loss
        if compile:
            with _quiet():
                self._fn = torch.compile(loss, dynamic=False, options={"fallback_random": True})

    def __call__(self, vae: VAE, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        self._calls += 1
        if not self.compiled or self._calls == 1:
            return self._eager(vae, x, self.num_particles, self.option, kl_weight)
        # beta as a tensor: a new float each warm-up step would recompile the graph
        with _quiet():
            return self._fn(vae, x, self.num_particles, self.option, torch.tensor(float(kl_weight)))


@contextmanager
def _quiet():
    """Silence torch's own deprecation notices raised while inductor imports and compiles (not ours to fix)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        yield


LossFn = Callable[[torch.Tensor, float], torch.Tensor]


def select_engine(cfg, vae: VAE, elbo, probe: torch.Tensor) -> tuple[str, LossFn]:
    """``(engine, loss)`` for ``cfg.train.engine``: ``loss(x, kl_weight)`` is minus the objective summed over ``x``.

    ``auto`` takes the fused loss where it covers the config and Pyro's ``elbo`` otherwise;
    ``fused`` where it does not cover the config is a :class:`ConfigError`. ``pyro`` reads beta
    from ``vae.kl_weight`` (``poutine.scale``), the fused loss from its argument.
    """
    from .errors import ConfigError

    train = cfg.train
    engine, compile_ = getattr(train, "engine", "auto"), getattr(train, "compile", False)
    reason = unsupported_reason(vae, cfg.inference, probe) if engine != "pyro" else "train.engine=pyro"
    if engine == "fused" and reason is not None:
        raise ConfigError(f"train.engine: 'fused' does not cover {reason}; use train.engine=auto or pyro")
    if compile_ and reason is not None:
        raise ConfigError(f"train.compile: compiles the fused loss only, which does not cover {reason}; "
                          f"set train.compile=false")
    if reason is not None:
        return "pyro", lambda x, kl_weight: elbo.differentiable_loss(vae.model, vae.guide, x)
    fused = FusedELBO(cfg.inference, compile=compile_)
    return "fused", lambda x, kl_weight: fused(vae, x, kl_weight)


def adam(params, lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam``, with its single fused kernel (one pass over all parameters) where torch has one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)


def fused_log_weights(vae: VAE, x: torch.Tensor, num_particles: int, q=None, prior=None,
                      log_lik: Optional[Callable] = None) -> torch.Tensor:
    r"""``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``, ``z_k ~ q(z|x)``, shape ``(num_particles, batch)``.

    The importance weights of ``pyro_vae.evaluate.log_weights`` (beta = 1) from the component
    distributions directly: the same draws for the same seed (a ``(K, batch)`` particle plate
    draws what ``q.rsample((K,))`` draws), without tracing. ``q = vae.encoder(x)`` and
    ``prior = vae.prior()`` may be passed in (neither depends on the draws, so a caller taking
    several chunks builds them once); ``log_lik(decoder, likelihood, z, x)`` defaults to
    :func:`pyro_vae.iwae.log_likelihood`.
    """
    from .iwae import log_likelihood

    q = vae.encoder(x) if q is None else q
    prior = vae.prior() if prior is None else prior
    z = q.rsample((num_particles,))  # (K, batch, latent_dim)
    log_p_x = (log_lik or log_likelihood)(vae.decoder, vae.likelihood, z, x)  # (K, batch)
    return log_p_x + prior.log_prob(z) - q.log_prob(z)


@torch.no_grad()
def fused_iwae(vae: VAE, x: torch.Tensor, num_samples: int, chunk: int, bar=None, compile: bool = False) -> torch.Tensor:
    r"""Per-point IWAE bound :math:`\log \frac{1}{K}\sum_k w_k`, ``(batch,)``, from ``chunk`` particles at a time
    merged by a running log-sum-exp, so memory is one chunk's whatever K is.

    The encoder and the prior run once for all chunks. ``compile=True`` runs full chunks' decoder
    and log-likelihood through ``torch.compile`` (:class:`pyro_vae.iwae.LogLikelihood`; the first
    chunk of each batch size compiles). ``bar`` (tqdm) advances by particles x points.
    """
    from functools import partial

    from .iwae import compiled_log_likelihood

    fast = compiled_log_likelihood() if compile else None
    q, prior = vae.encoder(x), vae.prior()
    running = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    for done in range(0, num_samples, chunk):
        k = min(chunk, num_samples - done)
        log_lik = partial(fast, full=k == chunk) if fast is not None else None
        log_w = fused_log_weights(vae, x, k, q, prior, log_lik)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        if bar is not None:
            bar.update(k * x.shape[0])
    return running - math.log(num_samples)
