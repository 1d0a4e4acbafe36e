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
from typing import Callable, Optional

import torch
from pyro.distributions.kl import kl_divergence

from .model import VAE

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
    """
    q = vae.encoder(x)  # batch (B,), event (latent_dim,)
    z = q.rsample((num_particles,)) if num_particles > 1 else q.rsample()  # (K, B, latent_dim) or (B, latent_dim)
    p = vae.prior().expand(q.batch_shape)  # the data plate's broadcast of p(z)
    log_lik = vae.likelihood(vae.decoder(z)).log_prob(x)  # (K, B) or (B,)
    kl_term = None
    if kl == ANALYTIC:
        try:
            kl_term = kl_divergence(q, p).sum()  # of (B,)
        except NotImplementedError:  # TraceMeanField_ELBO's own fallback for a pair without a closed form
            pass
    if kl_term is None:
        kl_term = (q.log_prob(z) - p.log_prob(z)).sum() / num_particles
    return kl_weight * kl_term - log_lik.sum() / num_particles


def unsupported_reason(vae: VAE, inference, probe: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the fused ELBO cannot stand in for Pyro's here (``None``: it can).

    It covers ``objective: elbo`` with ``estimator: reparam`` (older configs without those
    fields are that) on the stock :class:`VAE` model and guide, with a guide that can ``rsample``.
    """
    objective = getattr(inference, "objective", "elbo")
    estimator = getattr(inference, "estimator", "reparam")
    if objective != "elbo" or estimator != "reparam":
        return f"inference.objective={objective}, inference.estimator={estimator} (fused covers elbo with reparam)"
    if type(vae).model is not VAE.model or type(vae).guide is not VAE.guide:
        return f"{type(vae).__name__} overrides model/guide"
    if probe is not None:
        with torch.no_grad():
            if not vae.encoder(probe[:1]).has_rsample:
                return f"guide {type(vae.encoder).__name__} is not reparameterized"
    return None


class FusedELBO:
    """``loss(vae, x, kl_weight)``: the fused ELBO for one inference config, optionally ``torch.compile``-d.

    Compiling keeps eager semantics for random numbers (inductor's ``fallback_random``), so a
    compiled step draws the same ``z`` as an eager one; AOTAutograd compiles the backward too.
    The first call runs eagerly: it fills torch's KL-dispatch memo, which the compiled graph then
    reads as a dict lookup instead of breaking the graph on the dispatch search.
    """

    def __init__(self, inference, compile: bool = False):
        self.num_particles = inference.num_particles
        self.kl = getattr(inference, "kl", ANALYTIC)
        self.compiled = compile
        self._calls = 0
        self._fn: Callable = fused_elbo_loss
        if compile:
            with _quiet():
                self._fn = torch.compile(fused_elbo_loss, dynamic=False, options={"fallback_random": True})

    def __call__(self, vae: VAE, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        self._calls += 1
        if not self.compiled or self._calls == 1:
            return fused_elbo_loss(vae, x, self.num_particles, self.kl, kl_weight)
        # beta as a tensor: a new float each warm-up step would recompile the graph
        with _quiet():
            return self._fn(vae, x, self.num_particles, self.kl, torch.tensor(float(kl_weight)))


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

    ``auto`` takes the fused ELBO where it covers the config and Pyro's ``elbo`` otherwise;
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
        raise ConfigError(f"train.compile: compiles the fused ELBO only, which does not cover {reason}; "
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


def fused_log_weights(vae: VAE, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    r"""``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x)``, ``z_k ~ q(z|x)``, shape ``(num_particles, batch)``.

    The importance weights of ``pyro_vae.evaluate.log_weights`` (beta = 1) from the component
    distributions directly: the same draws for the same seed (a ``(K, batch)`` particle plate
    draws what ``q.rsample((K,))`` draws), without tracing.
    """
    q = vae.encoder(x)
    z = q.rsample((num_particles,))  # (K, batch, latent_dim)
    return vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior().log_prob(z) - q.log_prob(z)


@torch.no_grad()
def fused_iwae(vae: VAE, x: torch.Tensor, num_samples: int, chunk: int) -> torch.Tensor:
    r"""Per-point IWAE bound :math:`\log \frac{1}{K}\sum_k w_k`, ``(batch,)``, from ``chunk`` particles at a time
    merged by a running log-sum-exp, so memory is one chunk's whatever K is."""
    running = torch.full((x.shape[0],), -math.inf)
    for done in range(0, num_samples, chunk):
        log_w = fused_log_weights(vae, x, min(chunk, num_samples - done))
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
    return running - math.log(num_samples)
