"""The evaluation.json sections of AIS, BDMC and the NUTS posterior, held to the linear-Gaussian closed forms.

For z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I), log p(x) and p(z|x) are exact
(:mod:`pyro_vae.evaluation.linear_gaussian`); every tolerance is a multiple of the Monte Carlo standard
error the section itself reports (or a small floor for AIS's bias at finite T).
"""

import json
import math

import pyro
import pytest
import torch

# test_ais's models, untrained: q(z|x) is far from p(z|x), so AIS and the reference posterior have real work to do
from test_ais import LINEAR, MLP, X_DIM, N  # noqa: E402
from torch.distributions import kl_divergence

from pyro_vae import build_vae, validate_config
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.ais import simulate
from pyro_vae.evaluation.evaluate import evaluate_points
from pyro_vae.evaluation.linear_gaussian import as_gaussian, linear_gaussian, marginal, posterior_distribution
from pyro_vae.evaluation.references import (
    AISSettings,
    BDMCSettings,
    PosteriorSettings,
    ais_section,
    bdmc_section,
    khat_reading,
    posterior_section,
)
from pyro_vae.model import own_rng


@pytest.fixture
def linear_vae():
    return build_vae(validate_config(LINEAR), x_dim=X_DIM).eval()


def exact(vae, x):
    """Exact log p(x_n) per point, ``(N,)``, float64."""
    return marginal(*linear_gaussian(vae, torch.float64)).log_prob(x.double())


def test_ais_section_matches_the_exact_log_likelihood(linear_vae):
    x = torch.randn(N, X_DIM)
    section, result = ais_section(linear_vae, x, num_steps=200, num_chains=16, leapfrog_steps=5, batch_size=40)
    want = exact(linear_vae, x)
    assert abs(section["mean"] - float(want.mean())) <= max(0.03, 3 * section["mc_se"]), section
    assert section["per_point"] == pytest.approx(result.log_px.double().tolist())
    assert section["mc_se"] == pytest.approx(float(result.variance.double().sum().sqrt() / N))
    settings = (section["steps"], section["chains"], section["leapfrog_steps"], section["initial"])
    assert settings == (200, 16, 5, "encoder")
    assert 0.4 < section["accept"] < 0.9 and 1 <= section["ess"] <= 16 and section["seconds"] > 0
    json.dumps(section)  # plain numbers only


def test_evaluate_points_pairs_ais_with_iwae_and_the_exact_value(linear_vae):
    x = torch.randn(N, X_DIM)
    pyro.set_rng_seed(1)
    section, result = ais_section(linear_vae, x, num_steps=100, num_chains=8, leapfrog_steps=5)
    with torch.no_grad():
        out = evaluate_points(linear_vae, x, samples=50, ais=result)
    paired = out["paired"]
    assert {"ais_minus_iwae", "exact_minus_ais"} <= set(paired)
    diff = result.log_px.double() - torch.tensor(section["per_point"], dtype=torch.float64)
    assert float(diff.abs().max()) == 0.0
    assert paired["exact_minus_ais"]["mean"] == pytest.approx(out["log_likelihood"]["mean"] - section["mean"], abs=1e-5)
    assert paired["exact_minus_ais"]["mc_se"] == pytest.approx(section["mc_se"], rel=1e-4)
    # both are lower bounds; the untrained q makes IWAE-50 the looser one by far
    assert paired["ais_minus_iwae"]["mean"] > 3 * paired["ais_minus_iwae"]["se"]
    assert abs(paired["exact_minus_ais"]["mean"]) <= max(0.05, 3 * paired["exact_minus_ais"]["mc_se"])
    with pytest.raises(ValueError, match="one per row|want"):
        evaluate_points(linear_vae, x[:10], samples=5, ais=result)


def test_without_an_exact_value_ais_is_the_reference_of_the_gaps_and_the_kl():
    vae = build_vae(validate_config(MLP), x_dim=X_DIM).eval()
    x = torch.randn(12, X_DIM)
    _, result = ais_section(vae, x, num_steps=10, num_chains=4, leapfrog_steps=3)
    with torch.no_grad():
        out = evaluate_points(vae, x, samples=20, gaps=True, gap_steps=20, ais=result)
    gap = out["gaps"]["approximation_gap"]
    assert gap["log_p"] == "ais" and out["log_likelihood"] is None
    assert "exact_minus_ais" not in out["paired"] and "ais_minus_iwae" in out["paired"]
    assert out["kl_to_true_posterior"]["what"].startswith("estimate: ais - elbo")
    ais_mean = float(result.log_px.double().mean())
    assert out["kl_to_true_posterior"]["mean"] == pytest.approx(ais_mean - out["elbo"]["mean"], abs=1e-4)
    assert gap["mean"] == pytest.approx(ais_mean - out["gaps"]["optimal_elbo"]["mean"], abs=1e-4)


