"""Evaluation against closed forms: on a linear-Gaussian model log p(x) and p(z|x) are known exactly."""

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer.importance import vectorized_importance_weights

from pyro_vae import build_vae, validate_config
from pyro_vae.evaluation.bounds import elbo_terms, log_weights
from pyro_vae.evaluation.evaluate import ACTIVE_UNIT_THRESHOLD, evaluate_points, kl_per_dimension
from pyro_vae.evaluation.gradients import gradient_variance
from pyro_vae.evaluation import evaluate as evaluate_module
from pyro_vae.evaluation import iwae as iwae_module
from pyro_vae.baselines import ppca
from pyro_vae.evaluation.iwae import chunk_size, fused_iwae, iwae, proposal_iwae, stock_vae
from pyro_vae.evaluation.linear_gaussian import (exact_log_likelihood, is_linear_gaussian, linear_gaussian, marginal,
                                                 posterior, posterior_distribution)
from pyro_vae.data import load_data
from pyro_vae.errors import ConfigError
from pyro_vae.inference.objectives import build_elbo

from conftest import TINY, run_cli

LINEAR = {"data": {"name": "synthetic", "x_dim": 6, "latent_dim": 2, "noise": 0.5, "n": 400},
          "model": {"latent_dim": 2, "decoder": "linear", "likelihood": {"name": "normal", "scale": 0.5}},
          "guide": {"hidden": [16]}}


def linear_vae(train_steps=0):
    """A PPCA VAE whose decoder is the data's true (W, b, sigma); the encoder optionally fitted by SVI."""
    cfg = validate_config(LINEAR)
    data = load_data(cfg.data, cfg.seed)
    vae = build_vae(cfg, data.x_dim)
    with torch.no_grad():
        vae.decoder.linear.weight.copy_(data.truth["W"])
        vae.decoder.linear.bias.copy_(data.truth["b"])
    opt = torch.optim.Adam(vae.encoder.parameters(), lr=0.03)
    elbo = build_elbo(cfg.inference)
    for step in range(train_steps):
        xb = data.train[torch.randint(len(data.train), (64,))]
        opt.zero_grad()
        (elbo.differentiable_loss(vae.model, vae.guide, xb) / 64).backward()
        opt.step()
    vae.eval()
    return vae, data


@pytest.fixture(scope="module")
def trained():
    pyro.set_rng_seed(0)
    return linear_vae(train_steps=200)


def test_per_point_log_weights_match_pyros_importance_weights():
    """Summed over the data plate, our per-point log w equals Pyro's vectorized_importance_weights."""
    vae, data = linear_vae()
    x = data.test[:5]
    pyro.set_rng_seed(3)
    ours = log_weights(vae.model, vae.guide, x, 4)  # (4, 5)
    pyro.set_rng_seed(3)
    theirs, _, _ = vectorized_importance_weights(vae.model, vae.guide, x, num_samples=4, max_plate_nesting=1)
    assert ours.shape == (4, 5)
    assert torch.allclose(ours.sum(-1), theirs, rtol=1e-5, atol=1e-4)


def test_linear_gaussian_marginal_and_posterior_satisfy_bayes_rule():
    """log p(x) = log p(x|z) + log p(z) - log p(z|x) for every z: checks the closed forms against each other."""
    vae, data = linear_vae()
    W, b, sigma2 = linear_gaussian(vae)
    x = data.test[:7]
    z = torch.randn(7, 2) * 2
    lhs = marginal(W, b, sigma2).log_prob(x)
    rhs = (vae.likelihood(vae.decoder(z)).log_prob(x) + vae.prior().log_prob(z)
           - posterior_distribution(W, b, sigma2, x).log_prob(z))
    assert torch.allclose(lhs, rhs.detach(), atol=1e-4)


def test_non_linear_models_have_no_exact_likelihood():
    assert linear_gaussian(build_vae(validate_config({}), 5)) is None
    cfg = {**LINEAR, "model": {**LINEAR["model"], "prior": "laplace"}}
    assert linear_gaussian(build_vae(validate_config(cfg), 6)) is None


