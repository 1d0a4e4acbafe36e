r"""Variational EM with a non-amortized guide, against joint amortized SVI, for any decoder of the project's VAE.

Both maximize the same ELBO of the same model p(z) p(x|z; theta),

.. math:: \mathcal{L}(\theta, q) = \sum_n \big(\mathbb{E}_{q_n}[\log p(x_n|z_n;\theta)] - \mathrm{KL}(q_n \,\|\, p(z))\big),

and differ in q and in the order of updates:

* **variational EM**: :math:`q_n = N(m_n, \mathrm{diag}\, s_n^2)` has its own parameters per
  training point (no encoder); for every minibatch, an E-step of ``e_steps`` Adam steps on that
  batch's :math:`(m_n, s_n)` with theta fixed, then an M-step of ``m_steps`` on theta with them fixed.
* **amortized SVI**: :math:`q_n = q(z|x_n;\phi)` is the config's encoder and one Adam step updates
  phi and theta together per minibatch (the project's ``Trainer`` loop, without the files).

Both see the same minibatches in the same order under the same epoch/second budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.nn.functional import softplus
from tqdm.auto import tqdm

from pyro_vae.baselines import ppca
from pyro_vae.baselines.history import History
from pyro_vae.build import build_vae, seed_everything
from pyro_vae.components.networks import MIN_SCALE
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.model import VAE

IWAE_SAMPLES = 64  # importance samples behind the curve's log-likelihood when no closed form exists


CURVE_POINTS = 512  # training points behind that estimate


LOCAL_LR_FACTOR = 1  # E-step lr / optim.lr; larger (3x) climbs faster early but single-sample noise in q_n then biases theta (measured)


def _scale(raw: torch.Tensor) -> torch.Tensor:
    return softplus(raw) + MIN_SCALE


def local_guide(loc: torch.Tensor, raw_scale: torch.Tensor):
    """The guide q(z_n) = N(loc_n, diag softplus(raw_n)^2) for one minibatch, ``(batch, latent_dim)`` each."""

    def guide(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        with pyro.plate("data", len(idx)):
            return pyro.sample("z", dist.Normal(loc, _scale(raw_scale)).to_event(1))

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
        return dist.Normal(self.loc[idx], _scale(self.raw_scale[idx])).to_event(1)

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


def is_linear_gaussian(cfg: Config) -> bool:
    """True when the config's model has a closed-form log p(x): linear decoder, Normal prior, Normal likelihood."""
    m = cfg.model
    return m.decoder["name"] == "linear" and m.prior["name"] == "normal" and m.likelihood["name"] == "normal"


def exact_log_likelihood(vae: VAE, x: torch.Tensor) -> float:
    """log p(x) = log N(x; b, W W^T + sigma^2) per point for a linear-Gaussian VAE."""
    with torch.no_grad():
        W, b = vae.decoder.weight.double(), vae.decoder.bias.double()
        noise_var = (2 * vae.likelihood.log_scale.double()).exp()
        return ppca.log_likelihood(x, W, b, noise_var)


@torch.no_grad()
def iwae(vae: VAE, q: dist.Distribution, x: torch.Tensor, num_samples: int) -> torch.Tensor:
    r"""The importance-weighted bound :math:`\log \frac1S\sum_s p(x_n, z_s)/q(z_s)`, ``z_s ~ q``; returns ``(N,)``."""
    z = q.sample((num_samples,))  # (S, N, latent_dim)
    log_w = vae.prior().log_prob(z) + vae.likelihood(vae.decoder(z)).log_prob(x) - q.log_prob(z)
    return torch.logsumexp(log_w, 0) - math.log(num_samples)


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
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def log_likelihood(self) -> float:
        return self.history.log_likelihood[-1]


def _curve_log_likelihood(vae: VAE, x: torch.Tensor, local: Optional[LocalGuide], exact: bool) -> float:
    if exact:
        return exact_log_likelihood(vae, x)
    idx = torch.arange(min(len(x), CURVE_POINTS))
    q = local.q(idx) if local is not None else vae.encoder(x[idx])
    return float(iwae(vae, q, x[idx], IWAE_SAMPLES).mean())


