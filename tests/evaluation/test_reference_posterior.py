"""The MCMC reference posterior, q against its samples, and PSIS k-hat, held to the linear-Gaussian closed form.

For z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I), p(z|x) = N(A (x - b), G) exactly
(:func:`pyro_vae.evaluation.linear_gaussian.posterior`). Tolerances are Monte Carlo standard errors:
4 SE of a sample mean with Pyro's n_eff of each coordinate, 4 SE of a sample covariance entry with
the n_eff of the centred products, and a batch-means SE for the KL of the sample moments.
"""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.importance import psis_diagnostic
from pyro.ops.stats import effective_sample_size
from torch.distributions import kl_divergence

from pyro_vae import build_vae, validate_config
from pyro_vae.evaluation.linear_gaussian import linear_gaussian, posterior
from pyro_vae.evaluation.reference_posterior import (
    PosteriorSamples,
    hmc_posterior,
    khat_from_log_weights,
    posterior_discrepancy,
    psis_khat,
    sample_covariance,
)

S, WARMUP, N = 1000, 300, 4
# chi-square 99.9% quantile with D + D(D+1)/2 = 5 degrees of freedom: 2 n KL(p || N(m_hat, Sigma_hat)) is
# asymptotically chi-square(5) for D = 2 (n independent draws); used with n = the least n_eff
CHI2_5_999 = 20.52


def linear_vae(guide=None, seed=0):
    pyro.set_rng_seed(seed)
    cfg = validate_config({"model": {"latent_dim": 2, "decoder": "linear",
                                     "likelihood": {"scale": 0.5, "learn_scale": "global"}},
                           "guide": guide or {"hidden": [8]}})
    return build_vae(cfg, x_dim=5)


def exact_posterior(vae, x):
    W, b, noise_var = linear_gaussian(vae)
    A, b, G = posterior(W, b, noise_var)
    return dist.MultivariateNormal((x - b) @ A.T, covariance_matrix=G.expand(x.shape[0], -1, -1))


def data(vae, n=N, seed=1):
    """n points from the model itself, so the posteriors sit where the prior has mass."""
    gen = torch.Generator().manual_seed(seed)
    W, b, noise_var = linear_gaussian(vae)
    z = torch.randn(n, vae.latent_dim, generator=gen)
    return z @ W.T + b + noise_var.sqrt() * torch.randn(n, vae.x_dim, generator=gen)


@pytest.fixture(scope="module")
def setup():
    vae = linear_vae()
    x = data(vae)
    return vae, x, exact_posterior(vae, x), hmc_posterior(vae, x, num_samples=S, warmup_steps=WARMUP, seed=0)


def assert_moments_match(ref: PosteriorSamples, p: dist.MultivariateNormal):
    """Sample mean and covariance within 4 Monte Carlo SE of the exact ones, entry by entry."""
    z = ref.samples.double()
    num = z.shape[0]
    mean, cov = p.mean.double(), p.covariance_matrix.double()
    sd = torch.diagonal(cov, dim1=-2, dim2=-1).sqrt()
    se_mean = sd / ref.n_eff.double().clamp(max=num).sqrt()
    assert ((z.mean(0) - mean).abs() <= 4 * se_mean).all(), ((z.mean(0) - mean) / se_mean)
    # a covariance entry is the mean of the centred products: its SE from their spread and their own n_eff
    centred = z - mean
    products = centred.unsqueeze(-1) * centred.unsqueeze(-2)  # (S, N, D, D)
    n_eff = effective_sample_size(products.unsqueeze(0), chain_dim=0, sample_dim=1).clamp(max=num)
    se_cov = products.std(0) / n_eff.sqrt()
    err = sample_covariance(z) - cov
    assert (err.abs() <= 4 * se_cov + 1e-12).all(), err / se_cov


def test_hmc_samples_match_the_closed_form_posterior(setup):
    vae, x, exact, ref = setup
    assert ref.samples.shape == (S, N, 2) and ref.n_eff.shape == ref.r_hat.shape == (N, 2)
    assert ref.joint and len(ref.step_size) == 1 and sum(ref.divergences) == 0
    assert float(ref.r_hat.max()) < 1.05 and float(ref.n_eff.min()) > S / 5
    assert_moments_match(ref, exact)


def test_hmc_one_chain_per_point_matches_too():
    vae = linear_vae()
    x = data(vae, n=2, seed=2)
    ref = hmc_posterior(vae, x, num_samples=600, warmup_steps=200, seed=3, joint=False)
    assert ref.samples.shape == (600, 2, 2) and not ref.joint
    assert len(ref.step_size) == len(ref.divergences) == 2 and sum(ref.divergences) == 0
    assert float(ref.r_hat.max()) < 1.05
    assert_moments_match(ref, exact_posterior(vae, x))


def test_hmc_is_repeatable_and_leaves_the_model_and_rng_alone():
    cfg = validate_config({"model": {"latent_dim": 2, "decoder": {"hidden": [8]}, "likelihood": "bernoulli"},
                           "guide": {"hidden": [8]}})
    vae = build_vae(cfg, x_dim=6)
    x = (torch.rand(3, 6) > 0.5).float()
    before = torch.get_rng_state()
    first = hmc_posterior(vae, x, num_samples=30, warmup_steps=30, seed=5)
    assert torch.equal(torch.get_rng_state(), before)  # the run's own stream
    second = hmc_posterior(vae, x, num_samples=30, warmup_steps=30, seed=5)
    assert torch.equal(first.samples, second.samples) and torch.isfinite(first.samples).all()
    assert all(p.requires_grad and p.grad is None for p in vae.parameters())  # frozen, then restored
    assert set(first.summary()) >= {"r_hat_max", "n_eff_min", "divergences", "seconds"}