@pytest.mark.parametrize("model,expected", [
    (LINEAR["model"], True),
    ({**LINEAR["model"], "likelihood": {"name": "normal", "learn_scale": "per_feature"}}, True),
    ({"latent_dim": 2}, False),
    ({**LINEAR["model"], "prior": "laplace"}, False),
    ({**LINEAR["model"], "likelihood": "bernoulli"}, False),
    ({**LINEAR["model"], "decoder": "mlp"}, False),
])
def test_is_linear_gaussian_says_the_same_of_a_config_and_of_the_vae_built_from_it(model, expected):
    cfg = validate_config({"model": model})
    vae = build_vae(cfg, 6)
    assert is_linear_gaussian(cfg.model) is expected and is_linear_gaussian(vae) is expected
    if expected:  # a prior moved off N(0, I) (a loaded state dict could) is no longer the model of the closed forms
        with torch.no_grad():
            vae.prior.loc.fill_(0.5)
        assert not is_linear_gaussian(vae) and linear_gaussian(vae) is None


def test_one_exact_evaluator_for_the_vae_and_the_ppca_baseline():
    """The VAE's exact log p(x), pPCA's float64 log-likelihood and posterior, and the posterior distribution
    are one computation: the same numbers from the same (W, b, sigma^2)."""
    vae, data = linear_vae()
    x = data.test
    W, b, noise_var = linear_gaussian(vae, torch.float64)
    assert W.dtype == b.dtype == noise_var.dtype == torch.float64 and noise_var.shape == (6,)
    exact = exact_log_likelihood(vae, x)
    assert exact == ppca.log_likelihood(x, W, b, noise_var)
    assert exact == pytest.approx(float(marginal(*linear_gaussian(vae)).log_prob(x).mean()), abs=1e-4)
    A, b64, G = ppca.posterior(W.float(), b.float(), noise_var)  # float32 W and b in, float64 out
    assert A.dtype == G.dtype == torch.float64 and A.shape == (2, 6) and G.shape == (2, 2)
    torch.testing.assert_close((A, b64, G), posterior(W, b, noise_var))
    post = posterior_distribution(W, b, noise_var, x.double())
    torch.testing.assert_close(post.mean, (x.double() - b) @ A.T)
    torch.testing.assert_close(post.covariance_matrix[0], G)
    with pytest.raises(ValueError, match="not a linear-Gaussian model"):
        exact_log_likelihood(build_vae(validate_config({}), 6), x)


def test_iwae_approaches_exact_log_likelihood_as_k_grows(trained):
    vae, data = trained
    x = data.test
    exact = marginal(*linear_gaussian(vae)).log_prob(x)
    gaps = {}
    with torch.no_grad():
        for k in (1, 10, 1000):
            diff = exact - iwae(vae.model, vae.guide, x, k)
            gaps[k] = (float(diff.mean()), float(diff.std() / math.sqrt(len(diff))))
    assert gaps[1][0] > gaps[10][0] > gaps[1000][0]
    mean, se = gaps[1000]
    assert abs(mean) < 4 * se + 1e-3, gaps


def test_iwae_is_chunked_with_a_running_logsumexp(monkeypatch):
    """Chunks of 3 particles give exactly the log-mean-exp of the same draws taken in one list."""
    vae, data = linear_vae()
    x = data.test[:4]
    monkeypatch.setattr(iwae_module, "CHUNK_ELEMENTS", 3 * 4 * 6)
    assert chunk_size(4, 6) == 3
    pyro.set_rng_seed(9)
    with torch.no_grad():
        chunked = iwae(vae.model, vae.guide, x, 10, width=6)
        pyro.set_rng_seed(9)
        log_w = torch.cat([log_weights(vae.model, vae.guide, x, k) for k in (3, 3, 3, 1)])
    assert torch.allclose(chunked, torch.logsumexp(log_w, 0) - math.log(10), atol=1e-5)


@pytest.mark.parametrize("train_steps", [0, 200])
def test_identity_log_p_equals_elbo_plus_kl_to_posterior(train_steps, request):
    """log p(x) - ELBO - KL(q || p(z|x)) is zero up to the Monte Carlo error of the ELBO, trained or not."""
    vae, data = request.getfixturevalue("trained") if train_steps else linear_vae()
    pyro.set_rng_seed(1)
    with torch.no_grad():
        out = evaluate_points(vae, data.test, samples=100)
    assert out["log_likelihood"]["exact"] and out["kl_to_true_posterior"]["exact"]
    r = out["identity_residual"]
    assert abs(r["mean"]) < 4 * r["se"]
    assert out["iwae"]["mean"] >= out["elbo"]["mean"]
    assert out["kl_to_true_posterior"]["mean"] > 0
    if train_steps == 0:  # an untrained encoder is far from the posterior
        assert out["kl_to_true_posterior"]["mean"] > 1.0


