"""Build a :class:`VAE` from a validated config."""

from __future__ import annotations

from typing import Any, Dict, Union

import pyro

from .config import Config, validate
from .decoders import DECODERS
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .model import VAE
from .priors import PRIORS


def build_vae(config: Union[Config, Dict[str, Any]], x_dim: int) -> VAE:
    """A fresh VAE for data of dimension ``x_dim`` from ``config`` (a :class:`Config` or a raw mapping).

    Pyro's global param store is cleared first, so a stale parameter of an earlier model with
    the same site names cannot shadow this one's.
    """
    cfg = config if isinstance(config, Config) else validate(config)
    pyro.clear_param_store()
    m = cfg.model
    likelihood = LIKELIHOODS.build(m.likelihood, x_dim)
    return VAE(
        prior=PRIORS.build(m.prior, m.latent_dim),
        decoder=DECODERS.build(m.decoder, m.latent_dim, x_dim * likelihood.params_per_feature),
        likelihood=likelihood,
        encoder=GUIDES.build(cfg.guide, x_dim, m.latent_dim),
        latent_dim=m.latent_dim,
        x_dim=x_dim,
    )
