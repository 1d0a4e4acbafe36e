"""Build a :class:`VAE` (and load its data, on its device) from a validated config."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch

from pyro_vae.components.decoders import DECODERS
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.config import Config
from pyro_vae.data import Dataset, load_data
from pyro_vae.errors import ConfigError
from pyro_vae.model import VAE


def build_vae(cfg: Config, x_dim: int, image_shape: Sequence[int] | None = None) -> VAE:
    """A fresh VAE for data of dimension ``x_dim`` from the validated ``cfg``'s component specs.

    ``image_shape`` (the dataset's ``(H, W)`` or ``(C, H, W)``, ``None`` for non-image data) is
    passed to the decoder and guide; the ``conv`` pair needs it and refuses to build without it.

    Pyro's global param store is cleared first, so a stale parameter of an earlier model with
    the same site names cannot shadow this one's.
    """
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (Pyro draws from torch's global generator)."""
    pyro.set_rng_seed(seed)


def build_seeded(cfg: Config, data: Dataset, device: torch.device | None = None) -> VAE:
    """The VAE of ``cfg`` for ``data``'s shape, its initial parameters drawn from ``cfg.seed`` (as every run of
    this config draws them), on ``device`` (default: ``train.device``).

    A learned likelihood scale then starts from ``data.train`` (``likelihood.init_scale``: the data's residual
    scale, unless ``scale_init: config``); that draws no random numbers, so every other parameter and the
    random stream after the build are as :func:`build_vae` leaves them. ``resume`` loads its checkpoint over
    this start, so it continues from the trained scale.
    """
    seed_everything(cfg.seed)
    vae = build_vae(cfg, data.x_dim, data.image_shape)
    vae.likelihood.init_scale(data.train)
    return vae.to(device if device is not None else resolve_device(cfg.train.device))


def prepare(cfg: Config, device: torch.device | None = None):
    """Load and check the data, then build the VAE on ``device`` (default: ``train.device``): every user error
    surfaces here, before any file is written. The data stay on the CPU; batches move to the device."""
    data = load_data(cfg.data, cfg.seed)
    vae = build_seeded(cfg, data, device)
    if cfg.data.binarize == "none":  # binarized splits are in {0, 1}; dynamic binarization keeps train grey on purpose
        path = cfg.data.source
        for split, x in data.splits().items():
            vae.likelihood.check_data(x, where=f"data '{cfg.data.name}' {split} split" + (f" of {path}" if path else ""))
    return data, vae


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``cpu | cuda | auto`` -> a device; ``auto`` is CUDA when available. Rank ``r`` on a node takes GPU ``r``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: 'cuda' but torch.cuda.is_available() is False; use train.device=cpu or auto")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device(name)