def test_analytic_and_monte_carlo_elbo_agree_per_point(trained):
    vae, data = trained
    with torch.no_grad():
        analytic, used = elbo_terms(vae.model, vae.guide, data.test, 64, "analytic")
        mc, used_mc = elbo_terms(vae.model, vae.guide, data.test, 64, "monte_carlo")
    assert (used, used_mc) == ("analytic", "monte_carlo")
    diff = analytic - mc
    assert abs(float(diff.mean())) < 4 * float(diff.std() / math.sqrt(len(diff)))
    assert float((analytic - mc).abs().max()) < 1.0


def test_kl_per_dimension_and_active_units():
    """Zeroing the encoder's mean for latent 1 makes it inactive; per-dimension KLs sum to the total KL."""
    vae, data = linear_vae()
    with torch.no_grad():
        vae.encoder.loc_head.weight[1].zero_()
        out = evaluate_points(vae, data.test, samples=10)
        q, p = vae.encoder(data.test), vae.prior()
        total = torch.distributions.kl_divergence(q, p).mean()
    assert out["active_units"] == 1 and out["latent_dim"] == 2
    assert out["posterior_mean_variance"][1] < 1e-10 < ACTIVE_UNIT_THRESHOLD < out["posterior_mean_variance"][0]
    assert abs(sum(out["kl_per_dimension"]) - float(total)) < 1e-4


def test_kl_per_dimension_monte_carlo_matches_quadrature():
    """Student-t prior (no closed-form KL): the Monte Carlo per-dimension KL agrees with numerical integration."""
    q = dist.Normal(torch.tensor([[0.3, -1.0]]), torch.tensor([[0.5, 2.0]])).to_event(1)
    p = dist.StudentT(torch.full((2,), 3.0), torch.zeros(2), torch.ones(2)).to_event(1)
    pyro.set_rng_seed(0)
    mc = kl_per_dimension(q, p, num_samples=20000)[0]
    for d in range(2):
        qd = torch.distributions.Normal(q.base_dist.loc[0, d].double(), q.base_dist.scale[0, d].double())
        pd = torch.distributions.StudentT(torch.tensor(3.0, dtype=torch.float64), 0.0, 1.0)
        z = torch.linspace(float(qd.loc - 12 * qd.scale), float(qd.loc + 12 * qd.scale), 40001, dtype=torch.float64)
        integrand = qd.log_prob(z).exp() * (qd.log_prob(z) - pd.log_prob(z))
        exact = float(torch.trapezoid(integrand, z))
        assert abs(float(mc[d]) - exact) < 0.04, (d, float(mc[d]), exact)


def test_gaps_match_the_best_mean_field_gaussian_in_closed_form(trained):
    """For PPCA the best mean-field q has mean m and variances 1/Lambda_dd (Lambda = posterior precision),
    so the approximation gap is KL = (sum_d log Lambda_dd - log det Lambda) / 2 per point."""
    vae, data = trained
    x = data.test[:40]
    W, b, sigma2 = linear_gaussian(vae)
    precision = torch.eye(2) + W.T @ (W / sigma2[:, None])
    expected = 0.5 * float(precision.diagonal().log().sum() - torch.logdet(precision))
    pyro.set_rng_seed(2)
    with torch.no_grad():
        out = evaluate_points(vae, x, samples=10, gaps=True, gap_steps=400)
    g = out["gaps"]
    assert g["approximation_gap"]["log_p"] == "exact"
    assert abs(g["approximation_gap"]["mean"] - expected) < 4 * g["approximation_gap"]["se"] + 0.02
    assert g["amortization_gap"]["mean"] > -4 * g["amortization_gap"]["se"]
    assert g["optimal_elbo"]["mean"] <= out["log_likelihood"]["mean"] + 4 * g["optimal_elbo"]["se"]


