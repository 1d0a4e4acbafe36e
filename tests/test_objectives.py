"""The KL switch: analytic and Monte Carlo ELBOs agree, and the per-site report says which was used."""

import math

import pyro
import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.objectives import build_elbo, kl_report


def elbo_draws(elbo, vae, x, n):
    """``n`` independent single-particle ELBO estimates (summed over the batch)."""
    with torch.no_grad():
        return torch.tensor([-float(elbo.differentiable_loss(vae.model, vae.guide, x)) for _ in range(n)])


def test_analytic_and_monte_carlo_elbo_agree_within_standard_error():
    cfg = validate_config({"model": {"latent_dim": 3}})
    pyro.set_rng_seed(1)
    vae = build_vae(cfg, 8)
    x = torch.rand(32, 8)
    analytic = elbo_draws(build_elbo(cfg.inference), vae, x, 400)
    mc = elbo_draws(build_elbo(cfg.inference.model_copy(update={"kl": "monte_carlo"})), vae, x, 400)
    se = math.sqrt(analytic.var() / len(analytic) + mc.var() / len(mc))
    assert abs(analytic.mean() - mc.mean()) < 4 * se


def test_kl_report_normal_is_analytic_student_t_is_monte_carlo():
    x = torch.rand(4, 5)
    for prior, kl, expected in [("normal", "analytic", "analytic"), ("student_t", "analytic", "monte_carlo"),
                                ("normal", "monte_carlo", "monte_carlo"), ("laplace", "analytic", "analytic")]:
        vae = build_vae(validate_config({"model": {"prior": {"name": prior}}}), 5)
        assert kl_report(vae.model, vae.guide, x, kl) == {"z": expected}, (prior, kl)


def test_beta_scales_only_the_kl():
    """With the analytic KL and the guide's mean fixed by one seed, ELBO(beta) is linear in beta."""
    cfg = validate_config({"model": {"latent_dim": 2}})
    vae = build_vae(cfg, 4)
    x = torch.rand(6, 4)
    elbo = build_elbo(cfg.inference)
    values = []
    for beta in (0.25, 0.5, 1.0):
        vae.kl_weight = beta
        pyro.set_rng_seed(3)
        values.append(-float(elbo.differentiable_loss(vae.model, vae.guide, x).detach()))
    q = vae.encoder(x)
    kl = float(torch.distributions.kl_divergence(q, vae.prior()).sum().detach())
    assert abs((values[1] - values[2]) - 0.5 * kl) < 1e-3 * kl
    assert abs((values[0] - values[1]) - 0.25 * kl) < 1e-3 * kl
