"""The IWAE bound log (1/K) sum_k w_k, chunked over particles and merged by a running log-sum-exp.

One loop, :func:`chunked_iwae`, merges the chunks; what differs between the paths is only where a
chunk's log weights come from: Pyro's traces (:func:`pyro_vae.evaluation.bounds.log_weights`), or the
component distributions directly (:func:`fused_log_weights`) with the encoder's q or any proposal.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable, Optional

import torch
from torch.distributions import Distribution

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.bounds import log_weights
from pyro_vae.evaluation.decode import compiled_log_likelihood, l2_cache_bytes, log_likelihood
from pyro_vae.inference.objectives import unsupported_reason
from pyro_vae.model import VAE

# particles x points x features per chunk: bounds memory whatever K is, and a float32 chunk the size of
# the L2 cache keeps the decoder output in cache between the passes over it (measured at 784-400-50:
# 2x that is as fast, 4x that 1.3x slower)
CHUNK_ELEMENTS = max(2 ** 15, l2_cache_bytes() // 4)
TRACED_CHUNK_ELEMENTS = 2 ** 21  # the traced path pays Pyro's per-pass overhead: fewer, larger chunks
ENGINES = ("auto", "fused", "pyro")


def chunk_size(batch: int, width: int, elements: Optional[int] = None) -> int:
    """Particles per pass so that one ``(particles, batch, width)`` tensor holds ~``elements`` numbers
    (default ``CHUNK_ELEMENTS``)."""
    return max(1, (elements or CHUNK_ELEMENTS) // max(1, batch * width))


def stock_vae(model: Callable, guide: Callable) -> Optional[VAE]:
    """The :class:`VAE` whose own ``model`` and ``guide`` (at beta = 1) these are, else None.

    Only then do :func:`fused_log_weights` compute what the traced ones do: any other
    callable (a refined guide, an overridden model, a beta-scaled ``z`` site) keeps the traced path.
    """
    vae = getattr(model, "__self__", None)
    if not isinstance(vae, VAE) or getattr(guide, "__self__", None) is not vae:
        return None
    if getattr(model, "__func__", None) is not VAE.model or getattr(guide, "__func__", None) is not VAE.guide:
        return None
    return vae if vae.kl_weight == 1.0 else None


def chunked_iwae(log_weights_of: Callable[[int], torch.Tensor], num_samples: int, chunk: int,
                 bar=None, observe: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    r"""Per-point IWAE bound :math:`\log \frac{1}{K}\sum_{k=1}^K w_k`, shape ``(batch,)``, ``K = num_samples``.

    ``log_weights_of(k)`` returns ``k`` fresh log weights per point, ``(k, batch)``; it is called with
    ``chunk`` particles at a time (the last call with the rest), and the chunks are merged by
    :math:`\log \sum_{k \in A \cup B} w_k = \mathrm{logaddexp}(\log \sum_A w_k, \log \sum_B w_k)`,
    so memory is one chunk's whatever K is and no weight is exponentiated outside a log-sum-exp.
    ``bar`` (tqdm) advances by particles x points. ``observe(log_w)``, if given, sees every chunk's
    ``(k, batch)`` log weights (to accumulate other statistics of the same draws, e.g. their mean).
    """
    running: Optional[torch.Tensor] = None
    for done in range(0, num_samples, chunk):
        k = min(chunk, num_samples - done)
        log_w = log_weights_of(k)  # (k, batch)
        if observe is not None:
            observe(log_w)
        chunk_lse = torch.logsumexp(log_w, dim=0)  # (batch,)
        running = chunk_lse if running is None else torch.logaddexp(running, chunk_lse)
        if bar is not None:
            bar.update(k * chunk_lse.shape[0])
    return running - math.log(num_samples)


def iwae(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, width: Optional[int] = None,
         bar=None, engine: str = "auto", compile: bool = False,
         observe: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    """Per-point IWAE bound ``log (1/K) sum_k w_k`` (Burda et al.), shape ``(batch,)``.

    The K draws are taken in chunks of about ``chunk_size(batch, width)`` particles (``width``: the
    widest layer, default ``x_dim``) and merged by :func:`chunked_iwae`. ``engine``: ``auto`` takes
    :func:`fused_iwae` (no tracing, no autograd: the returned bound carries no gradient) when
    ``model`` and ``guide`` are a stock VAE's and its guide can ``rsample``, and Pyro's traced
    weights otherwise; ``pyro`` always traces (the oracle); ``fused`` refuses what it does not
    cover. Both draw the same ``z`` for the same seed. ``compile`` compiles the fused path's
    decoder and likelihood. ``observe`` sees every chunk's log weights (:func:`chunked_iwae`).
    """
    if engine not in ENGINES:
        raise ConfigError(f"iwae engine {engine!r}: must be one of {', '.join(ENGINES)}")
    vae = stock_vae(model, guide) if engine != "pyro" else None
    reason = "a model/guide other than a VAE's own at beta = 1" if vae is None else unsupported_reason(vae, None, x)
    if engine == "fused" and reason is not None:
        raise ConfigError(f"iwae engine 'fused' does not cover {reason}; use engine 'auto' or 'pyro'")
    if compile and reason is not None:
        raise ConfigError(f"iwae compile: compiles the fused path only, which does not cover {reason}")
    if engine != "pyro" and reason is None:
        return fused_iwae(vae, x, num_samples, chunk_size(x.shape[0], width or x.shape[-1]), bar=bar, compile=compile,
                          observe=observe)
    chunk = chunk_size(x.shape[0], width or x.shape[-1], TRACED_CHUNK_ELEMENTS)
    return chunked_iwae(lambda k: log_weights(model, guide, x, k), num_samples, chunk, bar, observe)


def fused_log_weights(vae: VAE, x: torch.Tensor, num_particles: int, q: Optional[Distribution] = None, prior=None,
                      log_lik: Optional[Callable] = None) -> torch.Tensor:
    r"""``log w_k = log p(x|z_k) + log p(z_k) - log q(z_k)``, ``z_k ~ q``, shape ``(num_particles, batch)``.

    With the default ``q = vae.encoder(x)`` these are the importance weights of
    :func:`pyro_vae.evaluation.bounds.log_weights` (beta = 1) from the component distributions
    directly: the same draws for the same seed (a ``(K, batch)`` particle plate draws what
    ``q.rsample((K,))`` draws), without tracing. ``q`` (batch ``(batch,)``, event ``(latent_dim,)``)
    and ``prior = vae.prior()`` may be passed in (neither depends on the draws, so a caller taking
    several chunks builds them once); a ``q`` that cannot ``rsample`` is sampled.
    ``log_lik(decoder, likelihood, z, x)`` defaults to :func:`pyro_vae.evaluation.decode.log_likelihood`.
    """
    q = vae.encoder(x) if q is None else q
    prior = vae.prior() if prior is None else prior
    draw = q.rsample if q.has_rsample else q.sample
    z = draw((num_particles,))  # (K, batch, latent_dim)
    log_p_x = (log_lik or log_likelihood)(vae.decoder, vae.likelihood, z, x)  # (K, batch)
    return log_p_x + prior.log_prob(z) - q.log_prob(z)


@torch.no_grad()
def proposal_iwae(vae: VAE, q: Distribution, x: torch.Tensor, num_samples: int, chunk: Optional[int] = None,
                  bar=None, compile: bool = False,
                  observe: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    r"""Per-point IWAE bound of ``vae``'s model with the proposal ``q``, shape ``(batch,)``:

    .. math:: \log \frac{1}{K} \sum_{k=1}^K \frac{p(z_k)\, p(x|z_k)}{q(z_k)}, \qquad z_k \sim q,

    a lower bound on log p(x) for any q (beta = 1 whatever ``vae.kl_weight``). ``q`` has batch
    ``(batch,)`` and event ``(latent_dim,)``: the encoder's q(z|x), a per-point guide, a refined q*.
    ``chunk`` particles at a time (default :func:`chunk_size` of ``(batch, x_dim)``) merged by
    :func:`chunked_iwae`; the prior is built once for all chunks. ``compile=True`` runs full
    chunks' decoder and log-likelihood through ``torch.compile``
    (:class:`pyro_vae.evaluation.decode.LogLikelihood`; the first chunk of each batch size compiles).
    No autograd: the bound carries no gradient.
    """
    chunk = chunk or chunk_size(x.shape[0], x.shape[-1])
    fast = compiled_log_likelihood() if compile else None
    prior = vae.prior()

    def chunk_log_weights(k: int) -> torch.Tensor:
        log_lik = partial(fast, full=k == chunk) if fast is not None else None
        return fused_log_weights(vae, x, k, q, prior, log_lik)

    return chunked_iwae(chunk_log_weights, num_samples, chunk, bar, observe)


@torch.no_grad()
def fused_iwae(vae: VAE, x: torch.Tensor, num_samples: int, chunk: int, bar=None, compile: bool = False,
               observe: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    r"""Per-point IWAE bound :math:`\log \frac{1}{K}\sum_k w_k`, ``(batch,)``, with the encoder's q(z|x) as proposal:
    :func:`proposal_iwae` with ``q = vae.encoder(x)``, run once for all ``chunk``-particle chunks."""
    return proposal_iwae(vae, vae.encoder(x), x, num_samples, chunk, bar=bar, compile=compile, observe=observe)