def test_bdmc_rows_bracket_the_exact_log_likelihood_of_the_simulated_points(linear_vae):
    state = torch.get_rng_state()
    section = bdmc_section(linear_vae, N, [100, 10, 100], num_chains=4, leapfrog_steps=5, seed=1)
    assert torch.equal(torch.get_rng_state(), state)  # its own stream
    with own_rng(1, linear_vae.device):  # bdmc simulates first on its stream: the same points
        _, x = simulate(linear_vae, N)
    want = exact(linear_vae, x)
    assert section["log_likelihood"] == pytest.approx(float(want.mean()))
    assert [row["steps"] for row in section["rows"]] == [10, 100]
    assert (section["num_points"], section["chains"], section["initial"]) == (N, 4, "prior")
    for row in section["rows"]:
        low, up = row["lower_minus_exact"], row["upper_minus_exact"]
        assert low["mean"] <= 3 * low["se"] and up["mean"] >= -3 * up["se"], row
        assert row["lower"] == pytest.approx(float(want.mean()) + low["mean"], abs=1e-4)
        assert row["gap"] == pytest.approx(row["upper"] - row["lower"], abs=1e-4) and row["gap"] >= -3 * row["gap_se"]
    assert section["rows"][1]["gap"] < section["rows"][0]["gap"] - 0.1
    json.dumps(section)


def test_posterior_section_hmc_matches_the_closed_form_posterior(linear_vae):
    x = torch.randn(10, X_DIM)
    section = posterior_section(linear_vae, x, num_points=4, num_samples=600, warmup_steps=300, seed=0)
    e = section["exact"]
    n_eff = section["nuts"]["n_eff_min"]
    assert section["points"] == 4 and section["nuts"]["r_hat_max"] < 1.05 and n_eff > 100
    # ||mean error|| of D = 2 coordinates: 4 of its own Monte Carlo floors sqrt(sum_d var_d / n_eff_d)
    for err, floor in zip(e["per_point"]["hmc_mean_error"], e["per_point"]["hmc_mean_mc_se"]):
        assert err <= 4 * floor, (err, floor)
    # relative Frobenius error of a sample covariance: about sqrt(((tr S)^2 / |S|_F^2 + 1) / n) <= sqrt(3 / n)
    assert max(e["per_point"]["hmc_cov_rel_error"]) <= 4 * math.sqrt(3 / n_eff)
    # the exact KL(q || p(z|x)) from the closed forms, and the moment-matched KL near it
    q = as_gaussian(linear_vae.encoder(x[:4]))
    want = kl_divergence(q, posterior_distribution(*linear_gaussian(linear_vae), x[:4]))
    assert e["per_point"]["kl"] == pytest.approx(want.tolist(), rel=1e-5)
    assert e["kl_method"] == "closed form" and e["kl"] > 0.5  # untrained encoder
    assert section["kl_gauss"] == pytest.approx(e["kl"], rel=0.1, abs=0.05)
    # q's mean is far from the posterior's (untrained), and k-hat is finite with a reading per point
    assert section["mean_error"] > 10 * section["mean_mc_se"]
    khat = section["per_point"]["khat"]
    assert all(math.isfinite(k) for k in khat) and len(khat) == 4
    assert section["per_point"]["khat_reading"] == [khat_reading(k) for k in khat]
    assert sum(section["khat_counts"].values()) == 4
    json.dumps(section)


def test_posterior_section_on_a_nonlinear_model_has_no_exact_part():
    vae = build_vae(validate_config(MLP), x_dim=X_DIM).eval()
    section = posterior_section(vae, torch.randn(3, X_DIM), num_points=5, num_samples=20, warmup_steps=20)
    assert section["exact"] is None and section["points"] == 3  # fewer points than asked: all of them
    # with 20 warmup steps NUTS may stay stuck: a singular sample covariance, NaN for that point, counted
    errors = section["per_point"]["kl_gauss"]
    assert section["stuck_points"] == sum(math.isnan(v) for v in errors) and len(errors) == 3
    assert all(math.isfinite(k) for k in section["per_point"]["khat"])


def test_khat_reading_is_yao_et_al():
    assert [khat_reading(k) for k in (-math.inf, 0.49, 0.5, 0.7, 0.71, math.inf)] == \
        ["good", "good", "ok", "ok", "unreliable", "unreliable"]


@pytest.mark.parametrize("settings, match", [
    (AISSettings(steps=0), "ais steps 0"), (AISSettings(chains=0), "ais chains 0"),
    (AISSettings(initial="middle"), "ais initial 'middle'"), (BDMCSettings(points=0), "bdmc points 0"),
    (BDMCSettings(steps=()), "bdmc steps"), (BDMCSettings(steps=(10, 0)), "bdmc steps"),
    (PosteriorSettings(samples=3), "posterior samples 3"), (PosteriorSettings(method="vi"), "posterior method"),
])
def test_bad_settings_are_config_errors(settings, match):
    with pytest.raises(ConfigError, match=match):
        settings.check()
