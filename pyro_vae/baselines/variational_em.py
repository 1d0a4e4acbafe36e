r"""Variational EM with a non-amortized guide, against joint amortized SVI, for any decoder of the project's VAE.

Both maximize the same ELBO of the same model p(z) p(x|z; theta),

.. math:: \mathcal{L}(\theta, q) = \sum_n \big(\mathbb{E}_{q_n}[\log p(x_n|z_n;\theta)] - \mathrm{KL}(q_n \,\|\, p(z))\big),

and differ in q and in the order of updates:

* **variational EM**: :math:`q_n = N(m_n, \mathrm{diag}\, s_n^2)` has its own parameters per
  training point (no encoder); for every minibatch, an E-step of ``e_steps`` Adam steps on that
  batch's :math:`(m_n, s_n)` with theta fixed, then an M-step of ``m_steps`` on theta with them fixed.
* **amortized SVI**: :math:`q_n = q(z|x_n;\phi)` is the config's encoder and one Adam step updates
  phi and theta together per minibatch (the Trainer of ``pyro-vae train``, without the files).

Both train on the project's ``Trainer`` (variational EM's E-step is part of the loss it is handed), so
they see the same minibatches in the same order under the same epoch/second budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from pyro_vae.baselines.fitting import check_budget, curve_log_likelihood, fit_history, generative_parameters
from pyro_vae.baselines.history import History
from pyro_vae.build import build_seeded
from pyro_vae.components.networks import MIN_SCALE, positive_scale
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.linear_gaussian import is_linear_gaussian
from pyro_vae.inference.engine import adam
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.model import VAE
from pyro_vae.training.stopping import BudgetLimit, EpochLimit
from pyro_vae.training.trainer import Trainer

LOCAL_LR_FACTOR = 1  # E-step lr / optim.lr; larger (3x) climbs faster early but single-sample noise in q_n then biases theta (measured)


def local_guide(loc: torch.Tensor, raw_scale: torch.Tensor):
    """The guide q(z_n) = N(loc_n, diag softplus(raw_n)^2) for one minibatch, ``(batch, latent_dim)`` each."""

    def guide(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", len(idx)):
            return pyro.sample("z", dist.Normal(loc, positive_scale(raw_scale)).to_event(1))

    return guide


class LocalGuide(nn.Module):
    r"""Non-amortized q(z_n) = N(m_n, diag s_n^2): buffers ``loc`` and ``raw_scale``, ``(num_points, latent_dim)``.

    Starts at the prior N(0, I). The E-step is Adam applied row by row (Kingma & Ba 2015, with
    per-row moments and step counts), so a point's moments are updated only when its minibatch is
    visited: points outside the batch never move on stale momentum.
    """

    def __init__(self, num_points: int, latent_dim: int, betas: tuple = (0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        self.betas, self.eps = betas, eps
        self.register_buffer("loc", torch.zeros(num_points, latent_dim))
        # softplus(raw) + MIN_SCALE = 1
        self.register_buffer("raw_scale", torch.full((num_points, latent_dim), math.log(math.expm1(1.0 - MIN_SCALE))))
        shape = (2, num_points, latent_dim)  # [loc, raw_scale]
        self.register_buffer("m", torch.zeros(shape))
        self.register_buffer("v", torch.zeros(shape))
        self.register_buffer("t", torch.zeros(num_points, 1))

    def q(self, idx: torch.Tensor) -> dist.Distribution:
        return dist.Normal(self.loc[idx], positive_scale(self.raw_scale[idx])).to_event(1)

    def e_step(self, loss_of, x: torch.Tensor, idx: torch.Tensor, steps: int, lr: float) -> None:
        """``steps`` Adam steps on rows ``idx`` of (loc, raw_scale); ``loss_of(guide, x, idx)`` is the negative ELBO."""
        b1, b2 = self.betas
        for _ in range(steps):
            params = torch.stack([self.loc[idx], self.raw_scale[idx]]).requires_grad_()
            loss = loss_of(local_guide(params[0], params[1]), x, idx)
            (grad,) = torch.autograd.grad(loss, [params])  # theta is fixed: no gradient is accumulated for it
            # the loss is a mean over the batch; each row's own term is len(idx) times its share
            grad = grad * len(idx)
            t = self.t[idx] + 1
            m = b1 * self.m[:, idx] + (1 - b1) * grad
            v = b2 * self.v[:, idx] + (1 - b2) * grad.square()
            step = lr * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + self.eps)
            new = params.detach() - step
            self.loc[idx], self.raw_scale[idx] = new[0], new[1]
            self.m[:, idx], self.v[:, idx], self.t[idx] = m, v, t

    def guide_for(self, idx: torch.Tensor):
        return local_guide(self.loc[idx], self.raw_scale[idx])


@dataclass
class VariationalFit:
    """A trained VAE, its local guide (variational EM) or None (amortized), and the per-epoch history.

    History rows carry ``log_likelihood`` (exact for a linear-Gaussian model, else an IWAE estimate
    on up to ``CURVE_POINTS`` training points), ``elbo`` (mean training objective of the epoch) and
    ``gradient_steps``.
    """

    vae: VAE
    local_guide: Optional[LocalGuide]
    history: History
    epochs: int
    gradient_steps: int
    kind: str
    exact: bool
    rule: Optional[EpochLimit] = None  # the stopping rule, after training: why it stopped, whether it converged
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def log_likelihood(self) -> float:
        return self.history.log_likelihood[-1]


def batch_loss(vae: VAE, elbo):
    """``loss(guide, x_b, rows)``: minus the ELBO of ``vae``'s model with a per-point ``guide(x_b, rows)``, the
    mean over the batch (the E-step's objective; ``rows`` index the points' own q_n)."""

    def loss(guide, xb: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return elbo.differentiable_loss(lambda xb_, rows_: vae.model(xb_), guide, xb, rows) / len(rows)

    return loss


def em_step_loss(vae: VAE, elbo, local: LocalGuide, e_steps: int, local_lr: float):
    r"""Variational EM's minibatch step as a Trainer loss ``loss(x_b, beta, rows)`` (``indexed_loss``).

    For the batch ``x_b`` ``(B, x_dim)`` with rows ``rows`` of the training split it first runs the E-step,
    ``e_steps`` Adam steps on those rows' :math:`(m_n, s_n)` with theta fixed (:meth:`LocalGuide.e_step`, which
    takes gradients with respect to q_n alone, so none reach theta), then returns the M-step's objective
    :math:`-\sum_{n \in b} \mathrm{ELBO}_n(\theta, q_n)` with those q_n fixed, summed over the batch: the
    Trainer divides by B, differentiates with respect to theta (the parameters its optimizer holds) and
    takes the M-step. beta is not applied (the per-point guide has no KL scaling): this is the ELBO.
    """

    loss_of = batch_loss(vae, elbo)

    def loss(xb: torch.Tensor, kl_weight: float, rows: torch.Tensor) -> torch.Tensor:
        local.e_step(loss_of, xb, rows, e_steps, local_lr)
        return loss_of(local.guide_for(rows), xb, rows) * len(rows)  # summed over the batch, as the Trainer takes it

    return loss


def fit(cfg: Config, data: Dataset, *, amortized: bool, epochs: Optional[int] = None, seconds: Optional[float] = None,
        e_steps: int = 5, m_steps: int = 1, local_lr: Optional[float] = None, progress: bool = False,
        stopping: Optional[EpochLimit] = None) -> VariationalFit:
    """Train ``cfg``'s VAE on ``data.train`` by variational EM (``amortized=False``) or joint amortized SVI.

    Both run on the project's :class:`~pyro_vae.training.trainer.Trainer` (the same seeded minibatches in the
    same order, the non-finite guard), with the budget as its stopping rule: ``epochs`` epochs or ``seconds``
    of training time, checked at epoch ends, at the fixed step size ``optim.lr``, unless a rule ``stopping`` is
    given (then it decides, and ``VariationalFit.rule`` holds its verdict). Amortized SVI is the
    Trainer of ``pyro-vae train`` (:meth:`Trainer.from_config`: its engine, fused Adam and beta schedule);
    variational EM hands it :func:`em_step_loss` and an Adam on theta alone. The curve's log-likelihood is
    the Trainer's per-epoch validation score, so its evaluation is off the training clock.

    ``local_lr`` (default: ``LOCAL_LR_FACTOR * optim.lr``) is the E-step's Adam learning rate. A larger
    one moves each q_n further per visit, but Adam's unit-size steps on single-sample gradients then leave
    q_n jittering by about ``local_lr``, and theta fits the jitter. ``m_steps`` must be 1: the Trainer takes
    one optimizer step per minibatch, the M-step.
    """
    if stopping is None:
        check_budget(epochs, seconds)
    if m_steps != 1:
        raise ConfigError(f"m_steps: {m_steps}, but variational EM takes one M-step per minibatch (the Trainer's "
                          f"step); use m_steps=1")
    if data.binarize == "dynamic":
        raise ConfigError("data.binarize: variational EM keeps one q per training point; use static, not dynamic")
    vae = build_seeded(cfg, data, torch.device("cpu"))  # as train builds it: a learned scale starts from the data
    x = data.train
    exact = is_linear_gaussian(cfg.model)
    local = LocalGuide(len(x), cfg.model.latent_dim) if not amortized else None
    rule = stopping if stopping is not None else BudgetLimit(cfg.optim.lr, max_epochs=epochs, seconds=seconds)
    proposal = (lambda n: local.q(torch.arange(n))) if local is not None else None  # q_n of the first n points
    options = dict(validation=lambda: curve_log_likelihood(vae, x, exact, proposal), progress=progress,
                   quiet=not progress)
    if amortized:  # phi and theta together, one step per minibatch
        trainer = Trainer.from_config(cfg, data, vae, stopping=rule, **options)
    else:
        loss = em_step_loss(vae, build_elbo(cfg.inference), local, e_steps, local_lr or LOCAL_LR_FACTOR * cfg.optim.lr)
        trainer = Trainer(vae, loss, adam(generative_parameters(vae), lr=rule.lr), data, rule, seed=cfg.seed,
                          batch_size=cfg.train.batch_size, clip_norm=cfg.optim.clip_norm,
                          on_nonfinite=cfg.train.on_nonfinite, validate_args=cfg.train.validate_args,
                          indexed_loss=True, engine="variational_em", **options)
    per_step = 1 if amortized else e_steps + 1  # gradient steps per minibatch: the E-steps and the M-step
    history = fit_history(trainer, per_step)
    vae.eval()
    kind = "svi" if amortized else "variational_em"
    return VariationalFit(vae, local, history, trainer.epoch, trainer.step * per_step, kind, exact, rule)


def variational_em(cfg: Config, data: Dataset, **kwargs) -> VariationalFit:
    """Variational EM with per-point q_n (see :func:`fit`)."""
    return fit(cfg, data, amortized=False, **kwargs)


def amortized_svi(cfg: Config, data: Dataset, **kwargs) -> VariationalFit:
    """Joint SVI of encoder and decoder on the same minibatches (see :func:`fit`)."""
    kwargs.pop("e_steps", None), kwargs.pop("m_steps", None), kwargs.pop("local_lr", None)
    return fit(cfg, data, amortized=True, **kwargs)


def infer_locals(vae: VAE, elbo, x: torch.Tensor, steps: int = 200, lr: float = 0.05) -> LocalGuide:
    """An E-step for new points: fit q_n for the rows of ``x`` with theta fixed (non-amortized inference on test data)."""
    local = LocalGuide(len(x), vae.latent_dim)
    local.e_step(batch_loss(vae, elbo), x, torch.arange(len(x)), steps, lr)
    return local