def test_gradient_variance_is_larger_for_the_score_function(trained):
    vae, data = trained
    x = data.train[:16]
    cfg = validate_config({**LINEAR, "inference": {"kl": "monte_carlo"}})
    sf = validate_config({**LINEAR, "inference": {"estimator": "score_function"}})
    reparam = gradient_variance(vae, build_elbo(cfg.inference), x, 40)
    score = gradient_variance(vae, build_elbo(sf.inference), x, 40)
    assert score["encoder"] > reparam["encoder"] > 0
    assert reparam["decoder"] > 0 and score["decoder"] > 0
    assert all(p.grad is None for p in vae.parameters())


def test_evaluate_cli_writes_evaluation_json(tmp_path):
    run = tmp_path / "run"
    assert run_cli("train", "--out", run, "--set", "train.epochs=1", *TINY[2:]).returncode == 0
    res = run_cli("evaluate", run, "--samples", "20", "--no-progress", "--gaps", "--gap-steps", "5")
    assert res.returncode == 0, res.stderr
    import json

    out = json.loads((run / "evaluation.json").read_text())
    for key in ("elbo", "elbo_monte_carlo", "iwae", "kl_to_true_posterior"):
        assert set(out[key]) >= {"mean", "se"}, key
    assert out["log_likelihood"] is None and out["kl_to_true_posterior"]["exact"] is False
    assert out["iwae"]["samples"] == 20 and out["split"] == "test" and out["gaps"]["steps"] == 5
    assert "iwae" in res.stdout and "active units" in res.stdout
    for key in ("elbo", "elbo_monte_carlo", "iwae"):
        assert out[key]["mc_se"] >= 0, key
    assert set(out["paired"]) == {"iwae_minus_elbo"}  # no exact log p(x): only the difference of two estimates
    assert set(out["paired"]["iwae_minus_elbo"]) == {"mean", "se", "mc_se"}
    assert set(out["error_bars"]) == {"se", "mc_se", "paired"}
    assert "over the test points" in res.stdout and "[mc +-" in res.stdout
    assert "paired differences (same points)" in res.stdout and "iwae - elbo" in res.stdout


def test_evaluate_cli_bad_dir_is_one_line_error(tmp_path):
    res = run_cli("evaluate", tmp_path / "missing")
    assert res.returncode == 2
    assert res.stderr.startswith("pyro-vae: error:") and len(res.stderr.strip().splitlines()) == 1



# -- the two error bars: over test points (se) and Monte Carlo (mc_se); paired differences ----------
PCA = {"model": {"latent_dim": 2, "decoder": "linear", "likelihood": {"scale": 0.7, "learn_scale": "global"}},
       "guide": {"hidden": []}}
REPEATS = 20  # evaluations with different seeds on the same points, for the empirical Monte Carlo spread


def pca_vae(posterior_scale=None):
    """The linear-Gaussian VAE of ``PCA`` (x_dim 5, untrained) and 60 points. With ``posterior_scale`` c the
    (linear) encoder is moved to the exact posterior mean with scales c * the posterior's marginal sds:
    a proposal close to p(z|x), where IWAE's log weights are light-tailed."""
    torch.manual_seed(0)
    vae = build_vae(validate_config(PCA), 5).eval()
    if posterior_scale is not None:
        from pyro_vae.components.networks import MIN_SCALE

        A, b, G = posterior(*linear_gaussian(vae))
        with torch.no_grad():
            vae.encoder.loc_head.weight.copy_(A)
            vae.encoder.loc_head.bias.copy_(-A @ b)
            vae.encoder.scale_head.weight.zero_()
            vae.encoder.scale_head.bias.copy_(torch.expm1(posterior_scale * G.diagonal().sqrt() - MIN_SCALE).log())
    x = 1.5 * torch.randn(60, 5, generator=torch.Generator().manual_seed(1))
    return vae, x


