r"""Semi-amortized variational inference (SA-VAE, Kim et al. 2018): the encoder's q refined per point, then the step.

The model and bound are the VAE's,
:math:`\mathrm{ELBO}_n(\theta, \lambda) = \mathbb{E}_{q_\lambda}[\log p_\theta(x_n|z)] - \mathrm{KL}(q_\lambda \| p(z))`
with :math:`q_\lambda = N(\mu, \mathrm{diag}\,\sigma^2)`. Per minibatch b:

1. **encode**: :math:`\lambda_n^{(0)} = (\mu_\phi(x_n), \log\sigma_\phi(x_n))` from the encoder;
2. **refine**: ``refine_steps`` = K steps of Adam (step size ``refine_lr``, fresh moments each batch) ascending
   each point's own ELBO in its local parameters, theta fixed,
   :math:`\lambda_n^{(k+1)} = \lambda_n^{(k)} + \mathrm{Adam}(\nabla_\lambda \mathrm{ELBO}_n(\theta, \lambda_n^{(k)}))`
   (:func:`pyro_vae.evaluation.gaps.refine_guide`, the per-point refinement behind Cremer et al.'s gaps, with
   ``refine_particles`` reparameterized draws and the closed-form KL). Adam's first steps have size about
   ``refine_lr`` whatever the gradient's scale, so on noisy few-sample gradients the refined q jitters by about
   that much and the decoder then fits the jitter (measured on pPCA, 40 epochs: 5 steps at 0.1 with 1 draw
   leave 0.20 nats/pt to the MLE, at 0.05 with 8 draws -0.003); hence the defaults, 8 draws at 0.05;
3. **update**: one optimizer step on :math:`(\theta, \phi)` on the loss

   .. math:: \ell(x_b) = -\sum_{n \in b} \Big( \mathrm{ELBO}_n(\theta, \mathrm{sg}[\lambda_n^{(K)}])
             + \mathrm{ELBO}_n(\mathrm{sg}[\theta], \lambda_n^{(0)}(\phi)) \Big),

   sg = stop-gradient: the decoder learns at the refined q, the encoder learns to predict a good q from the
   current decoder at its own output. This is the simple variant: no gradient flows through the refinement
   (Kim et al.'s full SA-VAE backpropagates through the K steps into phi with Hessian-vector products; not
   implemented). The two ELBOs are estimated with the same reparameterization noise (the RNG rewound between
   them) and the loss's *value* is the first term alone (the second enters as ``e - e.detach()``), so with K = 0
   the loss, its value and its gradient with respect to every parameter, is exactly the plain ELBO loss of the
   same draws. beta (``inference.beta``, warm-up) scales the KL terms of step 3 as in the plain VAE; the
   refinement always ascends the beta = 1 ELBO.

The amortization gap (Cremer et al. 2018) on held-out points, :math:`\mathrm{ELBO}(q^{(K)}) - \mathrm{ELBO}(q^{(0)})`,
is what refinement recovers (:func:`amortization_gap`): it grows with K toward the full gap.

References: Y. Kim, S. Wiseman, A. Miller, D. Sontag, A. Rush, Semi-amortized variational autoencoders (ICML
2018); C. Cremer, X. Li, D. Duvenaud, Inference suboptimality in variational autoencoders (ICML 2018);
R. Krishnan, D. Liang, M. Hoffman, On the challenges of learning with inference networks on sparse,
high-dimensional data (AISTATS 2018).
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional

import pyro.distributions as dist
import pyro.poutine as poutine
import torch

from pyro_vae.baselines.fitting import check_budget, curve_log_likelihood, fit_history, generative_parameters
from pyro_vae.baselines.history import History
from pyro_vae.build import build_seeded
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.bounds import elbo_terms, unit_kl_weight
from pyro_vae.evaluation.gaps import refine_guide
from pyro_vae.evaluation.linear_gaussian import is_linear_gaussian
from pyro_vae.inference.engine import adam
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.model import VAE, frozen, own_rng
from pyro_vae.training.stopping import BudgetLimit, EpochLimit
from pyro_vae.training.trainer import Trainer

REFINE_LR = 0.05  # default Adam step size of the refinement (posterior sds are ~0.1-1 in the stock models)
_UNREGISTERED = ".* was not registered in the param store"  # pyro.module on a frozen module in training mode


@contextmanager
def quietly_frozen(params: List[torch.nn.Parameter]) -> Iterator[None]:
    """Compute with ``params`` as constants (``requires_grad`` off, restored after), without Pyro's warning that a
    module in training mode has parameters it does not register."""
    with frozen(params), warnings.catch_warnings():
        warnings.filterwarnings("ignore", _UNREGISTERED, UserWarning)
        yield


def check_guide(vae: VAE, x: torch.Tensor) -> None:
    """A ConfigError unless the encoder's q(z|x) is mean-field Normal (what the refinement's local parameters are)."""
    with torch.no_grad():
        q = vae.encoder(x[:1])
    if not (isinstance(q, dist.Independent) and isinstance(q.base_dist, dist.Normal)):
        raise ConfigError(f"guide: semi-amortized VI refines a mean-field Normal q(z|x); guide "
                          f"'{getattr(vae.encoder, 'registry_name', '?')}' gives {type(q).__name__} (use mean_field)")


def refine(vae: VAE, x: torch.Tensor, steps: int, lr: float, num_particles: int = 1) -> Callable:
    """The refined guide ``guide(x)`` of :func:`~pyro_vae.evaluation.gaps.refine_guide` (``steps`` Adam steps from the
    encoder's q(z|x) on each point's ELBO at beta = 1, theta fixed, no gradient left on any parameter), run on the VAE
    in training mode without Pyro's warnings. Its (loc, log scale) carry no graph: the guide is a constant of phi."""
    with warnings.catch_warnings(), unit_kl_weight(vae):  # refine_guide freezes every parameter the model registers
        warnings.filterwarnings("ignore", _UNREGISTERED, UserWarning)
        return refine_guide(vae, x, steps=steps, lr=lr, num_particles=num_particles)


