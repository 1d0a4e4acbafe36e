"""The yardstick against independent estimators: the exact log p(x), Pyro's traced importance weights, the closed-form ELBO."""

import math

import pyro
import pytest
import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.evaluation.bounds import elbo_terms, log_weights
from pyro_vae.evaluation.linear_gaussian import exact_log_likelihood
from pyro_vae.evaluation.yardstick import Yardstick, _log_weight_stats
from pyro_vae.inference.kl import ANALYTIC

MLP = {"model": {"latent_dim": 2, "decoder": {"hidden": [16]}, "likelihood": {"scale": 0.5}}, "guide": {"hidden": [16]}}
LINEAR = {"model": {"latent_dim": 2, "decoder": "linear", "likelihood": {"scale": 0.7, "learn_scale": "global"}},
          "guide": {"hidden": []}}


def _vae(spec, x_dim=6, seed=0):
    pyro.set_rng_seed(seed)
    return build_vae(validate_config(spec), x_dim).eval()


def test_the_points_are_a_fixed_subset_the_same_for_every_yardstick():
    x = torch.arange(40.0)[:, None].expand(40, 3)
    a, b = Yardstick(x, num_points=10), Yardstick(x.clone(), num_points=10)
    assert torch.equal(a.points, b.points) and len(a.points) == 10
    assert bool((a.points[1:, 0] > a.points[:-1, 0]).all())  # kept in their order
    assert torch.equal(Yardstick(x, num_points=100).points, x)  # fewer rows than asked: all of them
    with pytest.raises(ValueError):
        Yardstick(x, num_samples=0)


def test_linear_gaussian_scores_are_exact():
    vae = _vae(LINEAR)
    x = torch.randn(50, 6) * 2
    stick = Yardstick(x, num_samples=20)
    assert stick.estimator(vae) == "exact"
    score = stick(vae)
    assert score["log_px"] == pytest.approx(exact_log_likelihood(vae, x), abs=1e-9)
    assert score["elbo"] < score["log_px"]  # the guide is not the posterior: a strict gap


def test_iwae_matches_pyros_traced_weights_within_monte_carlo_error():
    """Per point, the yardstick's IWAE-K and an IWAE-K from Pyro's traced model and guide (independent draws)
    estimate the same expectation: their paired mean difference is within 4 standard errors of 0."""
    vae, K = _vae(MLP), 10
    x = torch.randn(300, 6)
    assert Yardstick(x, num_samples=K).estimator(vae) == f"IWAE-{K}"
    torch.manual_seed(1)
    with torch.no_grad():
        ours, elbo = _log_weight_stats(vae, x, K)
        theirs = torch.logsumexp(log_weights(vae.model, vae.guide, x, K), 0) - math.log(K)
    d = ours - theirs.double()
    assert abs(float(d.mean())) < 4 * float(d.std() / math.sqrt(len(d)))
    assert bool((elbo <= ours + 1e-9).all())  # the mean of log w is below the log of the mean, point by point


def test_elbo_from_the_same_draws_matches_the_closed_form_elbo():
    """(1/K) sum_k log w_k is the Monte Carlo-KL ELBO: against the analytic-KL ELBO (its expectation) on the
    same points, paired, within 4 standard errors."""
    vae = _vae(MLP)
    x = torch.randn(300, 6)
    torch.manual_seed(2)
    with torch.no_grad():
        _, ours = _log_weight_stats(vae, x, 8)
        closed, used = elbo_terms(vae.model, vae.guide, x, 64, ANALYTIC)
    assert used == ANALYTIC
    d = ours - closed.double()
    assert abs(float(d.mean())) < 4 * float(d.std() / math.sqrt(len(d)))
    score = Yardstick(x, num_samples=8)(vae)
    assert score["elbo"] <= score["log_px"]
