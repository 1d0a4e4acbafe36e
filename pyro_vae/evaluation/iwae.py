"""The IWAE bound log (1/K) sum_k w_k, chunked over particles and merged by a running log-sum-exp."""

from __future__ import annotations

import math
from typing import Callable, Optional

import torch

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.bounds import log_weights
from pyro_vae.evaluation.decode import l2_cache_bytes
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

    Only then do :func:`pyro_vae.fused.fused_log_weights` compute what the traced ones do: any other
    callable (a refined guide, an overridden model, a beta-scaled ``z`` site) keeps the traced path.
    """
    vae = getattr(model, "__self__", None)
    if not isinstance(vae, VAE) or getattr(guide, "__self__", None) is not vae:
        return None
    if getattr(model, "__func__", None) is not VAE.model or getattr(guide, "__func__", None) is not VAE.guide:
        return None
    return vae if vae.kl_weight == 1.0 else None


def iwae(model: Callable, guide: Callable, x: torch.Tensor, num_samples: int, width: Optional[int] = None,
         bar=None, engine: str = "auto", compile: bool = False) -> torch.Tensor:
    """Per-point IWAE bound ``log (1/K) sum_k w_k`` (Burda et al.), shape ``(batch,)``.

    The K draws are taken in chunks and merged with a running log-sum-exp, so memory is that of
    one chunk whatever K is. ``engine``: ``auto`` takes :func:`pyro_vae.fused.fused_iwae` (no
    tracing, no autograd: the returned bound carries no gradient) when ``model`` and ``guide``
    are a stock VAE's and its guide can ``rsample``, and Pyro's traced weights otherwise;
    ``pyro`` always traces (the oracle); ``fused`` refuses what it does not cover. Both draw
    the same ``z`` for the same seed. ``compile`` compiles the fused path's decoder and likelihood.
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
        return fused_iwae(vae, x, num_samples, chunk_size(x.shape[0], width or x.shape[-1]), bar=bar, compile=compile)
    chunk = chunk_size(x.shape[0], width or x.shape[-1], TRACED_CHUNK_ELEMENTS)
    running = torch.full((x.shape[0],), -math.inf, device=x.device, dtype=x.dtype)
    done = 0
    while done < num_samples:
        k = min(chunk, num_samples - done)
        running = torch.logaddexp(running, torch.logsumexp(log_weights(model, guide, x, k), dim=0))
        done += k
        if bar is not None:
            bar.update(k * x.shape[0])
    return running - math.log(num_samples)


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
    from pyro_vae.evaluation.decode import log_likelihood

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

    from pyro_vae.evaluation.decode import compiled_log_likelihood

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