def _scaled(vae: VAE, guide: Callable) -> Callable:
    """``guide`` with its ``z`` site scaled by ``vae.kl_weight``, as :meth:`VAE.guide` scales the encoder's."""

    def scaled(x: torch.Tensor) -> torch.Tensor:
        with poutine.scale(scale=vae.kl_weight) if vae.kl_weight != 1.0 else nullcontext():
            return guide(x)

    return scaled


def _rng_state(device: torch.device):
    return torch.get_rng_state(), (torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _set_rng_state(state, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def semi_amortized_loss(vae: VAE, elbo, refine_steps: int, refine_lr: float = REFINE_LR, refine_particles: int = 8):
    r"""SA-VAE's minibatch step as a Trainer loss ``loss(x_b, beta)``: minus the ELBO summed over the batch.

    Refines the encoder's q(z|x_b) by ``refine_steps`` Adam steps (:func:`refine`), then returns
    :math:`-\sum_n [\mathrm{ELBO}_n(\theta, \mathrm{sg}\,\lambda^{(K)}_n) + \mathrm{ELBO}_n(\mathrm{sg}\,\theta,
    \lambda^{(0)}_n(\phi))]`, its value the first term's (module docstring), both terms from ``elbo`` (the config's
    Pyro ELBO) on the same draws. The Trainer's optimizer must hold theta and phi.
    """
    theta = generative_parameters(vae)

    def loss(xb: torch.Tensor, kl_weight: float) -> torch.Tensor:
        refined = refine(vae, xb, refine_steps, refine_lr, refine_particles)
        start = _rng_state(xb.device)
        decoder_loss = elbo.differentiable_loss(vae.model, _scaled(vae, refined), xb)  # gradient: theta alone
        end = _rng_state(xb.device)
        _set_rng_state(start, xb.device)  # the encoder's term on the same draws
        with quietly_frozen(theta):
            encoder_loss = elbo.differentiable_loss(vae.model, vae.guide, xb)  # gradient: phi alone
        _set_rng_state(end, xb.device)
        return decoder_loss + (encoder_loss - encoder_loss.detach())

    return loss


@torch.no_grad()
def _elbo(vae: VAE, guide: Callable, x: torch.Tensor, num_particles: int) -> torch.Tensor:
    with unit_kl_weight(vae):
        return elbo_terms(vae.model, guide, x, num_particles)[0]


def amortization_gap(vae: VAE, x: torch.Tensor, refine_steps: int, refine_lr: float = REFINE_LR,
                     refine_particles: int = 8, num_particles: int = 256, seed: int = 0) -> Dict[str, float]:
    """Mean ELBO per point of the encoder's q(z|x) and of q refined by ``refine_steps`` (:func:`refine`) on the rows of
    ``x``, each over ``num_particles`` draws with the closed-form KL, and ``recovered`` = refined - encoder (nats per
    point). Each is drawn on a stream seeded with ``seed`` (common random numbers: ``refine_steps=0`` recovers exactly
    0; the global stream is left as it was); the VAE is left unchanged."""
    with own_rng(seed, x.device):
        encoder = float(_elbo(vae, vae.guide, x, num_particles).mean())
    with own_rng(seed + 1, x.device):
        guide = refine(vae, x, refine_steps, refine_lr, refine_particles)
    with own_rng(seed, x.device):
        refined = float(_elbo(vae, guide, x, num_particles).mean())
    return {"encoder": encoder, "refined": refined, "recovered": refined - encoder}


@dataclass
class SemiAmortizedFit:
    """A trained VAE and its per-epoch history: ``log_likelihood`` (exact for a linear-Gaussian model, else the
    encoder-proposal IWAE bound, on up to ``CURVE_POINTS`` validation points, training points when there is no
    validation split), ``elbo`` (the epoch's mean training ELBO at the refined q) and ``gradient_steps``
    (refinement steps plus the parameter step, per minibatch)."""

    vae: VAE
    history: History
    epochs: int
    gradient_steps: int
    exact: bool
    refine_steps: int
    rule: Optional[EpochLimit] = None
    kind: str = "semi_amortized"
    extra: Dict[str, float] = field(default_factory=dict)

    @property
    def log_likelihood(self) -> float:
        return self.history.log_likelihood[-1]


def fit(cfg: Config, data: Dataset, *, refine_steps: int = 5, refine_lr: float = REFINE_LR, refine_particles: int = 8,
        epochs: Optional[int] = None, seconds: Optional[float] = None, stopping: Optional[EpochLimit] = None,
        progress: bool = False, validation: Optional[Callable[[VAE], float]] = None) -> SemiAmortizedFit:
    """Train ``cfg``'s VAE on ``data.train`` by semi-amortized VI (:func:`semi_amortized_loss`).

    Built as ``train`` builds it (:func:`~pyro_vae.build.build_seeded`), trained on the project's
    :class:`~pyro_vae.training.trainer.Trainer` with the config's seed, batch size, beta and warm-up, clipping and
    guards, and one Adam on all parameters at ``optim.lr``; the budget is ``epochs`` epochs or ``seconds`` of training
    time unless a rule ``stopping`` is given. The objective must be ``inference.objective: elbo`` with
    ``estimator: reparam`` and the guide mean-field Normal. Validation: :func:`curve_log_likelihood`, or
    ``validation(vae)`` if given (a comparison's yardstick).
    """
    if stopping is None:
        check_budget(epochs, seconds)
    if refine_steps < 0 or refine_particles < 1 or not (math.isfinite(refine_lr) and refine_lr > 0):
        raise ConfigError(f"semi-amortized: refine_steps {refine_steps} must be >= 0, refine_particles "
                          f"{refine_particles} >= 1 and refine_lr {refine_lr} > 0")
    inf = cfg.inference
    if (inf.objective, inf.estimator) != ("elbo", "reparam"):
        raise ConfigError(f"inference: semi-amortized VI refines and trains on the ELBO with reparameterized draws; "
                          f"got objective={inf.objective}, estimator={inf.estimator}")
    vae = build_seeded(cfg, data, torch.device("cpu"))
    check_guide(vae, data.train)
    x_val = data.val if len(data.val) else data.train
    exact = is_linear_gaussian(cfg.model)
    rule = stopping if stopping is not None else BudgetLimit(cfg.optim.lr, max_epochs=epochs, seconds=seconds)
    loss = semi_amortized_loss(vae, build_elbo(inf), refine_steps, refine_lr, refine_particles)

    def score() -> float:
        return validation(vae) if validation is not None else curve_log_likelihood(vae, x_val, exact)

    trainer = Trainer(vae, loss, adam(vae.parameters(), lr=rule.lr), data, rule, seed=cfg.seed,
                      batch_size=cfg.train.batch_size, beta=inf.beta, kl_warmup_epochs=inf.kl_warmup_epochs,
                      clip_norm=cfg.optim.clip_norm, on_nonfinite=cfg.train.on_nonfinite,
                      validate_args=cfg.train.validate_args, validation=score,
                      progress=progress, quiet=not progress, engine="semi_amortized")
    per_step = refine_steps + 1
    history = fit_history(trainer, per_step)
    vae.eval()
    return SemiAmortizedFit(vae, history, trainer.epoch, trainer.step * per_step, exact, refine_steps, rule)
