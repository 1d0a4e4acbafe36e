"""Training objectives: which Pyro ELBO a config asks for, and which KL each latent site really uses."""

from __future__ import annotations

import math
from typing import Callable, Dict

import pyro.distributions as dist
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO, RenyiELBO, Trace_ELBO, TraceGraph_ELBO, TraceMeanField_ELBO
from pyro.infer.util import get_dependent_plate_dims, torch_sum
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from .config import InferenceConfig

ANALYTIC, MONTE_CARLO = "analytic", "monte_carlo"
ELBOS = {ANALYTIC: TraceMeanField_ELBO, MONTE_CARLO: Trace_ELBO}


def _straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is the gradient of ``surrogate``.

    Pyro's surrogate losses have the right gradient but not the right value; the trainer logs
    the loss's value as the training bound, so both must be right.
    """
    return value.detach() + surrogate - surrogate.detach()


class RenyiBound(RenyiELBO):
    r"""Pyro's :class:`~pyro.infer.RenyiELBO` with a ``differentiable_loss`` (reparameterized guides).

    Per data point, with ``K = num_particles`` draws ``z_k ~ q(z|x)`` and
    ``log w_k = log p(x, z_k) - log q(z_k|x)``:

    .. math:: L_\alpha(x) = \frac{1}{1-\alpha} \log \frac{1}{K} \sum_k w_k^{1-\alpha},

    summed over the ``data`` plate (alpha = 0: the IWAE bound of Burda et al.).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        particles = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            sum_dims = get_dependent_plate_dims(model_trace.nodes.values())
            log_w = 0.0
            for trace, sign in ((model_trace, 1.0), (guide_trace, -1.0)):
                for site in trace.nodes.values():
                    if site["type"] == "sample":
                        log_w = log_w + sign * torch_sum(site["log_prob"], sum_dims)
            particles.append(log_w)
        # vectorized: one trace whose leading dim is the particle plate; else one trace per particle
        log_w = particles[0] if self.vectorize_particles and self.num_particles > 1 else torch.stack(particles)
        log_w = log_w.reshape(self.num_particles, -1)  # (K, batch)
        bound = (torch.logsumexp((1.0 - self.alpha) * log_w, dim=0) - math.log(self.num_particles)) / (1.0 - self.alpha)
        return -bound.sum()


class NonReparameterized(dist.TorchDistribution):
    """``base`` with ``has_rsample = False``: same samples and densities, but Pyro must use the score function."""

    arg_constraints = {}
    has_rsample = False

    def __init__(self, base: dist.TorchDistribution):
        self.base = base
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self):
        return self.base.support

    @property
    def mean(self):
        return self.base.mean

    @property
    def variance(self):
        return self.base.variance

    def expand(self, batch_shape, _instance=None):
        return NonReparameterized(self.base.expand(batch_shape))

    def sample(self, sample_shape=torch.Size()):
        with torch.no_grad():
            return self.base.sample(sample_shape)

    def log_prob(self, value):
        return self.base.log_prob(value)


class _ScoreFunctionGuide(Messenger):
    """Wraps every latent site's distribution in :class:`NonReparameterized` (apply to the guide only)."""

    def _pyro_sample(self, msg):
        if not (msg["is_observed"] or site_is_subsample(msg) or isinstance(msg["fn"], NonReparameterized)):
            msg["fn"] = NonReparameterized(msg["fn"])


def score_function_guide(guide: Callable) -> Callable:
    """``guide`` with its latent sites made non-reparameterized."""
    return _ScoreFunctionGuide()(guide)


class ScoreFunctionELBO(TraceGraph_ELBO):
    r"""The ELBO with the score-function (REINFORCE) gradient, via :class:`~pyro.infer.TraceGraph_ELBO`.

    The guide's latent sites are wrapped non-reparameterized, so the gradient is
    :math:`\mathbb{E}_q[\nabla_\phi \log q(z|x)\, (\log p(x,z) - \log q(z|x))]` (using the
    downstream-cost Rao-Blackwellization of TraceGraph_ELBO) instead of the pathwise one.
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        # TraceGraph's helper returns (ELBO, surrogate loss), each averaged over particles
        elbo, surrogate = self._loss_and_surrogate_loss(model, score_function_guide(guide), args, kwargs)
        return _straight_through(-elbo, surrogate)


def _elbo(inference: InferenceConfig) -> ELBO:
    k = inference.num_particles
    return ELBOS[inference.kl](num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)


def _renyi(alpha: float) -> Callable[[InferenceConfig], ELBO]:
    def build(inference: InferenceConfig) -> ELBO:
        k = inference.num_particles
        return RenyiBound(alpha=inference.alpha if alpha is None else alpha, num_particles=k,
                          vectorize_particles=k > 1, max_plate_nesting=1)

    return build


def _score_function(inference: InferenceConfig) -> ELBO:
    k = inference.num_particles
    return ScoreFunctionELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)


# (objective, estimator) -> builder; a combination missing here is rejected by InferenceConfig
OBJECTIVES: Dict[tuple, Callable[[InferenceConfig], ELBO]] = {
    ("elbo", "reparam"): _elbo,
    ("iwae", "reparam"): _renyi(0.0),
    ("renyi", "reparam"): _renyi(None),
    ("elbo", "score_function"): _score_function,
}


def build_elbo(inference: InferenceConfig) -> ELBO:
    """The Pyro loss for ``inference``; every one has ``differentiable_loss(model, guide, x)`` (a sum over the batch).

    - ``objective: elbo`` -- ``kl: analytic`` -> ``TraceMeanField_ELBO`` (closed-form KL(q || p) per
      site where Pyro has one, Monte Carlo otherwise); ``kl: monte_carlo`` -> ``Trace_ELBO``;
    - ``objective: iwae`` / ``renyi`` -> :class:`RenyiBound` with alpha 0 / ``inference.alpha``;
    - ``estimator: score_function`` -> :class:`ScoreFunctionELBO`.

    Particles are vectorized: one batched pass draws ``num_particles`` z per data point.
    """
    return OBJECTIVES[(inference.objective, inference.estimator)](inference)


def evaluation_elbo() -> ELBO:
    """The ELBO itself (analytic KL where Pyro has one) whatever the training objective, so that
    validation and test numbers mean the same thing for an IWAE-, Renyi- or score-function-trained run."""
    return TraceMeanField_ELBO(max_plate_nesting=1)


def kl_report(model, guide, x: torch.Tensor, kl: str) -> Dict[str, str]:
    """For each latent site, the KL estimator the ELBO actually uses: ``analytic`` or ``monte_carlo``.

    ``TraceMeanField_ELBO`` silently falls back to Monte Carlo for a (q, p) pair without a
    registered ``kl_divergence``; this replays the same check on one trace so the run can say so.
    """
    guide_trace = poutine.trace(guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(x)
    report = {}
    for name in model_trace.stochastic_nodes:
        site = model_trace.nodes[name]
        if site_is_subsample(site):  # the "data" plate's own index site
            continue
        if kl == MONTE_CARLO:
            report[name] = MONTE_CARLO
            continue
        try:
            kl_divergence(guide_trace.nodes[name]["fn"], site["fn"])
            report[name] = ANALYTIC
        except NotImplementedError:
            report[name] = MONTE_CARLO
    return report
