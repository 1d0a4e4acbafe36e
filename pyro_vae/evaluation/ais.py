r"""Annealed importance sampling (AIS) and bidirectional Monte Carlo (BDMC): reference log p(x) for a VAE.

AIS (Neal 2001) anneals from a normalized start density :math:`q_0(z)` (the encoder's q(z|x), or the prior)
to the posterior through the unnormalized densities

.. math::

    \log f_t(z) = (1 - \beta_t) \log q_0(z) + \beta_t [\log p(z) + \log p(x|z)],
    \qquad 0 = \beta_0 < \beta_1 < \dots < \beta_T = 1,

so :math:`Z_0 = 1` and :math:`Z_T = p(x)`. Each chain draws :math:`z_0 \sim q_0` and, for t = 1..T, adds
:math:`(\beta_t - \beta_{t-1}) [\log p(x, z_{t-1}) - \log q_0(z_{t-1})]` to its log weight, then moves z by an HMC
transition that leaves :math:`f_t` invariant (no transition after the last weight update: it would not change it).
Then :math:`E[w] = p(x)`, and :math:`\log \frac{1}{C} \sum_c w_c` is a stochastic lower bound on log p(x)
(Jensen); with T = 1 it is the IWAE bound with proposal :math:`q_0` and C particles.

BDMC (Grosse et al. 2015, 2016) simulates :math:`z^* \sim p(z)`, :math:`x \sim p(x|z^*)`, so that :math:`z^*` is an
exact posterior sample, and runs the chain backwards (:math:`\beta: 1 \to 0`) from it: the reverse weight has
:math:`E[w_{rev}] = Z_0 / Z_T = 1 / p(x)`, so :math:`-\log \frac{1}{C} \sum_c w_{rev,c}` is a stochastic upper bound.
The gap between the forward and reverse bounds bounds the error of forward AIS on such data.

References: R. Neal, Annealed importance sampling (2001); Y. Wu, Y. Burda, R. Salakhutdinov, R. Grosse, On the
quantitative analysis of decoder-based generative models (2017); R. Grosse, Z. Ghahramani, R. Adams, Sandwiching the
marginal likelihood using bidirectional Monte Carlo (2015); R. Grosse, S. Ancha, D. Roy, Measuring the reliability
of MCMC inference with bidirectional Monte Carlo (2016).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple, Union

import torch
from torch.distributions import Distribution

from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.decode import log_likelihood
from pyro_vae.model import VAE, own_rng

SCHEDULES = ("sigmoid", "linear")
INITIALS = ("encoder", "prior")
SIGMOID_DELTA = 4.0  # Grosse et al. 2015's sigmoid schedule steepness
STEP_SIZE_RANGE = (1e-4, 10.0)  # the adapted HMC step size stays in here: a chain stuck by a wild step recovers


def beta_schedule(num_steps: int, kind: str = "sigmoid", delta: float = SIGMOID_DELTA) -> torch.Tensor:
    r"""The inverse temperatures :math:`\beta_0 = 0 < \dots < \beta_T = 1`, float64, shape ``(num_steps + 1,)``.

    ``linear``: :math:`\beta_t = t / T`. ``sigmoid`` (Grosse et al. 2015), denser at both ends:

    .. math:: \beta_t = \frac{\sigma(\delta (2t/T - 1)) - \sigma(-\delta)}{\sigma(\delta) - \sigma(-\delta)}.
    """
    if kind not in SCHEDULES:
        raise ConfigError(f"ais schedule {kind!r}: must be one of {', '.join(SCHEDULES)}")
    if num_steps < 1:
        raise ConfigError(f"ais num_steps {num_steps}: must be at least 1")
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    if kind == "linear":
        return t
    s = torch.sigmoid(delta * (2 * t - 1))
    lo, hi = math.exp(-delta) / (1 + math.exp(-delta)), 1 / (1 + math.exp(-delta))
    betas = (s - lo) / (hi - lo)
    betas[0], betas[-1] = 0.0, 1.0  # exact ends despite rounding
    return betas


@dataclass
class AISResult:
    """What :func:`ais` returns; no tensor carries autograd history.

    ``log_px`` ``(N,)``: :math:`\\log \\frac{1}{C}\\sum_c w_{c,n}`; ``log_weights`` ``(C, N)``: each chain's log w;
    ``step_size`` ``(N,)``: the HMC step size at the end; ``step_sizes`` ``(T - 1, N)``: the one each transition
    used; ``accept`` ``(N,)``: the Metropolis acceptance probability averaged over transitions and chains
    (NaN with T = 1, where there is no transition).
    """

    log_px: torch.Tensor
    log_weights: torch.Tensor
    step_size: torch.Tensor
    step_sizes: torch.Tensor
    accept: torch.Tensor

    @property
    def variance(self) -> torch.Tensor:
        """Delta-method Monte Carlo variance of ``log_px`` per point ``(N,)``, as for the IWAE bound
        (:func:`pyro_vae.evaluation.evaluate.iwae_with_variance`): :math:`(C \\sum_c \\tilde w_c^2 - 1) / (C - 1)`
        with the normalized weights; NaN for one chain."""
        c = self.log_weights.shape[0]
        if c == 1:
            return torch.full_like(self.log_px, math.nan)
        return ((c / self.ess - 1) / (c - 1)).clamp_min(0)

    @staticmethod
    def cat(parts: List["AISResult"]) -> "AISResult":
        """The results of consecutive batches of points as one (points along the last dimension)."""
        return AISResult(*(torch.cat([getattr(p, f) for p in parts], dim=-1) for f in
                           ("log_px", "log_weights", "step_size", "step_sizes", "accept")))

    @property
    def ess(self) -> torch.Tensor:
        """Effective sample size of the C weights per point, :math:`(\\sum w)^2 / \\sum w^2`, ``(N,)``, in [1, C]."""
        return (2 * torch.logsumexp(self.log_weights, 0) - torch.logsumexp(2 * self.log_weights, 0)).exp()


@dataclass
class BDMCResult:
    """What :func:`bdmc` returns: the simulated data and the two bounds, per point ``(N,)``.

    ``x`` ``(N, x_dim)`` and ``z`` ``(N, latent_dim)`` (the exact posterior samples); ``lower``: forward AIS,
    ``upper``: minus the reverse chains' log-mean weight; ``forward``: the forward :class:`AISResult`;
    ``reverse_log_weights`` ``(C, N)``.
    """

    x: torch.Tensor
    z: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    forward: AISResult
    reverse_log_weights: torch.Tensor

    @property
    def gap(self) -> torch.Tensor:
        """``upper - lower`` per point, ``(N,)``: in expectation at least the bias of forward AIS on these points."""
        return self.upper - self.lower

    def summary(self) -> dict:
        """Means over the points: ``lower``, ``upper``, ``gap`` (floats, nats per point)."""
        return {"lower": float(self.lower.mean()), "upper": float(self.upper.mean()), "gap": float(self.gap.mean())}


class _Path:
    r"""The two ends of the path at a chunk of states: :math:`\log q_0(z)`, :math:`\log p(x, z)` and their z-gradients.

    Kept apart so that :math:`\log f_\beta` and its gradient at any :math:`\beta` are linear combinations of one
    evaluation. ``z`` is ``(C, N, latent_dim)``; it is evaluated ``chunk`` chains at a time (the decoder output
    and its graph are ``(chunk, N, x_dim)``), each chunk's graph freed before the next. The gradient is taken with
    ``torch.autograd.grad`` w.r.t. a detached copy of z: no parameter's ``.grad`` is touched.
    """

    def __init__(self, vae: VAE, x: torch.Tensor, q0: Distribution, prior: Distribution, chunk: int):
        self.vae, self.x, self.q0, self.prior, self.chunk = vae, x, q0, prior, chunk

    def _one(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            log_q = self.q0.log_prob(z)  # (c, N)
            log_joint = self.prior.log_prob(z) + log_likelihood(self.vae.decoder, self.vae.likelihood, z, self.x)
            # retained: the two may share a graph (a flow's transforms cache their inverse; q0 = the prior)
            (grad_q,) = torch.autograd.grad(log_q.sum(), z, retain_graph=True)
            (grad_joint,) = torch.autograd.grad(log_joint.sum(), z)
        return log_q.detach(), log_joint.detach(), grad_q, grad_joint

    def __call__(self, z: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        """``(log_q, log_joint, grad_q, grad_joint)``: ``(C, N)``, ``(C, N)``, ``(C, N, D)``, ``(C, N, D)``."""
        parts = [self._one(z[i:i + self.chunk]) for i in range(0, z.shape[0], self.chunk)]
        return tuple(torch.cat(p, 0) for p in zip(*parts)) if len(parts) > 1 else parts[0]


def _hmc(path: _Path, state: Tuple[torch.Tensor, ...], beta: float, step: torch.Tensor,
         leapfrog_steps: int) -> Tuple[Tuple[torch.Tensor, ...], torch.Tensor]:
    r"""One HMC transition leaving :math:`f_\beta` invariant: identity mass, ``leapfrog_steps`` leapfrog steps of
    size ``step`` ``(N,)`` (shared by a point's chains), a Metropolis accept/reject per chain.

    ``state`` is ``(z, log_q, log_joint, grad_q, grad_joint)`` (see :class:`_Path`); returns the new state and
    the acceptance probability :math:`\min(1, e^{-\Delta H})` per chain ``(C, N)`` (0 where H is not finite).
    Momentum and uniforms are drawn for all C chains at once, so the draws do not depend on the chunking.
    """
    z, log_q, log_joint = state[:3]

    def log_f(s):
        return (1 - beta) * s[1] + beta * s[2]

    def grad(s):
        return (1 - beta) * s[3] + beta * s[4]

    eps = step[None, :, None]  # (1, N, 1)
    momentum = torch.randn_like(z)  # (C, N, D)
    log_u = torch.rand_like(log_q).log()  # (C, N)
    p = momentum + 0.5 * eps * grad(state)
    new = state
    for i in range(leapfrog_steps):
        moved = new[0] + eps * p
        new = (moved,) + tuple(path(moved))
        p = p + (eps if i < leapfrog_steps - 1 else 0.5 * eps) * grad(new)
    log_ratio = log_f(new) - log_f(state) - 0.5 * (p.pow(2).sum(-1) - momentum.pow(2).sum(-1))  # (C, N)
    log_ratio = torch.where(torch.isfinite(log_ratio), log_ratio, torch.full_like(log_ratio, -math.inf))
    take = log_u < log_ratio  # (C, N)
    out = tuple(torch.where(take if a.dim() == 2 else take[..., None], b, a) for a, b in zip(state, new))
    return out, log_ratio.clamp(max=0).exp()


@torch.no_grad()
def hmc_transition(vae: VAE, x: torch.Tensor, z: torch.Tensor, step_size: torch.Tensor, num_transitions: int = 1,
                   leapfrog_steps: int = 10, target_accept: float = 0.65, adapt_rate: float = 0.5, adapt: bool = True,
                   chunk_chains: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""``num_transitions`` HMC transitions of :func:`_hmc` at :math:`\beta = 1`, each leaving the posterior
    :math:`p(z|x) \propto p(z)\, p(x|z)` of ``vae`` invariant, for C chains per point from ``z`` ``(C, N, D)``.

    ``step_size`` ``(N,)``: the per-point step size (shared by a point's chains); with ``adapt`` it is updated
    after every transition as in :func:`ais`, :math:`\epsilon \leftarrow \epsilon\, e^{\kappa (\bar a - a^*)}`
    (clamped to ``STEP_SIZE_RANGE``). Returns ``(z, step_size, accept)``: the final states ``(C, N, D)``, the step
    sizes after the last transition ``(N,)`` and the acceptance probability averaged over transitions and chains
    ``(N,)``. Draws come from torch's global RNG; no parameter's ``.grad`` is touched and nothing carries autograd
    history. (A fixed step size, ``adapt=False``, makes every transition an exact MH kernel for p(z|x).)
    """
    _check(x, vae, z.shape[0], leapfrog_steps, chunk_chains)
    prior = vae.prior()
    path = _Path(vae, x, prior, prior, chunk_chains or z.shape[0])  # q0 = prior: its weight 1 - beta is 0
    state = (z,) + tuple(path(z))
    step = step_size.to(z)
    accept_sum = torch.zeros_like(step)
    for _ in range(num_transitions):
        state, accept = _hmc(path, state, 1.0, step, leapfrog_steps)
        accept = accept.mean(0)  # (N,)
        accept_sum += accept
        if adapt:
            step = (step * torch.exp(adapt_rate * (accept - target_accept))).clamp(*STEP_SIZE_RANGE)
    return state[0], step, accept_sum / max(num_transitions, 1)


@torch.no_grad()
def _anneal(path: _Path, z: torch.Tensor, betas: torch.Tensor, leapfrog_steps: int, step_size, target_accept: float,
            adapt_rate: float, bar=None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""Run C x N chains from ``z`` ``(C, N, D)`` along ``betas`` (either direction): the log weights ``(C, N)``,
    :math:`\sum_i (\beta_i - \beta_{i-1}) [\log p(x, z) - \log q_0(z)]` before each transition, the step sizes used
    ``(len(betas) - 2, N)``, the final step size ``(N,)`` and the mean acceptance ``(N,)``.

    ``step_size``: a float, the first step size, then adapted after every transition from the chains' acceptance
    (:math:`\epsilon \leftarrow \epsilon\, e^{\kappa (\bar a - a^*)}`, :math:`\kappa` = ``adapt_rate``,
    :math:`a^*` = ``target_accept``); or a tensor ``(len(betas) - 2, N)``, the step size of each transition, fixed.
    ``bar`` (a tqdm bar), if given, advances by N per temperature.
    """
    num = len(betas) - 2  # transitions: none after the last weight update
    n = z.shape[1]
    fixed = torch.is_tensor(step_size)
    if fixed and tuple(step_size.shape) != (num, n):
        raise ValueError(f"ais step_sizes: shape {tuple(step_size.shape)}, want {(num, n)} (transitions, points)")
    step = z.new_full((n,), math.nan) if fixed else z.new_full((n,), float(step_size))
    state = (z,) + tuple(path(z))
    log_w = torch.zeros_like(state[1])  # (C, N)
    used, accept_sum = [], torch.zeros(n, dtype=z.dtype, device=z.device)
    b = betas.tolist()
    for i in range(1, len(b)):
        log_w += (b[i] - b[i - 1]) * (state[2] - state[1])
        if bar is not None:
            bar.update(n)
        if i == len(b) - 1:
            break
        if fixed:
            step = step_size[i - 1].to(z)
        used.append(step)
        state, accept = _hmc(path, state, b[i], step, leapfrog_steps)
        accept = accept.mean(0)  # (N,)
        accept_sum += accept
        if not fixed:
            step = (step * torch.exp(adapt_rate * (accept - target_accept))).clamp(*STEP_SIZE_RANGE)
    used_t = torch.stack(used) if used else z.new_zeros((0, n))
    return log_w, used_t, step, accept_sum / num if num > 0 else torch.full_like(accept_sum, math.nan)


def _start(vae: VAE, x: torch.Tensor, initial: Union[str, Distribution]) -> Tuple[Distribution, Distribution]:
    """``(q0, prior)`` built without autograd history (their parameters are constants for the chains)."""
    if isinstance(initial, Distribution):
        with torch.no_grad():
            return initial, vae.prior()
    if initial not in INITIALS:
        raise ConfigError(f"ais initial {initial!r}: must be one of {', '.join(INITIALS)}")
    with torch.no_grad():
        prior = vae.prior()
        return (vae.encoder(x) if initial == "encoder" else prior), prior


def _check(x: torch.Tensor, vae: VAE, num_chains: int, leapfrog_steps: int, chunk_chains: Optional[int]) -> None:
    if x.dim() != 2 or x.shape[1] != vae.x_dim:
        raise ValueError(f"ais: x has shape {tuple(x.shape)}, want (N, {vae.x_dim})")
    for name, value in (("num_chains", num_chains), ("leapfrog_steps", leapfrog_steps)):
        if value < 1:
            raise ConfigError(f"ais {name} {value}: must be at least 1")
    if chunk_chains is not None and chunk_chains < 1:
        raise ConfigError(f"ais chunk_chains {chunk_chains}: must be at least 1 (or None for all chains at once)")


@torch.no_grad()
def ais(vae: VAE, x: torch.Tensor, num_steps: int = 100, num_chains: int = 16, leapfrog_steps: int = 10,
        initial: Union[str, Distribution] = "encoder", schedule: str = "sigmoid", step_size=0.1,
        target_accept: float = 0.65, adapt_rate: float = 0.5, chunk_chains: Optional[int] = None,
        bar=None) -> AISResult:
    r"""Per-point AIS estimate of log p(x) for ``x`` ``(N, x_dim)``, with C = ``num_chains`` chains per point.

    .. math::

        z_{0} \sim q_0, \quad
        \log w = \sum_{t=1}^{T} (\beta_t - \beta_{t-1}) [\log p(x, z_{t-1}) - \log q_0(z_{t-1})], \quad
        z_t \sim \mathrm{HMC}_{f_t}(\cdot \mid z_{t-1}), \quad
        \log \hat p(x_n) = \mathrm{logsumexp}_c \log w_{c,n} - \log C.

    ``q0``: ``initial="encoder"``, the encoder's q(z|x) (batch ``(N,)``, event ``(latent_dim,)``); ``"prior"``,
    p(z); or a distribution of batch ``(N,)`` (e.g. a per-point refined guide). The target is the model's own
    components, ``vae.prior().log_prob(z)`` and the likelihood's
    ``log_prob`` of x at ``vae.decoder(z)``, so any registered prior, decoder and likelihood work (continuous z).
    ``schedule``: :func:`beta_schedule`. The HMC step size is one per point, shared by its chains, starting at
    ``step_size`` and adapted after every transition toward acceptance ``target_accept`` (rate ``adapt_rate``);
    ``step_size`` may instead be a ``(T - 1, N)`` tensor of fixed per-transition step sizes (e.g. a previous
    run's ``step_sizes``), which makes every kernel fixed in advance and the weight exactly unbiased. Adapting
    from the chains' own past keeps each transition a valid MH kernel for its f_t, as in Wu et al.'s code, but
    strictly the unbiasedness proof wants kernels fixed in advance.

    States are ``(C, N, latent_dim)``; the decoder runs ``chunk_chains`` chains at a time (default all), so its
    memory does not grow with C. Draws come from torch's global RNG, all C chains at once per transition, so the
    result does not depend on ``chunk_chains`` (up to rounding). The result carries no autograd history.
    """
    _check(x, vae, num_chains, leapfrog_steps, chunk_chains)
    betas = beta_schedule(num_steps, schedule)
    q0, prior = _start(vae, x, initial)
    draw = q0.rsample if q0.has_rsample else q0.sample  # rsample: the draws of fused_log_weights for a seed
    z = draw((num_chains,) if q0.batch_shape else (num_chains, x.shape[0]))  # (C, N, D)
    path = _Path(vae, x, q0, prior, chunk_chains or num_chains)
    log_w, used, step, accept = _anneal(path, z, betas, leapfrog_steps, step_size, target_accept, adapt_rate, bar)
    log_px = torch.logsumexp(log_w, 0) - math.log(num_chains)  # (N,)
    return AISResult(log_px, log_w, step, used, accept)


def ais_points(vae: VAE, x: torch.Tensor, batch_size: int = 256,
               proposal: Optional[Callable[[torch.Tensor], Distribution]] = None, bar=None, **settings) -> AISResult:
    """:func:`ais` on the rows of ``x`` ``(N, x_dim)``, ``batch_size`` points at a time (memory is per batch),
    as one :class:`AISResult`. ``proposal(rows)``, if given, is q0 for the row indices ``rows`` (a per-point guide
    of a method without an encoder); ``settings`` are :func:`ais`'s keywords. Each point's chains and step size
    are its own, so batching changes only which random numbers a point gets."""
    if batch_size < 1:
        raise ConfigError(f"ais batch_size {batch_size}: must be at least 1")
    parts = []
    for rows in torch.arange(x.shape[0]).split(batch_size):
        if proposal is not None:
            settings["initial"] = proposal(rows)
        parts.append(ais(vae, x[rows], bar=bar, **settings))
    return AISResult.cat(parts)


@torch.no_grad()
def simulate(vae: VAE, num_points: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(z, x)`` from the model: ``z ~ p(z)`` ``(num_points, latent_dim)``, ``x ~ p(x|z)`` ``(num_points, x_dim)``,
    the likelihood's own distribution at ``vae.decoder(z)`` (global RNG)."""
    z = vae.prior().sample((num_points,))
    return z, vae.likelihood(vae.decoder(z)).sample()


@torch.no_grad()
def bdmc(vae: VAE, num_points: int, num_steps: int = 100, num_chains: int = 4, leapfrog_steps: int = 10,
         seed: int = 0, initial: str = "prior", schedule: str = "sigmoid", step_size: float = 0.1,
         target_accept: float = 0.65, adapt_rate: float = 0.5, chunk_chains: Optional[int] = None) -> BDMCResult:
    r"""Bidirectional Monte Carlo on ``num_points`` points simulated from ``vae``: stochastic bounds on log p(x).

    With :math:`z^* \sim p(z)`, :math:`x \sim p(x|z^*)` (:func:`simulate`), :math:`z^*` is an exact sample of
    p(z|x) = :math:`f_T / Z_T`. Forward: :func:`ais` from ``initial`` gives ``lower`` (in expectation at most
    log p(x)). Reverse: every one of the C chains starts at :math:`z^*` and runs :math:`\beta_T = 1 \to \beta_0 = 0`,

    .. math::

        \log w_{rev} = \sum_{t=T}^{1} (\beta_{t-1} - \beta_t) [\log p(x, z) - \log q_0(z)]
        = \sum_t \log \frac{f_{t-1}(z)}{f_t(z)}, \qquad E[w_{rev}] = \frac{Z_0}{Z_T} = \frac{1}{p(x)},

    with an HMC transition for :math:`f_{t-1}` after each term but the last. By Jensen
    :math:`E \log \frac{1}{C}\sum_c w_{rev,c} \le -\log p(x)`, so
    ``upper`` :math:`= -(\mathrm{logsumexp}_c \log w_{rev,c} - \log C)` is at least log p(x) in expectation
    (it holds for each chain's mean marginal, so chains sharing :math:`z^*` are no problem; and it is tighter than
    :math:`-\frac{1}{C}\sum_c \log w_{rev,c}`, also an upper bound). The reverse chain takes the forward run's
    step sizes in reverse order, fixed: its kernels are set before it starts, so its weight is exactly unbiased.

    Runs on a stream of its own seeded with ``seed`` (the global RNG is left as it was). Continuous x and z only
    in the sense that the decoder must be differentiable in z; x may be discrete.
    """
    _check(torch.empty(1, vae.x_dim), vae, num_chains, leapfrog_steps, chunk_chains)
    if num_points < 1:
        raise ConfigError(f"bdmc num_points {num_points}: must be at least 1")
    with own_rng(seed, vae.device):
        z_star, x = simulate(vae, num_points)
        forward = ais(vae, x, num_steps, num_chains, leapfrog_steps, initial, schedule, step_size,
                      target_accept, adapt_rate, chunk_chains)
        q0, prior = _start(vae, x, initial)
        path = _Path(vae, x, q0, prior, chunk_chains or num_chains)
        z = z_star.expand(num_chains, *z_star.shape).contiguous()  # (C, N, D): every chain at z*
        log_w_rev = _anneal(path, z, beta_schedule(num_steps, schedule).flip(0), leapfrog_steps,
                            forward.step_sizes.flip(0), target_accept, adapt_rate)[0]
    upper = -(torch.logsumexp(log_w_rev, 0) - math.log(num_chains))  # (N,)
    return BDMCResult(x, z_star, forward.log_px, upper, forward, log_w_rev)