def _check_budget(epochs: Optional[int], seconds: Optional[float]) -> None:
    if epochs is None and seconds is None:
        raise ConfigError("budget: set epochs or seconds")


def _theta(vae: VAE) -> List[nn.Parameter]:
    """The generative parameters theta (prior, decoder, likelihood): everything but the encoder."""
    return [p for name, p in vae.named_parameters() if not name.startswith("encoder.")]


def fit(cfg: Config, data: Dataset, *, amortized: bool, epochs: Optional[int] = None, seconds: Optional[float] = None,
        e_steps: int = 5, m_steps: int = 1, local_lr: Optional[float] = None, progress: bool = False) -> VariationalFit:
    """Train ``cfg``'s VAE on ``data.train`` by variational EM (``amortized=False``) or joint amortized SVI.

    Stops after ``epochs`` epochs or once ``seconds`` of training time are used (checked at epoch
    ends). ``local_lr`` (default: ``LOCAL_LR_FACTOR * optim.lr``) is the E-step's Adam learning rate. A
    larger one moves each q_n further per visit, but Adam's unit-size steps on single-sample
    gradients then leave q_n jittering by about ``local_lr``, and theta fits the jitter.
    """
    _check_budget(epochs, seconds)
    if data.binarize == "dynamic":
        raise ConfigError("data.binarize: variational EM keeps one q per training point; use static, not dynamic")
    seed_everything(cfg.seed)
    vae = build_vae(cfg, data.x_dim, data.image_shape)
    elbo = build_elbo(cfg.inference)
    x = data.train
    order = torch.Generator().manual_seed(cfg.seed + 1)  # the same data order as Trainer
    exact = is_linear_gaussian(cfg)
    history = History()
    local = LocalGuide(len(x), cfg.model.latent_dim) if not amortized else None
    theta = list(vae.parameters()) if amortized else _theta(vae)  # amortized: phi and theta together
    optimizer = torch.optim.Adam(theta, lr=cfg.optim.lr)
    local_lr = local_lr or LOCAL_LR_FACTOR * cfg.optim.lr

    def model(xb, idx):
        return vae.model(xb)

    def loss_of(guide, xb, idx):
        return elbo.differentiable_loss(model, guide, xb, idx) / len(idx)

    def amortized_guide(xb, idx):
        return vae.guide(xb)

    with history.paused():
        history.record(0, _curve_log_likelihood(vae, x, local, exact), elbo=float("nan"), gradient_steps=0)
    epoch, steps = 0, 0
    kind = "svi" if amortized else "variational_em"
    bar = tqdm(desc=kind, unit="epoch", total=epochs, disable=not progress)
    while not ((epochs is not None and epoch >= epochs) or (seconds is not None and history.elapsed() >= seconds)):
        total = 0.0
        for idx in torch.randperm(len(x), generator=order).split(cfg.train.batch_size):
            xb = x[idx]
            if not amortized:
                local.e_step(loss_of, xb, idx, e_steps, local_lr)  # E-step: this batch's q_n, theta fixed
                steps += e_steps
            guide = amortized_guide if amortized else local.guide_for(idx)
            for _ in range(m_steps if not amortized else 1):  # M-step (theta, q_n fixed), or the joint step
                loss = loss_of(guide, xb, idx)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.optim.clip_norm is not None:
                    torch.nn.utils.clip_grad_norm_(theta, cfg.optim.clip_norm)
                optimizer.step()
                steps += 1
            total += loss.item() * len(idx)
        epoch += 1
        with history.paused():
            history.record(epoch, _curve_log_likelihood(vae, x, local, exact), elbo=-total / len(x), gradient_steps=steps)
        bar.update(1)
        bar.set_postfix(log_likelihood=f"{history.log_likelihood[-1]:.3f}")
    bar.close()
    vae.eval()
    return VariationalFit(vae, local, history, epoch, steps, kind, exact)


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

    def loss_of(guide, xb, idx):
        return elbo.differentiable_loss(lambda xb, i: vae.model(xb), guide, xb, idx) / len(idx)

    local.e_step(loss_of, x, torch.arange(len(x)), steps, lr)
    return local
