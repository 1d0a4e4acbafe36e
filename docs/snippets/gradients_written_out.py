"""The ELBO's gradients written out: exact on a tiny linear-Gaussian case, then their noise on the digits VAE.

1. A one-point linear-Gaussian model (x in R^3, z in R^2, x | z ~ N(W z + b, I)) where E_q[log p(x|z)] has a
   closed form: the average of the per-draw gradients equals the gradient of the expectation (for theta, and
   through z = m + s * eps for q's mean m and log-scale log s); the score-function estimate of the same
   gradient is unbiased too, with a far larger spread; the hand-written KL gradients equal autograd's.
2. The digits VAE with separate mean and scale networks (guide.shared_trunk: false): one draw of eps gives a
   gradient to theta, phi and psi at once; the reparameterized and the score-function estimator on the same
   batch; and the gradient's variance against the number of particles K and the minibatch size.
"""

import contextlib
import io

import pyro
import torch
from torch.distributions import Normal, kl_divergence

from pyro_vae.build import prepare
from pyro_vae.config import InferenceConfig, load
from pyro_vae.evaluation.gradients import gradient_statistics
from pyro_vae.inference.elbo import fused_elbo_loss
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.training.trainer import Trainer

torch.set_num_threads(1)  # same float summation order on every machine
torch.manual_seed(0)
DRAWS = 100000

# 1. Tiny linear-Gaussian case, float64: p(z) = N(0, I), p(x|z) = N(W z + b, I), q(z) = N(m, diag s^2).
W = torch.tensor([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.2]], dtype=torch.float64, requires_grad=True)  # (3, 2): theta
b = torch.zeros(3, dtype=torch.float64)
x = torch.tensor([0.9, -0.4, 1.3], dtype=torch.float64)
m = torch.tensor([0.4, -0.6], dtype=torch.float64)  # q's mean, the output of q(x; phi)
log_s = torch.tensor([-0.5, -1.0], dtype=torch.float64)  # log of q's scale, the output of v(x; psi)


def log_lik(z, W):
    """log N(x; W z + b, I) for z (..., 2): the decoder's term."""
    return Normal(z @ W.T + b, 1.0).log_prob(x).sum(-1)


def expected_log_lik(m, log_s, W):
    """E_q[log p(x|z)] in closed form: -3/2 log 2 pi - (|x - b - W m|^2 + sum_j s_j^2 |W_j|^2) / 2."""
    r = x - b - W @ m
    return -1.5 * torch.log(torch.tensor(2 * torch.pi)) - 0.5 * (r @ r + (torch.exp(2 * log_s) * (W ** 2).sum(0)).sum())


eps = torch.randn(DRAWS, 2, dtype=torch.float64)
# theta: one copy of (m, log s) per draw would not change anything: q does not depend on W
exact_W = torch.autograd.grad(expected_log_lik(m, log_s, W), W)[0]
mc_W = torch.autograd.grad(log_lik(m + log_s.exp() * eps, W).mean(), W)[0]  # mean over draws of grad log p(x|z)
print(f"tiny linear-Gaussian model, {DRAWS} draws of eps")
print(f"grad_W E_q[log p(x|z)]: exact vs mean of grad_W log p(x|z_k)   max |diff| {(exact_W - mc_W).abs().max():.4f}"
      f"   (largest entry {exact_W.abs().max():.4f})")

# q's parameters: per-draw gradients (one leaf copy of m and log s per draw) of the reparameterized and score-function
# integrands of the same quantity, E_q[log p(x|z)]
mk = m.expand(DRAWS, 2).clone().requires_grad_()
lk = log_s.expand(DRAWS, 2).clone().requires_grad_()
log_lik(mk + lk.exp() * eps, W.detach()).sum().backward()  # pathwise: through z = m + s * eps
reparam = torch.cat([mk.grad, lk.grad], 1)  # (DRAWS, 4)
mk.grad, lk.grad = None, None
z = (m + log_s.exp() * eps).detach()  # the same draws, treated as samples only
log_q = Normal(mk, lk.exp()).log_prob(z).sum(-1)
(log_lik(z, W.detach()) * log_q).sum().backward()  # score function: log p(x|z) * grad log q(z)
score = torch.cat([mk.grad, lk.grad], 1)
m_, ls_ = m.clone().requires_grad_(), log_s.clone().requires_grad_()
exact = torch.cat(torch.autograd.grad(expected_log_lik(m_, ls_, W.detach()), (m_, ls_)))
print("gradient of E_q[log p(x|z)]   exact   reparameterized (s.e.)   score function (s.e.)")
for i, name in enumerate(["m_1", "m_2", "log s_1", "log s_2"]):
    se_r, se_s = reparam[:, i].std() / DRAWS ** 0.5, score[:, i].std() / DRAWS ** 0.5
    print(f"  d/d {name:<8}              {exact[i]:7.4f}   {reparam[:, i].mean():7.4f} ({se_r:.4f})"
          f"        {score[:, i].mean():7.4f} ({se_s:.4f})")
