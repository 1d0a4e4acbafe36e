"""AIS and BDMC against the exact linear-Gaussian log p(x), against IWAE, and on every registered component."""

import math

import pytest
import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.ais import ais, bdmc, beta_schedule
from pyro_vae.evaluation.iwae import fused_iwae, fused_log_weights
from pyro_vae.evaluation.linear_gaussian import exact_log_likelihood, linear_gaussian, marginal

# untrained: q(z|x) is far from p(z|x), so AIS has real work to do
LINEAR = {"model": {"latent_dim": 2, "decoder": "linear", "likelihood": {"scale": 0.5, "learn_scale": "global"}},
          "guide": {"hidden": [8]}}
MLP = {"model": {"latent_dim": 2, "decoder": {"hidden": [16]}, "likelihood": {"scale": 0.3}}, "guide": {"hidden": [16]}}
X_DIM, N = 5, 64


@pytest.fixture
def linear_vae():
    return build_vae(validate_config(LINEAR), x_dim=X_DIM)


def exact(vae, x):
    """Exact log p(x_n) per point, ``(N,)``, float64."""
    return marginal(*linear_gaussian(vae, torch.float64)).log_prob(x.double())


def mean_and_se(diff):
    """Mean over points and its standard error (over points), as floats."""
    diff = diff.double()
    return float(diff.mean()), float(diff.std() / math.sqrt(diff.numel()))


@pytest.mark.parametrize("kind", ["sigmoid", "linear"])
def test_beta_schedule_runs_from_zero_to_one_increasing(kind):
    betas = beta_schedule(10, kind)
    assert betas.shape == (11,) and betas.dtype == torch.float64
    assert betas[0] == 0 and betas[-1] == 1 and bool((betas.diff() > 0).all())
    assert float(betas[5]) == pytest.approx(0.5)  # both symmetric about t = T/2


def test_sigmoid_schedule_is_grosse_et_al():
    t = torch.arange(5, dtype=torch.float64) / 4
    sig = torch.sigmoid
    want = (sig(4 * (2 * t - 1)) - sig(torch.tensor(-4.0))) / (sig(torch.tensor(4.0)) - sig(torch.tensor(-4.0)))
    torch.testing.assert_close(beta_schedule(4, "sigmoid"), want.double())


@pytest.mark.parametrize("initial, num_steps", [("encoder", 200), ("prior", 300)])
def test_ais_matches_the_exact_log_likelihood(linear_vae, initial, num_steps):
    x = torch.randn(N, X_DIM)
    result = ais(linear_vae, x, num_steps=num_steps, num_chains=16, leapfrog_steps=5, initial=initial)
    assert result.log_px.shape == (N,) and result.log_weights.shape == (16, N)
    assert result.step_size.shape == result.accept.shape == (N,) and result.step_sizes.shape == (num_steps - 1, N)
    want = exact(linear_vae, x)
    assert float(want.mean()) == pytest.approx(exact_log_likelihood(linear_vae, x))
    mean, se = mean_and_se(result.log_px - want)
    assert abs(mean) <= max(0.03, 3 * se), (mean, se)