def test_discrepancy_of_the_exact_posterior_is_monte_carlo_noise(setup):
    vae, x, exact, ref = setup
    out = posterior_discrepancy(exact, ref)
    assert out["moments"] == out["kl_method"] == "closed form"
    assert (out["mean_error"] <= 4 * out["mean_mc_se"]).all()
    # the covariance entries are held to 4 SE in the test above; here, that cov_error is their Frobenius norm
    torch.testing.assert_close(out["cov_error"], torch.linalg.matrix_norm(ref.covariance - exact.covariance_matrix))
    # a sample sd's relative SE is 1 / sqrt(2 n): 4 SE with a conservative n = S / 5 for the squares
    assert ((out["sd_ratio"] - 1).abs() < 4 / (2 * S / 5) ** 0.5).all()
    n_eff = float(ref.n_eff.clamp(max=S).min())
    assert (out["kl_gauss"] >= 0).all() and float(out["kl_gauss"].max()) < CHI2_5_999 / (2 * n_eff)
    assert out["kl_gauss_avg"] == pytest.approx(float(out["kl_gauss"].mean()))


def test_discrepancy_of_the_untrained_encoder_is_its_kl_to_the_posterior(setup):
    vae, x, exact, ref = setup
    q = vae.encoder(x)
    out = posterior_discrepancy(q, ref)
    gaussian_q = dist.MultivariateNormal(q.mean, covariance_matrix=torch.diag_embed(q.variance))
    want = kl_divergence(gaussian_q, exact).detach()
    assert (want > 0.3).all()  # an untrained encoder is far off: the test means something
    # batch means: the KL of each of 10 blocks' moments, their spread / sqrt(10) the SE of the full estimate
    blocks = torch.stack([posterior_discrepancy(q, block)["kl_gauss"] for block in ref.samples.chunk(10)])
    se = blocks.std(0) / 10 ** 0.5
    assert ((out["kl_gauss"] - want).abs() <= 4 * se + 0.01).all(), (out["kl_gauss"], want, se)
    mean_error = (q.mean - exact.mean).norm(dim=-1).detach()
    assert ((out["mean_error"] - mean_error).abs() <= 4 * out["mean_mc_se"]).all()


@pytest.mark.parametrize("guide,moments", [("full_rank", "closed form"), ("low_rank", "closed form"),
                                           ("student_t", "closed form"), ("flow", "4096 draws")])
def test_discrepancy_reads_each_guide_family(guide, moments):
    """Full- and low-rank Gaussians through ``covariance_matrix``, a Student-t through its variance, a flow by draws."""
    vae = linear_vae({"name": guide, "hidden": [8]})
    x = data(vae, n=3)
    exact = exact_posterior(vae, x)
    draws = exact.sample((4000,))  # independent draws of the exact posterior
    q = vae.encoder(x)
    out = posterior_discrepancy(q, draws)
    assert out["moments"] == moments and out["mean_error"].shape == out["kl_gauss"].shape == (3,)
    assert torch.isfinite(out["kl_gauss"]).all() and (out["kl_gauss"] > 0).all()
    target = dist.MultivariateNormal(draws.mean(0), covariance_matrix=sample_covariance(draws))
    if guide in ("full_rank", "low_rank"):
        want = kl_divergence(dist.MultivariateNormal(q.mean, covariance_matrix=q.covariance_matrix), target)
        torch.testing.assert_close(out["kl_gauss"], want.detach(), rtol=1e-4, atol=1e-5)
    else:  # Monte Carlo KL: within 5 SE of the log-ratio's spread over 4096 draws
        z = q.sample((4096,))
        ratio = (q.log_prob(z) - target.log_prob(z)).detach()
        assert ((out["kl_gauss"] - ratio.mean(0)).abs() <= 5 * ratio.std(0) / 4096 ** 0.5 * 2 ** 0.5).all()


def test_psis_khat_separates_good_and_poor_proposals(setup):
    vae, x, exact, _ = setup
    G = exact.covariance_matrix
    assert (psis_khat(vae, x, q=exact) < 0.5).all()  # weights all p(x): bounded
    wider = dist.MultivariateNormal(exact.mean, covariance_matrix=1.5 ** 2 * G)
    assert (psis_khat(vae, x, q=wider) < 0.5).all()
    narrow = dist.MultivariateNormal(exact.mean, covariance_matrix=0.2 ** 2 * G)
    assert (psis_khat(vae, x, q=narrow) > 0.7).all()
    assert psis_khat(vae, x).shape == (N,)


def test_khat_per_point_is_pyros_psis_diagnostic(setup):
    """For one point, Pyro's psis_diagnostic on the VAE's own model and guide: the same k-hat from the same draws."""
    vae, x, _, _ = setup
    point = x[2:3]
    pyro.set_rng_seed(7)
    want = psis_diagnostic(vae.model, vae.guide, point, num_particles=1000)
    got = float(psis_khat(vae, point, num_samples=1000, seed=7)[0])
    assert got == pytest.approx(want, abs=1e-3)


def test_khat_degenerate_weights():
    assert khat_from_log_weights(torch.full((100,), -3.0)) == float("-inf")  # constant: q = p
    # Pareto weights w = U^(-0.9) have tail index k = 0.9; the fit's SE with ~190 tail draws is ~0.15
    heavy = -0.9 * torch.rand(4000, generator=torch.Generator().manual_seed(1), dtype=torch.float64).log()
    assert 0.7 < khat_from_log_weights(heavy) < 1.2
    assert khat_from_log_weights(torch.randn(20)) == float("inf")  # too few tail draws, as Pyro says
