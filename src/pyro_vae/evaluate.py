"""Honest evaluation of a trained VAE: ELBOs, IWAE log-likelihood, exact log p(x) when it exists, and the gaps.

Every number is per data point (nats), reported as the mean over a split with the standard error
of that mean, so two numbers can be compared with their Monte Carlo and sampling error in view.
The central identity, exact for the linear-Gaussian model (probabilistic PCA):

.. math:: \\log p(x) = \\mathrm{ELBO}(x) + \\mathrm{KL}(q(z|x) \\,\\|\\, p(z|x)).
"""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Tuple

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from .errors import ConfigError, RunDirError
from .fused import fused_iwae, unsupported_reason
from .iwae import l2_cache_bytes
from .model import VAE

ACTIVE_UNIT_THRESHOLD = 1e-2  # Burda et al. (2016): unit d is active if Cov_x(E_q[z_d]) > 0.01
# particles x points x features per chunk: bounds memory whatever K is, and a float32 chunk the size of
# the L2 cache keeps the decoder output in cache between the passes over it (measured at 784-400-50:
# 2x that is as fast, 4x that 1.3x slower)
CHUNK_ELEMENTS = max(2 ** 15, l2_cache_bytes() // 4)
TRACED_CHUNK_ELEMENTS = 2 ** 21  # the traced path pays Pyro's per-pass overhead: fewer, larger chunks
ENGINES = ("auto", "fused", "pyro")
ELBO_PARTICLES = 16  # z draws per point behind each ELBO estimate


# -- per-point estimators --------------------------------------------------------------------------
@contextmanager
def unit_kl_weight(vae: VAE) -> Iterator[None]:
    """Evaluate with beta = 1: the bounds below are bounds on log p(x) only then."""
    weight, vae.kl_weight = vae.kl_weight, 1.0
    try:
        yield
    finally:
        vae.kl_weight = weight


def traces(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int):
    """Guide and replayed model traces with ``num_particles`` vectorized draws per point.

    The ``particles`` plate sits at dim -2, left of the ``data`` plate, so every site's
    ``log_prob`` has shape ``(num_particles, batch)`` -- per data point, unlike Pyro's
    ``vectorized_importance_weights``, which sums over the data plate.
    """
    with pyro.plate("particles", num_particles, dim=-2):
        guide_trace = poutine.trace(guide).get_trace(x)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    guide_trace.compute_log_prob()
    return model_trace, guide_trace


def _sample_sites(trace):
    return [s for s in trace.nodes.values() if s["type"] == "sample" and not site_is_subsample(s)]


def log_weights(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    """``log w_k = log p(x, z_k) - log q(z_k | x)``, ``z_k ~ q(z|x)``, shape ``(num_particles, batch)``."""
    model_trace, guide_trace = traces(model, guide, x, num_particles)
    log_w = sum(s["log_prob"] for s in _sample_sites(model_trace))
    return log_w - sum(s["log_prob"] for s in _sample_sites(guide_trace))


def elbo_terms(model: Callable, guide: Callable, x: torch.Tensor, num_particles: int,
               kl: str = "analytic") -> Tuple[torch.Tensor, str]:
    """Per-point ELBO estimate ``(batch,)`` averaged over ``num_particles`` draws, and the KL used.

    ``kl: analytic`` replaces ``log p(z) - log q(z|x)`` by ``-KL(q || p(z))`` at every latent site
    with a closed form (``monte_carlo`` if any site lacks one).
    """
    model_trace, guide_trace = traces(model, guide, x, num_particles)
    used = "monte_carlo"
    total = 0.0
    if kl == "analytic":
        try:
            terms = []
            for site in _sample_sites(guide_trace):
                terms.append(-kl_divergence(site["fn"], model_trace.nodes[site["name"]]["fn"]))
            total = sum(terms) + sum(s["log_prob"] for s in _sample_sites(model_trace) if s["is_observed"])
            used = "analytic"
        except NotImplementedError:
            pass
    if used == "monte_carlo":
        total = sum(s["log_prob"] for s in _sample_sites(model_trace))
        total = total - sum(s["log_prob"] for s in _sample_sites(guide_trace))
    return total.expand(num_particles, x.shape[0]).mean(0), used


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


# -- the linear-Gaussian model: exact answers -----------------------------------------------------
def linear_gaussian(vae: VAE) -> Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(W, b, sigma^2)`` if ``vae`` is p(z) = N(0, I), x|z ~ N(Wz + b, diag sigma^2), else None.

    ``W`` is ``(x_dim, latent_dim)``; ``sigma^2`` is ``(x_dim,)`` (a global sigma is broadcast).
    """
    names = (getattr(vae.prior, "registry_name", None), getattr(vae.decoder, "registry_name", None),
             getattr(vae.likelihood, "registry_name", None))
    if names != ("normal", "linear", "normal"):
        return None
    prior = vae.prior()
    base = getattr(prior, "base_dist", None)
    if not isinstance(base, dist.Normal) or not (torch.all(base.loc == 0) and torch.all(base.scale == 1)):
        return None
    W, b = vae.decoder.weight.detach(), vae.decoder.bias.detach()
    sigma2 = (vae.likelihood.scale.detach() ** 2).expand(W.shape[0])
    return W, b, sigma2


def marginal(W: torch.Tensor, b: torch.Tensor, sigma2: torch.Tensor) -> dist.MultivariateNormal:
    """p(x) = N(b, W W^T + diag sigma^2)."""
    return dist.MultivariateNormal(b, covariance_matrix=W @ W.T + torch.diag(sigma2))


def posterior(W: torch.Tensor, b: torch.Tensor, sigma2: torch.Tensor, x: torch.Tensor) -> dist.MultivariateNormal:
    """p(z|x) = N(S W^T D^-1 (x - b), S), S = (I + W^T D^-1 W)^-1, D = diag sigma^2; batch ``(batch,)``."""
    Wd = W / sigma2[:, None]  # D^-1 W, (x_dim, latent_dim)
    precision = torch.eye(W.shape[1], device=W.device, dtype=W.dtype) + W.T @ Wd
    cov = torch.linalg.inv(precision)
    cov = 0.5 * (cov + cov.T)
    loc = (x - b) @ Wd @ cov  # (batch, latent_dim); cov symmetric
    return dist.MultivariateNormal(loc, covariance_matrix=cov.expand(x.shape[0], -1, -1))


def as_gaussian(q: dist.Distribution) -> Optional[dist.MultivariateNormal]:
    """q(z|x) as a MultivariateNormal with batch ``(batch,)`` if it is Gaussian, else None."""
    if isinstance(q, dist.MultivariateNormal):
        return q
    base = getattr(q, "base_dist", None)
    if isinstance(q, dist.Independent) and isinstance(base, dist.Normal):
        return dist.MultivariateNormal(base.loc, scale_tril=torch.diag_embed(base.scale))
    return None


# -- diagnostics of the latent space ----------------------------------------------------------------
def kl_per_dimension(q: dist.Distribution, p: dist.Distribution, num_samples: int = 256) -> Optional[torch.Tensor]:
    """KL(q(z_d|x) || p(z_d)) for each latent dimension ``d``, shape ``(batch, latent_dim)``.

    Closed form where torch has one, else Monte Carlo with ``num_samples`` draws; None when q or p
    is not a product over dimensions (then a per-dimension KL is not defined).
    """
    q_base, p_base = getattr(q, "base_dist", None), getattr(p, "base_dist", None)
    if not (isinstance(q, dist.Independent) and isinstance(p, dist.Independent)
            and q.reinterpreted_batch_ndims == 1 and p.reinterpreted_batch_ndims == 1):
        return None
    try:
        return kl_divergence(q_base, p_base)
    except NotImplementedError:
        z = q_base.rsample((num_samples,)) if q_base.has_rsample else q_base.sample((num_samples,))
        return (q_base.log_prob(z) - p_base.log_prob(z)).mean(0)


def stat(values: torch.Tensor) -> Dict[str, float]:
    """Mean over data points and its standard error."""
    values = values.double()
    n = values.numel()
    se = float(values.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.nan
    return {"mean": float(values.mean()), "se": se}


# -- Cremer et al. (2018): approximation and amortization gaps -------------------------------------
def refine_guide(vae: VAE, x: torch.Tensor, steps: int = 300, lr: float = 1e-2,
                 num_particles: int = 8, bar=None) -> Callable:
    """The best per-point Gaussian q_n(z) found from the encoder's q(z|x_n) by Adam on the per-point ELBO.

    Each point gets its own ``loc`` and ``log scale`` ``(batch, latent_dim)``; since the ELBO is a sum
    over points, one Adam run on the sum optimizes each independently. Returns a guide ``guide(x)``.
    """
    q = vae.encoder(x)
    base = getattr(q, "base_dist", None)
    if not (isinstance(q, dist.Independent) and isinstance(base, dist.Normal)):
        raise ConfigError(f"--gaps: needs a mean-field Normal guide (guide '{getattr(vae.encoder, 'registry_name', '?')}' "
                          f"gives {type(q).__name__})")
    loc = base.loc.detach().clone().requires_grad_(True)
    log_scale = base.scale.detach().log().clone().requires_grad_(True)

    def guide(x_: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", x_.shape[0]):
            return pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))

    optimizer = torch.optim.Adam([loc, log_scale], lr=lr)
    frozen = [p for p in vae.parameters() if p.requires_grad]
    for p in frozen:  # only q_n moves; skip gradients for the decoder
        p.requires_grad_(False)
    try:
        for _ in range(steps):
            elbo, _ = elbo_terms(vae.model, guide, x, num_particles)
            optimizer.zero_grad()
            (-elbo.sum()).backward()
            optimizer.step()
            if bar is not None:
                bar.update(x.shape[0])
    finally:
        for p in frozen:
            p.requires_grad_(True)
    loc.requires_grad_(False)
    log_scale.requires_grad_(False)
    return guide


# -- the whole evaluation -------------------------------------------------------------------------
def evaluate_points(vae: VAE, x: torch.Tensor, samples: int = 1000, batch_size: int = 256, gaps: bool = False,
                    gap_steps: int = 300, progress: bool = False) -> Dict[str, Any]:
    """Every number of ``pyro-vae evaluate`` for the rows of ``x`` ``(n, x_dim)``; see the module docstring.

    With ``gaps`` (Cremer et al. 2018), q* is the best per-point Gaussian (:func:`refine_guide`):
    approximation gap = log p(x) - ELBO(q*), amortization gap = ELBO(q*) - ELBO(q(z|x)). Without
    an exact log p(x) it is estimated by IWAE with q* as proposal: the encoder's q can be a poor
    proposal when the amortization gap is large.
    """
    vae.eval()
    start = time.perf_counter()
    exact = linear_gaussian(vae)
    n = x.shape[0]
    per_point = {k: [] for k in ("elbo", "elbo_mc", "iwae", "log_p", "kl_post", "kl_dims", "q_mean", "gap_elbo", "gap_iwae")}
    kl_used = "analytic"
    width = max([x.shape[-1]] + [m.out_features for m in vae.modules() if isinstance(m, torch.nn.Linear)])
    total = n * (samples + ((gap_steps + (samples if exact is None else 0)) if gaps else 0))
    bar = tqdm(total=total, unit="draw", unit_scale=True, dynamic_ncols=True, disable=not progress,
               file=sys.stderr, desc="evaluate")
    try:
        with unit_kl_weight(vae):
            for xb in x.split(batch_size):
                with torch.no_grad():
                    elbo, used = elbo_terms(vae.model, vae.guide, xb, ELBO_PARTICLES, "analytic")
                    kl_used = used if used == "monte_carlo" else kl_used
                    per_point["elbo"].append(elbo)
                    per_point["elbo_mc"].append(elbo_terms(vae.model, vae.guide, xb, ELBO_PARTICLES, "monte_carlo")[0])
                    per_point["iwae"].append(iwae(vae.model, vae.guide, xb, samples, width, bar))
                    q, p = vae.encoder(xb), vae.prior()
                    per_point["q_mean"].append(q.mean)
                    per_point["kl_dims"].append(kl_per_dimension(q, p))
                    if exact is not None:
                        per_point["log_p"].append(marginal(*exact).log_prob(xb))
                        qg = as_gaussian(q)
                        if qg is not None:
                            per_point["kl_post"].append(kl_divergence(qg, posterior(*exact, xb)))
                if gaps:
                    with torch.enable_grad():  # callers may evaluate under no_grad; refining needs gradients
                        guide = refine_guide(vae, xb, steps=gap_steps, bar=bar)
                    with torch.no_grad():
                        per_point["gap_elbo"].append(elbo_terms(vae.model, guide, xb, ELBO_PARTICLES, "analytic")[0])
                        if exact is None:  # q* is a better proposal than the encoder: a tighter log p(x) bound
                            per_point["gap_iwae"].append(iwae(vae.model, guide, xb, samples, width, bar))
    finally:
        bar.close()
    cat = {k: torch.cat(v) for k, v in per_point.items() if v and all(t is not None for t in v)}
    out: Dict[str, Any] = {"n": n, "samples": samples}
    out["elbo"] = {**stat(cat["elbo"]), "kl": kl_used, "particles": ELBO_PARTICLES}
    out["elbo_monte_carlo"] = {**stat(cat["elbo_mc"]), "kl": "monte_carlo", "particles": ELBO_PARTICLES}
    out["iwae"] = {**stat(cat["iwae"]), "samples": samples}
    if "log_p" in cat:
        out["log_likelihood"] = {**stat(cat["log_p"]), "exact": True}
    else:
        out["log_likelihood"] = None
    if "kl_post" in cat:
        out["kl_to_true_posterior"] = {**stat(cat["kl_post"]), "exact": True}
        out["identity_residual"] = {**stat(cat["log_p"] - cat["elbo"] - cat["kl_post"]),
                                    "what": "log p(x) - ELBO - KL(q(z|x) || p(z|x))"}
    elif "log_p" in cat:
        out["kl_to_true_posterior"] = {**stat(cat["log_p"] - cat["elbo"]), "exact": False,
                                       "what": "log p(x) - ELBO (q is not Gaussian)"}
        out["identity_residual"] = None
    else:
        out["kl_to_true_posterior"] = {**stat(cat["iwae"] - cat["elbo"]), "exact": False,
                                       "what": "estimate: iwae - elbo (a lower bound, up to MC error, as iwae <= log p(x))"}
        out["identity_residual"] = None
    if "kl_dims" in cat:
        out["kl_per_dimension"] = [float(v) for v in cat["kl_dims"].mean(0)]
    else:
        out["kl_per_dimension"] = None
    variance = cat["q_mean"].var(0, unbiased=True) if n > 1 else torch.zeros_like(cat["q_mean"][0])
    out["posterior_mean_variance"] = [float(v) for v in variance]
    out["active_units"] = int((variance > ACTIVE_UNIT_THRESHOLD).sum())
    out["active_unit_threshold"] = ACTIVE_UNIT_THRESHOLD
    out["latent_dim"] = int(cat["q_mean"].shape[-1])
    if gaps:
        reference = cat["log_p"] if "log_p" in cat else cat["gap_iwae"]
        out["gaps"] = {
            "optimal_elbo": stat(cat["gap_elbo"]),
            "iwae_optimal_proposal": None if "log_p" in cat else {**stat(cat["gap_iwae"]), "samples": samples},
            "approximation_gap": {**stat(reference - cat["gap_elbo"]),
                                  "log_p": "exact" if "log_p" in cat else "iwae with the refined per-point q as proposal"},
            "amortization_gap": stat(cat["gap_elbo"] - cat["elbo"]),
            "steps": gap_steps,
        }
    else:
        out["gaps"] = None
    out["seconds"] = time.perf_counter() - start
    return out


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


def evaluate_run(path: str | Path, split: str = "test", samples: int = 1000, batch_size: int = 256,
                 gaps: bool = False, gap_steps: int = 300, progress: bool = False, seed: int = 0) -> Dict[str, Any]:
    """Evaluate the run in ``path`` on ``split`` and write ``path/evaluation.json`` atomically."""
    from .rundir import RunDir, atomic_write_json
    from .runs import load_run

    RunDir.existing(path).check_writable("evaluate writes evaluation.json into the run directory")
    run = load_run(path)
    x = run.data.split(split)
    if len(x) == 0:
        raise RunDirError(f"{run.path}: the {split} split is empty (see data.{split}_fraction in config.yaml)")
    pyro.set_rng_seed(seed)
    result = {"run": str(run.path), "split": split, "seed": seed,
              **evaluate_points(run.vae, x, samples, batch_size, gaps, gap_steps, progress)}
    atomic_write_json(Path(run.path) / "evaluation.json", result)
    return result
