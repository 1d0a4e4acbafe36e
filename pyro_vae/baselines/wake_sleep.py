r"""Wake-sleep and reweighted wake-sleep (RWS) as fits on the project's Trainer: the comparison's
``rws`` and ``wake_sleep`` methods.

The objectives, their math and why Pyro's :class:`~pyro.infer.ReweightedWakeSleep` does not serve for
minibatches are in :mod:`pyro_vae.inference.rws`; ``pyro-vae train`` reaches the same loss through
``inference.objective: rws`` or ``wake_sleep``. :func:`fit` adds what a baseline needs beyond the loss:
its own per-epoch score (exact for a linear-Gaussian model, else IWAE with the encoder as proposal, or a
comparison's yardstick), a fixed-budget or stopping-rule run, and a :class:`VariationalFit` to report.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from pyro_vae.baselines.fitting import check_budget, curve_log_likelihood, fit_history
from pyro_vae.baselines.variational_em import VariationalFit
from pyro_vae.build import build_seeded
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.linear_gaussian import is_linear_gaussian
from pyro_vae.inference.engine import adam
from pyro_vae.inference.rws import check_arguments, rws_loss
from pyro_vae.model import VAE
from pyro_vae.training.stopping import BudgetLimit, EpochLimit
from pyro_vae.training.trainer import Trainer


def kind_of(num_particles: int, phi_update: str) -> str:
    """``wake_sleep`` (K = 1, sleep-phi) or ``rws_<phi_update>``."""
    return "wake_sleep" if (num_particles, phi_update) == (1, "sleep") else f"rws_{phi_update}"


def fit(cfg: Config, data: Dataset, *, num_particles: int = 5, phi_update: str = "wake", epochs: Optional[int] = None,
        seconds: Optional[float] = None, stopping: Optional[EpochLimit] = None,
        progress: bool = False, validation: Optional[Callable[[VAE], float]] = None) -> VariationalFit:
    """Train ``cfg``'s VAE (built by :func:`build_seeded`, on the CPU) on ``data.train`` by (reweighted) wake-sleep.

    The project's :class:`Trainer` (the config's seed, batch size, clipping and guards; seeded minibatches,
    one step per minibatch) steps one Adam over all parameters on :func:`rws_loss`, under ``stopping``, or
    else a budget of ``epochs`` epochs or ``seconds`` of training at the fixed step size ``optim.lr``. The
    per-epoch score (the stopping rule's, and the history's ``log_likelihood``) is the exact log-likelihood of
    the training split for a linear-Gaussian model, else a 64-sample IWAE estimate with the encoder as the
    proposal on its first 512 points (:func:`pyro_vae.baselines.fitting.curve_log_likelihood`); it
    runs off the training clock; ``validation(vae)``, if given, replaces it (a comparison's yardstick). History
    rows also carry ``elbo``, the epoch's mean training objective (the
    K-sample IWAE bound), and ``gradient_steps``. Returns a :class:`VariationalFit` without a local guide,
    ``kind`` from :func:`kind_of`.
    """
    check_arguments(num_particles, phi_update)
    if stopping is None:
        check_budget(epochs, seconds)
    vae = build_seeded(cfg, data, torch.device("cpu"))
    x = data.train
    exact = is_linear_gaussian(cfg.model)
    rule = stopping if stopping is not None else BudgetLimit(cfg.optim.lr, max_epochs=epochs, seconds=seconds)
    kind = kind_of(num_particles, phi_update)

    def score() -> float:
        return validation(vae) if validation is not None else curve_log_likelihood(vae, x, exact)

    trainer = Trainer(vae, rws_loss(vae, num_particles, phi_update), adam(vae.parameters(), lr=rule.lr), data, rule,
                      seed=cfg.seed, batch_size=cfg.train.batch_size, clip_norm=cfg.optim.clip_norm,
                      on_nonfinite=cfg.train.on_nonfinite, validate_args=cfg.train.validate_args,
                      validation=score, progress=progress,
                      quiet=not progress, engine=kind)
    history = fit_history(trainer, per_step=1)
    vae.eval()
    return VariationalFit(vae, None, history, trainer.epoch, trainer.step, kind, exact, rule,
                          extra={"num_particles": float(num_particles)})


def rws(cfg: Config, data: Dataset, **kwargs) -> VariationalFit:
    """Reweighted wake-sleep (:func:`fit`; default K = 5 with wake-phi)."""
    return fit(cfg, data, **kwargs)


def wake_sleep(cfg: Config, data: Dataset, **kwargs) -> VariationalFit:
    """Hinton et al.'s wake-sleep: :func:`fit` with ``num_particles=1`` and ``phi_update="sleep"``."""
    for key, value in (("num_particles", 1), ("phi_update", "sleep")):
        if kwargs.pop(key, value) != value:
            raise ConfigError(f"{key}: wake-sleep has {key}={value!r}; use rws for others")
    return fit(cfg, data, num_particles=1, phi_update="sleep", **kwargs)
