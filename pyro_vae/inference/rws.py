r"""Reweighted wake-sleep (RWS) and wake-sleep as training objectives, minibatched, in the fused form.

Both fit the model :math:`p_\theta(z)\, p_\theta(x|z)` and the encoder :math:`q_\phi(z|x)` without
reparameterizing z: theta climbs an importance-weighted estimate of :math:`\log p_\theta(x)`, phi is fitted
to the posterior by a separate objective. For a data point x take K draws :math:`z_k \sim q_\phi(z|x)` and

.. math::

    \log w_k = \log p_\theta(x, z_k) - \log q_\phi(z_k|x), \qquad
    \tilde w_k = \frac{w_k}{\sum_j w_j} = \mathrm{softmax}_k(\log w)_k .

* **wake-theta**: ascend :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)`, the theta-gradient
  of the IWAE bound :math:`\mathcal{L}_K = \log \frac1K \sum_k w_k` with the draws held fixed;
* **wake-phi**: ascend :math:`\sum_k \tilde w_k \nabla_\phi \log q_\phi(z_k|x)` (weights held fixed), a
  self-normalized estimate of :math:`-\nabla_\phi \mathrm{KL}(p_\theta(z|x) \,\|\, q_\phi(z|x))`;
* **sleep-phi**: draw :math:`z \sim p_\theta(z)`, :math:`x' \sim p_\theta(x|z)` (the "dream") and ascend
  :math:`\nabla_\phi \log q_\phi(z|x')`, that is
  :math:`-\nabla_\phi \mathbb{E}_{p_\theta(x)} \mathrm{KL}(p_\theta(z|x) \,\|\, q_\phi(z|x))`,
  on data the model dreams rather than on the data.

``phi_update`` picks phi's objective: ``wake``, ``sleep`` or ``both`` (their average, Pyro's
``insomnia = 0.5``). Wake-sleep (Hinton et al. 1995) is K = 1 wake-theta with sleep-phi
(``inference.objective: wake_sleep``); RWS (Bornschein & Bengio 2015) is K > 1 with any of them
(``inference.objective: rws``, ``inference.phi_update``), Le et al. (2019) recommending wake-phi.

**Minibatches.** Every term is a sum over the batch's points of the per-point term above: K draws and
their own softmax per point, and one dream (z, x') per point, B in all. The Trainer divides by B, as for
every other objective. Pyro's :class:`~pyro.infer.ReweightedWakeSleep` does not support minibatches:
it sums the log weights over the data plate before its log-sum-exp, so on a batch of B > 1 points it
weights the K joint draws of the whole batch (one softmax for all points), which is not the per-point
estimator; on a single point the two are the same (the tests check this draw for draw). So these
objectives have no Pyro loss here, only this fused one.

**One loss, one optimizer.** The surrogate,

.. math::

    -\sum_n \Big[\log \tfrac1K \textstyle\sum_k \exp\big(\log p_\theta(x_n, z_{nk})
        - \mathrm{sg}[\log q_\phi(z_{nk}|x_n)]\big)
      + \Phi_n\Big], \qquad
    \Phi_n^{wake} = \sum_k \mathrm{sg}[\tilde w_{nk}] \log q_\phi(z_{nk}|x_n), \quad
    \Phi_n^{sleep} = \log q_\phi(z'_n | x'_n),

(sg: stop-gradient; the draws carry no gradient) has exactly the wake-theta gradient in theta (log q and
Phi do not depend on theta; the dreams are detached) and the chosen phi-update in phi (the first term's
log q is stopped), so one Adam over all parameters takes both steps. Its *value* is set to minus the IWAE
bound :math:`-\sum_n \mathcal{L}_K(x_n)` (straight-through), so the Trainer's logged training objective is
the K-sample bound (the ELBO for K = 1). beta (``inference.beta``) is not applied.

References: Hinton, Dayan, Frey & Neal, "The wake-sleep algorithm for unsupervised neural networks"
(Science 1995); Bornschein & Bengio, "Reweighted wake-sleep" (ICLR 2015); Le, Kosiorek, Siddharth, Teh &
Wood, "Revisiting reweighted wake-sleep for models with stochastic control flow" (UAI 2019); Burda, Grosse
& Salakhutdinov, "Importance weighted autoencoders" (ICLR 2016).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
from torch.distributions import Distribution

from pyro_vae.errors import ConfigError
from pyro_vae.inference.elbo import log_likelihood_of
from pyro_vae.inference.score_function import straight_through
from pyro_vae.model import VAE

PHI_UPDATES = ("wake", "sleep", "both")

Dreams = Tuple[torch.Tensor, torch.Tensor]  # (z, x) ~ p_theta, (B, latent_dim) and (B, x_dim)


def check_arguments(num_particles: int, phi_update: str) -> None:
    """A one-line :class:`ConfigError` for a ``phi_update`` outside :data:`PHI_UPDATES` or ``num_particles < 1``;
    also for wake-phi with one particle (its weight is 1, so its gradient has expectation 0: phi would not learn)."""
    if phi_update not in PHI_UPDATES:
        raise ConfigError(f"phi_update: {phi_update!r}; must be one of {', '.join(PHI_UPDATES)}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        raise ConfigError(f"num_particles: {num_particles!r}; must be an integer >= 1")
    if phi_update == "wake" and num_particles == 1:
        raise ConfigError("phi_update: 'wake' with num_particles=1 has weight 1 and a gradient of mean 0 "
                          "(phi would not learn); use num_particles >= 2 or phi_update=sleep")


def _draw(d: Distribution, shape: Tuple[int, ...] = ()) -> torch.Tensor:
    """A draw from ``d`` as ``pyro.sample`` takes it (``rsample`` where it has one: the same numbers), detached."""
    with torch.no_grad():
        return d.rsample(shape) if d.has_rsample else d.sample(shape)


def wake_draws(q: Distribution, num_particles: int) -> torch.Tensor:
    """``z_k ~ q(z|x)``, ``(K, B, latent_dim)`` for ``q`` of batch ``(B,)``, detached."""
    return _draw(q, (num_particles,))


def dreams(vae: VAE, n: int) -> Dreams:
    """``n`` sleep samples ``z ~ p(z)``, ``x ~ p(x|z)`` (the likelihood's draw, not its mean), detached: ``(z, x)``."""
    z = _draw(vae.prior(), (n,))
    with torch.no_grad():
        px = vae.likelihood(vae.decoder(z))
    return z, _draw(px)


def rws_surrogate(vae: VAE, x: torch.Tensor, q: Distribution, z: torch.Tensor, sleep: Optional[Dreams],
                  phi_update: str) -> torch.Tensor:
    r"""Minus the RWS objective of the batch ``x`` ``(B, x_dim)``, summed over its points, for given draws.

    ``q = vae.encoder(x)``, ``z`` ``(K, B, latent_dim)`` the wake draws from it, ``sleep`` the dreams
    :func:`dreams` (needed unless ``phi_update == "wake"``). The value is :math:`-\sum_n \mathcal{L}_K(x_n)`;
    the gradient is minus wake-theta's in theta and minus ``phi_update``'s in phi (module docstring).
    """
    log_p = log_likelihood_of(vae, vae.decoder(z), x) + vae.prior().log_prob(z)  # (K, B): theta only
    log_q = q.log_prob(z)  # (K, B): phi only
    log_w = log_p - log_q.detach()
    bound = (torch.logsumexp(log_w, dim=0) - math.log(z.shape[0])).sum()  # IWAE, summed over the batch
    if phi_update != "sleep":
        wake_phi = (torch.softmax(log_w.detach(), dim=0) * log_q).sum()
    if phi_update != "wake":
        z_s, x_s = sleep
        sleep_phi = vae.encoder(x_s).log_prob(z_s).sum()
    phi = wake_phi if phi_update == "wake" else sleep_phi if phi_update == "sleep" else 0.5 * (wake_phi + sleep_phi)
    return straight_through(-bound, -(bound + phi))


def fused_rws_loss(vae: VAE, x: torch.Tensor, num_particles: int = 5, phi_update: str = "wake",
                   kl_weight: float | torch.Tensor = 1.0) -> torch.Tensor:
    """Minus the RWS objective of ``x`` ``(B, x_dim)`` summed over the batch (the fused engine's signature,
    ``inference.objective: rws`` or ``wake_sleep``): K wake draws per point, then B dreams (for a sleep-phi),
    and :func:`rws_surrogate` on them. ``kl_weight`` (beta) is not used: RWS has no KL term to weight."""
    q = vae.encoder(x)
    z = wake_draws(q, num_particles)  # first the wake draws, then the dreams: Pyro's RWS draws in this order
    sleep = dreams(vae, len(x)) if phi_update != "wake" else None
    return rws_surrogate(vae, x, q, z, sleep, phi_update)


def rws_loss(vae: VAE, num_particles: int, phi_update: str = "wake"):
    """The Trainer's ``loss(x_b, beta)`` for RWS with these settings (checked first): :func:`fused_rws_loss`."""
    check_arguments(num_particles, phi_update)

    def loss(xb: torch.Tensor, kl_weight: float) -> torch.Tensor:
        return fused_rws_loss(vae, xb, num_particles, phi_update)

    return loss
