"""The ELBO with the score-function (REINFORCE) gradient, for a comparison against the reparameterized one."""

from __future__ import annotations

from typing import Callable

import pyro.distributions as dist
import torch
from pyro.infer import ELBO, TraceGraph_ELBO
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample

from pyro_vae.config import InferenceConfig


def straight_through(value: torch.Tensor, surrogate: torch.Tensor) -> torch.Tensor:
    """A tensor equal to ``value`` whose gradient is the gradient of ``surrogate``.

    Pyro's surrogate losses have the right gradient but not the right value; the trainer logs
    the loss's value as the training bound, so both must be right.
    """
    return value.detach() + surrogate - surrogate.detach()


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
        return straight_through(-elbo, surrogate)


def pyro_score_function(inference: InferenceConfig) -> ELBO:
    """:class:`ScoreFunctionELBO` with ``num_particles`` vectorized draws."""
    k = inference.num_particles
    return ScoreFunctionELBO(num_particles=k, vectorize_particles=k > 1, max_plate_nesting=1)