def test_paired_exact_minus_elbo_is_the_kl_to_the_posterior_within_monte_carlo_error():
    """log p(x) - ELBO = KL(q(z|x) || p(z|x)) per point: the paired difference's mean is the closed-form KL's
    up to the ELBO's Monte Carlo error (mc_se, not se: the points are the same), and IWAE <= log p(x)."""
    vae, x = pca_vae()
    pyro.set_rng_seed(0)
    with torch.no_grad():
        out = evaluate_points(vae, x, samples=100)
    paired, kl = out["paired"], out["kl_to_true_posterior"]
    assert set(paired) == {"iwae_minus_elbo", "exact_minus_iwae", "exact_minus_elbo"}
    assert all(set(v) == {"mean", "se", "mc_se"} for v in paired.values())
    assert out["log_likelihood"]["mc_se"] == 0 and kl["exact"] and kl["mc_se"] == 0 and kl["mean"] > 1.0
    diff = paired["exact_minus_elbo"]
    assert diff["mc_se"] == out["elbo"]["mc_se"] > 0
    assert abs(diff["mean"] - kl["mean"]) < 4 * diff["mc_se"], (diff, kl)
    assert paired["exact_minus_iwae"]["mean"] >= -4 * paired["exact_minus_iwae"]["mc_se"]
    assert paired["exact_minus_iwae"]["mc_se"] == out["iwae"]["mc_se"] > 0
    assert paired["iwae_minus_elbo"]["mean"] == pytest.approx(out["iwae"]["mean"] - out["elbo"]["mean"], abs=1e-5)
    assert "test points" in out["error_bars"]["se"] and "Monte Carlo" in out["error_bars"]["mc_se"]


def _spread_over_seeds(vae, x, keys, samples):
    """sd of the R means of each estimate over seeds, and the mean reported mc_se."""
    means = {k: [] for k in keys}
    reported = {k: [] for k in keys}
    for seed in range(REPEATS):
        pyro.set_rng_seed(100 + seed)
        with torch.no_grad():
            out = evaluate_points(vae, x, samples=samples)
        for k in keys:
            means[k].append(out[k]["mean"])
            reported[k].append(out[k]["mc_se"])
    return {k: (float(torch.tensor(means[k], dtype=torch.float64).std()), sum(reported[k]) / REPEATS) for k in keys}


def _sd_band():
    """sd from R values over the true sd: sqrt(chi2_{R-1} / (R-1)), its two-sided 99.9% range, widened by 10% for
    the error of the reported mc_se itself (estimated from 60 points' particle spreads)."""
    from scipy.stats import chi2

    low, high = (math.sqrt(chi2.ppf(p, REPEATS - 1) / (REPEATS - 1)) for p in (0.0005, 0.9995))
    return 0.9 * low, 1.1 * high  # ~0.46 .. 1.71


@pytest.mark.parametrize("posterior_scale,keys", [
    (None, ("elbo", "elbo_monte_carlo")),  # the ELBO's mc_se holds whatever q: it is a plain mean of S draws
    (1.2, ("iwae",)),  # the delta method needs light-tailed weights: q close to p(z|x)
])
def test_monte_carlo_se_matches_the_spread_over_seeds(posterior_scale, keys):
    """The reported mc_se against the sd of the means of 20 evaluations with other seeds on the same points:
    ELBO with 16 particles (particle variance / S), IWAE with K = 10 (delta method)."""
    vae, x = pca_vae(posterior_scale)
    low, high = _sd_band()
    for key, (empirical, reported) in _spread_over_seeds(vae, x, keys, samples=10).items():
        assert reported > 0 and low < empirical / reported < high, (key, empirical, reported)


def test_pairing_shrinks_the_standard_error():
    """log p(x) and the ELBO move together across points: the se of their per-point difference is far below the
    unpaired sqrt(se_a^2 + se_b^2), which would hide a clearly nonzero difference."""
    vae, x = pca_vae(posterior_scale=1.5)  # KL(q || p(z|x)) ~ 0.5 nats a point
    pyro.set_rng_seed(0)
    with torch.no_grad():
        out = evaluate_points(vae, x, samples=10)
    diff, a, b = out["paired"]["exact_minus_elbo"], out["log_likelihood"], out["elbo"]
    unpaired = math.hypot(a["se"], b["se"])
    assert diff["se"] < 0.2 * unpaired, (diff, unpaired)
    assert diff["mean"] > 4 * diff["se"] and diff["mean"] < 2 * unpaired  # clear paired, lost in the unpaired


