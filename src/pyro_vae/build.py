"""Build a :class:`VAE` from a validated config."""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Union

import pyro

from .config import Config, validate
from .decoders import DECODERS
from .guides import GUIDES
from .likelihoods import LIKELIHOODS
from .model import VAE
from .priors import PRIORS


def build_vae(config: Union[Config, Dict[str, Any]], x_dim: int, image_shape: Optional[Sequence[int]] = None) -> VAE:
    """A fresh VAE for data of dimension ``x_dim`` from ``config`` (a :class:`Config` or a raw mapping).

    ``image_shape`` (the dataset's ``(H, W)`` or ``(C, H, W)``, ``None`` for non-image data) is
    passed to the decoder and guide; the ``conv`` pair needs it and refuses to build without it.

    Pyro's global param store is cleared first, so a stale parameter of an earlier model with
    the same site names cannot shadow this one's.
    """
    cfg = config if isinstance(config, Config) else validate(config)
    pyro.clear_param_store()
    m = cfg.model
    image_shape = tuple(image_shape) if image_shape is not None else None
    likelihood = LIKELIHOODS.build(m.likelihood, x_dim)
    return VAE(
        prior=PRIORS.build(m.prior, m.latent_dim),
        decoder=DECODERS.build(m.decoder, m.latent_dim, x_dim * likelihood.params_per_feature, image_shape),
        likelihood=likelihood,
        encoder=GUIDES.build(cfg.guide, x_dim, m.latent_dim, image_shape),
        latent_dim=m.latent_dim,
        x_dim=x_dim,
    )