print(f"variance per draw, score function / reparameterized: {score.var(0).sum() / reparam.var(0).sum():.1f}")

# The closed-form KL(q || N(0, I)) = 1/2 sum_j (m_j^2 + s_j^2 - 1 - 2 log s_j): its gradients by hand and by autograd
m_, ls_ = m.clone().requires_grad_(), log_s.clone().requires_grad_()
kl = kl_divergence(Normal(m_, ls_.exp()), Normal(0.0, 1.0)).sum()
d_m, d_ls = torch.autograd.grad(kl, (m_, ls_))
print(f"KL(q || p(z)) {kl:.4f}: max |autograd - hand-written|   dKL/dm = m: {(d_m - m).abs().max():.1e}"
      f"   dKL/dlog s = s^2 - 1: {(d_ls - (torch.exp(2 * log_s) - 1)).abs().max():.1e}")

# 2. The digits VAE, mean network (phi) and scale network (psi) separate, trained 10 epochs.
cfg = load(None, ["guide.shared_trunk=false", "train.stop=epochs", "train.epochs=10"])
data, vae = prepare(cfg)
trainer = Trainer.from_config(cfg, data, vae, run=None, progress=False)
with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines carry timings
    trainer.fit()
x = data.train[:64]

# One draw of eps, one backward: theta, phi and psi all get their gradient from it.
pyro.set_rng_seed(0)
eps = torch.randn(64, cfg.model.latent_dim)
vae.zero_grad()
with pyro.validation_enabled(False):  # the fused loss takes given eps on its fast path only
    (fused_elbo_loss(vae, x, eps=eps) / len(x)).backward()
norm = {name: sum(p.grad.norm() ** 2 for p in module.parameters()) ** 0.5
        for name, module in [("theta", vae.decoder), ("phi", vae.encoder.loc_net), ("psi", vae.encoder.scale_net)]}
print(f"digits VAE after 10 epochs; one draw eps {tuple(eps.shape)}, one backward:   |grad theta| {norm['theta']:.2f}"
      f"   |grad phi| {norm['phi']:.2f}   |grad psi| {norm['psi']:.2f}")

# Reparameterized against score function, same model, same 64 points, 100 gradient evaluations each.
print("gradient on one batch of 64, 100 evaluations     encoder variance   SNR     decoder variance   SNR")
for estimator, kl in (("reparam", "analytic"), ("reparam", "monte_carlo"), ("score_function", "monte_carlo")):
    pyro.set_rng_seed(0)
    s = gradient_statistics(vae, build_elbo(InferenceConfig(estimator=estimator, kl=kl)), x, 100)
    print(f"  {estimator:<14} kl {kl:<12} K = 1     {s['encoder']['variance']:12.4g}  {s['encoder']['snr']:6.3f}"
          f"   {s['decoder']['variance']:12.4g}  {s['decoder']['snr']:6.3f}")
print(f"  (an SNR near {s['encoder']['snr_floor']:.3f} is no signal at 100 evaluations)")


def minibatch_variance(num_particles: int, batch_size: int, repeats: int = 100) -> tuple:
    """Trace of the gradient's covariance over fresh eps AND a fresh random minibatch each time, (encoder, decoder)."""
    loss = build_elbo(InferenceConfig(num_particles=num_particles))
    groups = {"encoder": list(vae.encoder.parameters()),
              "decoder": [p for n, p in vae.named_parameters() if not n.startswith("encoder.")]}
    g = torch.Generator().manual_seed(0)
    pyro.set_rng_seed(0)
    draws = {k: [] for k in groups}
    for _ in range(repeats):
        xb = data.train[torch.randperm(len(data.train), generator=g)[:batch_size]]
        vae.zero_grad()
        (loss.differentiable_loss(vae.model, vae.guide, xb) / batch_size).backward()
        for k, params in groups.items():
            draws[k].append(torch.cat([p.grad.reshape(-1) for p in params]).double())
    return tuple(float(torch.stack(draws[k]).var(0).sum()) for k in groups)


print("gradient variance against K, analytic KL   encoder   decoder   (decoder passes per step)")
for k in (1, 4, 16):
    pyro.set_rng_seed(0)
    s = gradient_statistics(vae, build_elbo(InferenceConfig(num_particles=k)), x, 100)
    enc, dec = s["encoder"]["variance"], s["decoder"]["variance"]
    print(f"  eps only, batch 64 fixed, K = {k:<2}      {enc:8.2f}  {dec:8.2f}   ({64 * k})")
for k, size in ((1, 64), (4, 64), (16, 64), (1, 256)):
    enc, dec = minibatch_variance(k, size)
    print(f"  eps and minibatch, batch {size:>3}, K = {k:<2}  {enc:8.2f}  {dec:8.2f}   ({size * k})")
