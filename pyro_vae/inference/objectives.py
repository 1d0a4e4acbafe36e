"""Which objective a config asks for: its Pyro loss, and its fused form where one covers the model."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from pyro.infer import ELBO

from pyro_vae.config import WAKE_SLEEP_OBJECTIVES, InferenceConfig
from pyro_vae.errors import ConfigError
from pyro_vae.inference.elbo import fused_elbo_loss, pyro_elbo
from pyro_vae.inference.kl import ANALYTIC, MONTE_CARLO
from pyro_vae.inference.path_gradients import fused_dreg_loss, fused_stl_loss, pyro_dreg, pyro_stl
from pyro_vae.inference.renyi import fused_renyi_loss, pyro_renyi
from pyro_vae.inference.rws import fused_rws_loss
from pyro_vae.inference.score_function import pyro_score_function
from pyro_vae.model import VAE

# (objective, estimator) -> builder; a combination missing here is rejected by InferenceConfig
OBJECTIVES: Dict[tuple, Callable[[InferenceConfig], ELBO]] = {
    ("elbo", "reparam"): pyro_elbo,
    ("iwae", "reparam"): pyro_renyi(0.0),
    ("renyi", "reparam"): pyro_renyi(None),
    ("elbo", "score_function"): pyro_score_function,
    ("elbo", "stl"): pyro_stl,
    ("iwae", "dreg"): pyro_dreg,
}


def build_elbo(inference: InferenceConfig) -> ELBO:
    """The Pyro loss for ``inference``; every one has ``differentiable_loss(model, guide, x)`` (a sum over the batch).

    - ``objective: elbo`` -- ``kl: analytic`` -> ``TraceMeanField_ELBO`` (closed-form KL(q || p) per
      site where Pyro has one, Monte Carlo otherwise); ``kl: monte_carlo`` -> ``Trace_ELBO``;
    - ``objective: iwae`` / ``renyi`` -> :class:`RenyiBound` with alpha 0 / ``inference.alpha``;
    - ``estimator: score_function`` -> :class:`ScoreFunctionELBO`;
    - ``estimator: stl`` (elbo) / ``dreg`` (iwae) -> :class:`StickingTheLanding` / :class:`DoublyReparameterizedIWAE`
      (:mod:`pyro_vae.inference.path_gradients`): the same values, path-derivative gradients.

    Particles are vectorized: one batched pass draws ``num_particles`` z per data point. ``rws`` and
    ``wake_sleep`` have no Pyro loss (:func:`no_pyro_loss`): a :class:`ConfigError`.
    """
    if not has_pyro_loss(inference):
        raise ConfigError(no_pyro_loss(inference))
    return OBJECTIVES[loss_key(inference)](inference)


def no_pyro_loss(inference) -> str:
    """Why ``inference`` has no Pyro loss (its objective runs on the fused engine only), as one line."""
    return (f"inference.objective: {inference.objective} runs on the fused engine only (Pyro's "
            f"ReweightedWakeSleep weights a whole minibatch's draws with one softmax, so it has no minibatched "
            f"Pyro loss; see pyro_vae.inference.rws)")


def has_pyro_loss(inference) -> bool:
    """Whether :func:`build_elbo` has a Pyro loss for ``inference`` (its key is in :data:`OBJECTIVES`: every
    objective but rws and wake_sleep)."""
    return loss_key(inference) in OBJECTIVES


# (objective, estimator) -> (the fused loss, its argument after num_particles read from the inference config)
LOSSES: Dict[Tuple[str, str], Tuple[Callable, Callable]] = {
    ("elbo", "reparam"): (fused_elbo_loss, lambda inference: getattr(inference, "kl", ANALYTIC)),
    ("iwae", "reparam"): (fused_renyi_loss, lambda inference: 0.0),
    ("renyi", "reparam"): (fused_renyi_loss, lambda inference: inference.alpha),
    ("elbo", "stl"): (fused_stl_loss, lambda inference: MONTE_CARLO),
    ("iwae", "dreg"): (fused_dreg_loss, lambda inference: 0.0),
    ("rws", "reparam"): (fused_rws_loss, lambda inference: inference.phi_update),
    ("wake_sleep", "reparam"): (fused_rws_loss, lambda inference: "sleep"),
}


def loss_key(inference) -> Tuple[str, str]:
    """``(objective, estimator)`` of ``inference``, the key of :data:`LOSSES` (older configs: elbo, reparam)."""
    return getattr(inference, "objective", "elbo"), getattr(inference, "estimator", "reparam")


def unsupported_reason(vae: VAE, inference, probe: Optional[torch.Tensor] = None) -> Optional[str]:
    """Why the fused loss cannot stand in for Pyro's here (``None``: it can).

    It covers the (objective, estimator) pairs in :data:`LOSSES` (older configs without those fields are
    ``elbo`` with ``reparam``) on the stock :class:`VAE` model and guide, with a guide that can ``rsample``
    (RWS and wake-sleep need no ``rsample``: they differentiate log q, never through z).
    """
    objective, estimator = loss_key(inference)
    if (objective, estimator) not in LOSSES:
        covered = ", ".join(f"{o} with {e}" for o, e in LOSSES)
        return f"inference.objective={objective}, inference.estimator={estimator} (fused covers {covered})"
    if type(vae).model is not VAE.model or type(vae).guide is not VAE.guide:
        return f"{type(vae).__name__} overrides model/guide"
    if probe is not None and objective not in WAKE_SLEEP_OBJECTIVES:
        with torch.no_grad():
            if not vae.encoder(probe[:1]).has_rsample:
                return f"guide {type(vae.encoder).__name__} is not reparameterized"
    return None
