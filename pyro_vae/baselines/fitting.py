"""What every baseline trained on the project's Trainer shares: its budget check, theta, its curve and its history.

Variational EM, reweighted wake-sleep, Monte Carlo EM and semi-amortized VI each hand the
:class:`~pyro_vae.training.trainer.Trainer` a loss of their own; around it they share the pieces here, so a
change to how a baseline's learning curve is scored or recorded is made once.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, List, Optional

import torch
from torch import nn
from torch.distributions import Distribution

from pyro_vae.baselines.history import History
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.iwae import proposal_iwae
from pyro_vae.evaluation.linear_gaussian import exact_log_likelihood
from pyro_vae.model import VAE

IWAE_SAMPLES = 64  # importance samples behind a curve's log-likelihood when no closed form exists
CURVE_POINTS = 512  # points behind that estimate


def check_budget(epochs: Optional[int], seconds: Optional[float]) -> None:
    """A fit without a stopping rule needs a budget: ``epochs`` or ``seconds``."""
    if epochs is None and seconds is None:
        raise ConfigError("budget: set epochs or seconds")


def generative_parameters(vae: VAE) -> List[nn.Parameter]:
    """The generative parameters theta (prior, decoder, likelihood): everything but the encoder."""
    return [p for name, p in vae.named_parameters() if not name.startswith("encoder.")]


@torch.no_grad()
def curve_log_likelihood(vae: VAE, x: torch.Tensor, exact: bool,
                         proposal: Optional[Callable[[int], Distribution]] = None) -> float:
    """A baseline's per-epoch score: the exact mean log p(x) over the rows of ``x`` for a linear-Gaussian model,
    else the IWAE bound (``IWAE_SAMPLES`` samples) of its first ``CURVE_POINTS`` rows with the proposal
    ``proposal(n)`` for those ``n`` rows (batch ``(n,)``; default: the encoder's q(z|x))."""
    if exact:
        return exact_log_likelihood(vae, x)
    x = x[:CURVE_POINTS]
    q = proposal(len(x)) if proposal is not None else vae.encoder(x)
    return float(proposal_iwae(vae, q, x, IWAE_SAMPLES).mean())


def fit_history(trainer, per_step: int, count: str = "gradient_steps",
                extra: Optional[Callable[[], Dict[str, float]]] = None) -> History:
    """Train with ``trainer`` to its rule's end and return the per-epoch history of a baseline: ``iteration`` (epoch),
    ``log_likelihood`` (the Trainer's validation score, the first row at the initial parameters), ``seconds``
    (training time), ``elbo`` (the epoch's mean training objective), ``count`` (``per_step`` per minibatch step)
    and whatever ``extra()`` adds at each epoch's end. The Trainer is closed after."""
    history = History()
    first = {"iteration": 0, "log_likelihood": trainer.validate(), "seconds": 0.0, "elbo": math.nan, count: 0}
    history.rows.append({**first, **({k: math.nan for k in extra()} if extra is not None else {})})
    for row in trainer.fit():
        history.rows.append({"iteration": row["epoch"], "log_likelihood": row["val_elbo"], "seconds": row["wall_time"],
                             "elbo": row["train_elbo"], count: row["step"] * per_step,
                             **(extra() if extra is not None else {})})
    trainer.close()
    return history