def test_one_step_is_iwae_with_the_same_draws(linear_vae):
    """T = 1: no transition, log w = log p(x, z0) - log q(z0|x), z0 the draws fused_log_weights takes for the seed."""
    x = torch.randn(N, X_DIM)
    torch.manual_seed(3)
    result = ais(linear_vae, x, num_steps=1, num_chains=8)
    torch.manual_seed(3)
    want = fused_log_weights(linear_vae, x, 8)
    torch.testing.assert_close(result.log_weights, want, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(result.log_px, torch.logsumexp(want, 0) - math.log(8), rtol=1e-5, atol=1e-4)
    assert result.step_sizes.shape == (0, N) and bool(result.accept.isnan().all())


def test_annealing_beats_iwae_with_the_same_chains(linear_vae):
    x = torch.randn(N, X_DIM)
    want = exact(linear_vae, x)
    iwae_gap, _ = mean_and_se(want - fused_iwae(linear_vae, x, 8, 8))
    ais_err, se = mean_and_se(ais(linear_vae, x, num_steps=50, num_chains=8, leapfrog_steps=5).log_px - want)
    assert iwae_gap > 0.3  # the untrained q is poor: IWAE-8 is far below
    assert abs(ais_err) + 3 * se < iwae_gap / 2, (ais_err, se, iwae_gap)


def test_bdmc_sandwiches_the_exact_log_likelihood_and_tightens_with_steps(linear_vae):
    params = linear_gaussian(linear_vae, torch.float64)
    state = torch.get_rng_state()
    gaps = []
    for num_steps in (10, 100):
        result = bdmc(linear_vae, N, num_steps=num_steps, num_chains=4, leapfrog_steps=5, seed=1)
        assert result.x.shape == (N, X_DIM) and result.z.shape == (N, 2) and result.reverse_log_weights.shape == (4, N)
        want = marginal(*params).log_prob(result.x.double())
        lower, se_lower = mean_and_se(result.lower - want)
        upper, se_upper = mean_and_se(result.upper - want)
        gap, se_gap = mean_and_se(result.gap)
        assert lower <= 3 * se_lower and upper >= -3 * se_upper and gap >= -3 * se_gap, (num_steps, lower, upper, gap)
        assert result.summary()["gap"] == pytest.approx(gap)
        gaps.append(gap)
    assert gaps[1] < gaps[0] - 0.1, gaps
    assert torch.equal(torch.get_rng_state(), state)  # ran on a stream of its own


def test_mlp_ais_is_above_iwae_and_accepts_near_the_target():
    vae = build_vae(validate_config(MLP), x_dim=X_DIM)
    x = torch.randn(32, X_DIM)
    result = ais(vae, x, num_steps=50, num_chains=8, leapfrog_steps=5)
    k = 8 * 50  # IWAE with as many particles as AIS takes transitions
    above, se = mean_and_se(result.log_px - fused_iwae(vae, x, k, k))
    assert above >= -3 * se, (above, se)
    assert 0.45 <= float(result.accept.mean()) <= 0.85


def test_chunking_over_chains_takes_the_same_draws(linear_vae):
    """All C chains' momenta and uniforms are drawn at once: the chunk size changes nothing but rounding."""
    x = torch.randn(8, X_DIM)
    results = []
    for chunk in (None, 3, 1):
        torch.manual_seed(5)
        results.append(ais(linear_vae, x, num_steps=20, num_chains=7, leapfrog_steps=3, chunk_chains=chunk))
    for other in results[1:]:
        torch.testing.assert_close(other.log_weights, results[0].log_weights, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(other.step_size, results[0].step_size, rtol=1e-4, atol=1e-5)


def test_fixed_step_sizes_are_used_as_given(linear_vae):
    x = torch.randn(8, X_DIM)
    first = ais(linear_vae, x, num_steps=10, num_chains=4, leapfrog_steps=3)
    again = ais(linear_vae, x, num_steps=10, num_chains=4, leapfrog_steps=3, step_size=first.step_sizes)
    assert torch.equal(again.step_sizes, first.step_sizes) and torch.equal(again.step_size, first.step_sizes[-1])
    with pytest.raises(ValueError, match="step_sizes"):
        ais(linear_vae, x, num_steps=5, num_chains=4, step_size=first.step_sizes)


def test_results_carry_no_autograd_history_and_parameters_no_grad(linear_vae):
    x = torch.randn(8, X_DIM)
    result = ais(linear_vae, x, num_steps=5, num_chains=3, leapfrog_steps=2)
    sandwich = bdmc(linear_vae, 4, num_steps=5, num_chains=2, leapfrog_steps=2)
    tensors = list(vars(result).values()) + [sandwich.lower, sandwich.upper, sandwich.reverse_log_weights]
    assert not any(t.requires_grad for t in tensors)
    assert all(p.grad is None for p in linear_vae.parameters())


@pytest.mark.parametrize("part, name", [("prior", n) for n in PRIORS.names()]
                         + [("guide", n) for n in GUIDES.names() if n != "conv"]
                         + [("likelihood", n) for n in LIKELIHOODS.names()])
def test_every_registered_component_runs(part, name):
    """The target is built from the components: every prior, guide and likelihood gives finite estimates."""
    cfg = {"model": {"latent_dim": 2, "decoder": {"hidden": [8]}}, "guide": {"hidden": [8]}}
    (cfg["guide"] if part == "guide" else cfg["model"]).update({part: {"name": name}} if part != "guide"
                                                               else {"name": name})
    vae = build_vae(validate_config(cfg), x_dim=4)
    x = torch.bernoulli(torch.full((6, 4), 0.5))
    for initial in ("encoder", "prior"):
        result = ais(vae, x, num_steps=4, num_chains=3, leapfrog_steps=2, initial=initial)
        assert result.log_px.shape == (6,) and bool(torch.isfinite(result.log_px).all()), (initial, result.log_px)
    assert bool(torch.isfinite(bdmc(vae, 3, num_steps=4, num_chains=2, leapfrog_steps=2).gap).all())


@pytest.mark.parametrize("kwargs, match", [({"initial": "posterior"}, "initial"), ({"schedule": "cosine"}, "schedule"),
                                           ({"num_steps": 0}, "num_steps"), ({"num_chains": 0}, "num_chains"),
                                           ({"leapfrog_steps": 0}, "leapfrog_steps"),
                                           ({"chunk_chains": 0}, "chunk_chains")])
def test_bad_arguments_are_config_errors(linear_vae, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        ais(linear_vae, torch.randn(3, X_DIM), **kwargs)


def test_x_of_the_wrong_shape_is_refused(linear_vae):
    with pytest.raises(ValueError, match=r"want \(N, 5\)"):
        ais(linear_vae, torch.randn(3, X_DIM + 1))