@pytest.mark.parametrize("traced", [False, True])
def test_iwae_with_variance_takes_iwaes_draws_and_the_delta_method_of_them(traced, monkeypatch):
    """Same seed, same per-point bound as ``iwae`` (fused path, and the traced one a custom guide takes), in
    chunks; the variance is (K sum_k w~_k^2 - 1) / (K - 1) of those draws' normalized weights."""
    vae, x = pca_vae()
    monkeypatch.setattr(iwae_module, "CHUNK_ELEMENTS", 3 * 60 * 5)
    monkeypatch.setattr(iwae_module, "TRACED_CHUNK_ELEMENTS", 3 * 60 * 5)
    guide = vae.guide
    if traced:
        def guide(x_):
            with pyro.plate("data", x_.shape[0]):
                return pyro.sample("z", dist.Normal(torch.zeros(60, 2), 1.0).to_event(1))
    with torch.no_grad():
        pyro.set_rng_seed(4)
        bound, var = evaluate_module.iwae_with_variance(vae.model, guide, x, 10, width=5)
        pyro.set_rng_seed(4)
        want = iwae(vae.model, guide, x, 10, width=5)
        pyro.set_rng_seed(4)
        log_w = torch.cat([log_weights(vae.model, guide, x, k) for k in (3, 3, 3, 1)]).double()
    assert torch.equal(bound, want)
    w = torch.softmax(log_w, 0)
    torch.testing.assert_close(var, (10 * (w ** 2).sum(0) - 1) / 9, rtol=1e-4, atol=1e-7)
    with torch.no_grad():
        assert torch.isnan(evaluate_module.iwae_with_variance(vae.model, guide, x, 1, width=5)[1]).all()


# -- the fused IWAE path against the traced one (its oracle) ----------------------------------------
COMBOS = [  # prior, guide, likelihood: closed-form and Monte Carlo pairs, a mixture, flows, learned scales
    ("normal", "mean_field", {"name": "bernoulli"}),
    ("mixture", "flow", {"name": "normal", "learn_scale": "per_feature"}),
    ("vamp", "full_rank", {"name": "laplace", "learn_scale": "global"}),
    ("student_t", "student_t", {"name": "continuous_bernoulli"}),
    ("flow", "low_rank", {"name": "student_t", "learn_scale": "global"}),
]


def small_vae(prior="normal", guide="mean_field", likelihood=None, x_dim=6):
    """A tiny VAE of the named components with its learned likelihood scale moved off its initial value,
    and data it accepts: binary for bernoulli, grey values in [0, 1] otherwise."""
    likelihood = likelihood or {"name": "bernoulli"}
    cfg = validate_config({"model": {"latent_dim": 2, "prior": prior, "likelihood": likelihood,
                                     "decoder": {"hidden": [8]}}, "guide": {"name": guide, "hidden": [8]}})
    vae = build_vae(cfg, x_dim)
    with torch.no_grad():
        for p in vae.likelihood.parameters():
            p.add_(0.3 * torch.randn_like(p))
    x = torch.rand(5, x_dim, generator=torch.Generator().manual_seed(4))
    return vae.eval(), (torch.bernoulli(x) if likelihood["name"] == "bernoulli" else x)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the calls ``evaluate.iwae`` makes to the fused path."""
    calls = []
    real = fused_iwae
    monkeypatch.setattr(iwae_module, "fused_iwae", lambda *a, **k: calls.append(a) or real(*a, **k))
    return calls


@pytest.mark.parametrize("prior,guide,likelihood", COMBOS)
def test_fused_iwae_gives_the_traced_per_point_values(prior, guide, likelihood, monkeypatch, fused_calls):
    """Same seed, same chunks (7, 7, 7, 7, 2 particles): the fused path (encoder once, in-place decoder,
    closed-form likelihood) and Pyro's traced weights draw the same z and give the same IWAE per point."""
    vae, x = small_vae(prior, guide, likelihood)
    monkeypatch.setattr(iwae_module, "CHUNK_ELEMENTS", 7 * 5 * 6)
    monkeypatch.setattr(iwae_module, "TRACED_CHUNK_ELEMENTS", 7 * 5 * 6)
    with torch.no_grad():
        pyro.set_rng_seed(8)
        fused = iwae(vae.model, vae.guide, x, 30)
        state = torch.get_rng_state()
        pyro.set_rng_seed(8)
        traced = iwae(vae.model, vae.guide, x, 30, engine="pyro")
    assert len(fused_calls) == 1, "auto did not take the fused path for a stock VAE"
    assert fused.shape == (5,) and torch.isfinite(fused).all()
    torch.testing.assert_close(fused, traced, rtol=1e-5, atol=1e-4)
    assert torch.equal(state, torch.get_rng_state()), "the paths consumed the random stream differently"


def test_fused_iwae_in_double_precision_matches_to_rounding():
    """In float64 the two paths agree to ~1e-12: what differs in float32 is rounding, not the estimator."""
    vae, x = small_vae("mixture", "mean_field", {"name": "normal", "learn_scale": "per_feature"})
    vae, x = vae.double(), x.double()
    with torch.no_grad():
        pyro.set_rng_seed(1)
        fused = iwae(vae.model, vae.guide, x, 20, engine="fused")
        pyro.set_rng_seed(1)
        traced = iwae(vae.model, vae.guide, x, 20, engine="pyro")
    assert fused.dtype == traced.dtype == torch.float64
    torch.testing.assert_close(fused, traced, rtol=1e-10, atol=1e-9)


def test_custom_guides_and_scaled_models_keep_the_traced_path(fused_calls):
    """A guide that is not the VAE's own (a refined one), or beta != 1, is traced; ``fused`` refuses them."""
    vae, x = small_vae()
    loc = torch.zeros(5, 2)

    def guide(x_):
        with pyro.plate("data", x_.shape[0]):
            return pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))

    with torch.no_grad():
        pyro.set_rng_seed(2)
        got = iwae(vae.model, guide, x, 10)
        pyro.set_rng_seed(2)
        want = torch.logsumexp(log_weights(vae.model, guide, x, 10), 0) - math.log(10)
        assert torch.equal(got, want) and not fused_calls
        with pytest.raises(ConfigError, match="iwae engine 'fused' does not cover"):
            iwae(vae.model, guide, x, 10, engine="fused")
        vae.kl_weight = 0.5
        assert stock_vae(vae.model, vae.guide) is None
        iwae(vae.model, vae.guide, x, 10)
        assert not fused_calls
        vae.kl_weight = 1.0
        assert stock_vae(vae.model, vae.guide) is vae
    with pytest.raises(ConfigError, match="iwae engine 'jax'"):
        iwae(vae.model, vae.guide, x, 10, engine="jax")


def test_proposal_iwae_is_the_log_mean_weight_of_its_own_draws():
    """With an explicit proposal q: log (1/K) sum_k p(z_k) p(x|z_k) / q(z_k), z_k ~ q, in chunks (4, 4, 2) of the same
    draws; with the encoder's q(z|x) it is the fused IWAE, draw for draw."""
    vae, x = small_vae("normal", "mean_field", {"name": "normal", "learn_scale": "global"})
    q = dist.Normal(0.3 * torch.randn(5, 2), torch.full((5, 2), 0.7)).to_event(1)
    with torch.no_grad():
        pyro.set_rng_seed(6)
        got = proposal_iwae(vae, q, x, 10, chunk=4)
        pyro.set_rng_seed(6)
        z = torch.cat([q.rsample((k,)) for k in (4, 4, 2)])  # (10, 5, 2)
        log_w = vae.prior().log_prob(z) + vae.likelihood(vae.decoder(z)).log_prob(x) - q.log_prob(z)
        torch.testing.assert_close(got, torch.logsumexp(log_w, 0) - math.log(10), rtol=1e-5, atol=1e-5)
        pyro.set_rng_seed(6)
        own = proposal_iwae(vae, vae.encoder(x), x, 10, chunk=4)
        pyro.set_rng_seed(6)
        assert torch.equal(own, fused_iwae(vae, x, 10, chunk=4))


def test_fused_iwae_advances_the_progress_bar_by_draws():
    class Bar:
        n = 0

        def update(self, k):
            self.n += k

    vae, x = small_vae()
    bar = Bar()
    with torch.no_grad():
        iwae(vae.model, vae.guide, x, 23, bar=bar)
    assert bar.n == 23 * 5
