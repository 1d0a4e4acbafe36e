"""The KL switch: analytic and Monte Carlo ELBOs agree, and the per-site report says which was used."""

import math

import pyro
import pytest
import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.bounds import log_weights
from pyro_vae.inference.score_function import NonReparameterized, ScoreFunctionELBO, score_function_guide
from pyro_vae.inference.renyi import RenyiBound, renyi_bound
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.inference.kl import analytic_kl, kl_report


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


def test_analytic_kl_reductions_are_the_same_closed_form():
    """``all`` / ``event`` / ``none``: the total, the per-point and the per-coordinate KL of one closed form; None
    for every reduction of a pair without one (the one test every caller asks)."""
    import pyro.distributions as dist
    from torch.distributions import kl_divergence

    q = dist.Normal(torch.randn(4, 3), torch.rand(4, 3) + 0.5).to_event(1)
    p = dist.Normal(torch.zeros(3), torch.ones(3)).to_event(1)
    per_dim = kl_divergence(q.base_dist, p.base_dist)  # (4, 3)
    torch.testing.assert_close(analytic_kl(q, p, reduce="none"), per_dim)
    torch.testing.assert_close(analytic_kl(q, p, reduce="event"), kl_divergence(q, p.expand((4,))))
    assert analytic_kl(q, p).shape == () and torch.equal(analytic_kl(q, p), per_dim.sum())
    full = dist.MultivariateNormal(torch.randn(4, 3), scale_tril=torch.diag_embed(torch.rand(4, 3) + 0.5))
    assert analytic_kl(full, full, reduce="event").shape == (4,) == analytic_kl(full, full, reduce="none").shape
    t = dist.StudentT(torch.full((3,), 3.0), torch.zeros(3), torch.ones(3)).to_event(1)
    assert all(analytic_kl(q, t, reduce=r) is None for r in ("all", "event", "none"))
    with pytest.raises(ValueError, match="reduce='mean'"):
        analytic_kl(q, p, reduce="mean")


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


# -- objectives: IWAE, Renyi and the score-function estimator ------------------------------------
def _vae(inference=None, latent_dim=2, x_dim=5):
    cfg = validate_config({"model": {"latent_dim": latent_dim, "decoder": {"hidden": [8]}},
                           "guide": {"hidden": [8]}, "inference": inference or {}})
    return cfg, build_vae(cfg, x_dim)


def test_objective_registry_builds_each_combination():
    for inference, cls in [({}, pyro.infer.TraceMeanField_ELBO), ({"kl": "monte_carlo"}, pyro.infer.Trace_ELBO),
                           ({"objective": "iwae", "num_particles": 5}, RenyiBound),
                           ({"objective": "renyi", "alpha": 0.5, "num_particles": 3}, RenyiBound),
                           ({"estimator": "score_function"}, ScoreFunctionELBO)]:
        cfg, _ = _vae(inference)
        assert type(build_elbo(cfg.inference)) is cls, inference


def test_objectives_without_closed_form_kl_use_monte_carlo_and_say_so():
    for inference in ({"objective": "iwae"}, {"objective": "renyi", "alpha": 0.5}, {"estimator": "score_function"}):
        cfg, vae = _vae(inference)
        assert cfg.inference.kl == "monte_carlo"
        assert kl_report(vae.model, vae.guide, torch.rand(3, 5), cfg.inference.kl) == {"z": "monte_carlo"}


@pytest.mark.parametrize("inference, message", [
    ({"objective": "iwae", "kl": "analytic"}, "inference.kl"),
    ({"objective": "renyi", "alpha": 1.0}, "inference.alpha"),
    ({"objective": "iwae", "estimator": "score_function"}, "inference.estimator"),
    ({"objective": "vimco"}, "inference.objective"),
])
def test_inconsistent_objectives_are_one_line_config_errors(inference, message):
    with pytest.raises(ConfigError) as err:
        validate_config({"inference": inference})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_iwae_loss_is_the_log_mean_weight_of_the_same_draws():
    """RenyiBound(alpha=0) at a fixed seed equals logsumexp - log K of log weights computed from Pyro's traces."""
    cfg, vae = _vae({"objective": "iwae", "num_particles": 7})
    x = torch.rand(4, 5)
    pyro.set_rng_seed(11)
    loss = build_elbo(cfg.inference).differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(11)
    with torch.no_grad():
        log_w = log_weights(vae.model, vae.guide, x, 7)  # (K, batch)
    expected = (torch.logsumexp(log_w, 0) - math.log(7)).sum()
    assert torch.allclose(-loss.detach(), expected, rtol=1e-5)


def test_renyi_bound_is_the_log_mean_of_powered_weights():
    """(1 / (1 - alpha)) log (1/K) sum_k w_k^(1 - alpha), computed here without the log-sum-exp (float64, small weights)."""
    log_w = torch.randn(6, 3, dtype=torch.float64)
    for alpha in (0.0, 0.5, -1.0):
        want = torch.log(torch.exp((1 - alpha) * log_w).mean(0)) / (1 - alpha)
        torch.testing.assert_close(renyi_bound(log_w, alpha), want)
    torch.testing.assert_close(renyi_bound(log_w, 0.0), torch.logsumexp(log_w, 0) - math.log(6))


def test_renyi_bounds_are_ordered_in_alpha():
    """L_alpha is non-increasing in alpha on the same draws: IWAE (0) >= Renyi(0.5) >= ELBO (mean log w)."""
    _, vae = _vae()
    x = torch.rand(6, 5)
    values = []
    for inference in ({"objective": "iwae", "num_particles": 20}, {"objective": "renyi", "alpha": 0.5, "num_particles": 20},
                      {"kl": "monte_carlo", "num_particles": 20}):
        cfg = validate_config({"inference": inference})
        pyro.set_rng_seed(5)
        with torch.no_grad():
            values.append(-float(build_elbo(cfg.inference).differentiable_loss(vae.model, vae.guide, x)))
    assert values[0] >= values[1] >= values[2]


def test_score_function_guide_is_not_reparameterized_and_has_the_same_density():
    _, vae = _vae()
    x = torch.rand(3, 5)
    trace = pyro.poutine.trace(score_function_guide(vae.guide)).get_trace(x)
    site = trace.nodes["z"]
    assert isinstance(site["fn"], NonReparameterized) and not site["fn"].has_rsample
    assert not site["value"].requires_grad  # no pathwise gradient can flow through z
    assert torch.allclose(site["fn"].log_prob(site["value"]), vae.encoder(x).log_prob(site["value"]))


def _gradients(vae, elbo, x, n):
    """``n`` flattened per-point gradients of the loss w.r.t. the encoder parameters, ``(n, num_params)``."""
    draws = []
    for _ in range(n):
        vae.zero_grad(set_to_none=True)
        (elbo.differentiable_loss(vae.model, vae.guide, x) / len(x)).backward()
        draws.append(torch.cat([p.grad.reshape(-1) for p in vae.encoder.parameters()]))
    return torch.stack(draws).double()


def test_score_function_gradient_is_unbiased_with_larger_variance_than_reparam():
    """Same batch, same parameters: both estimate the same gradient (means agree within 5 SE per
    coordinate, on average), and the score function's variance (trace of covariance) is larger."""
    cfg, vae = _vae({"kl": "monte_carlo"}, latent_dim=2, x_dim=4)
    x = torch.rand(8, 4)
    pyro.set_rng_seed(2)
    reparam = _gradients(vae, build_elbo(cfg.inference), x, 300)
    score = _gradients(vae, build_elbo(validate_config({"inference": {"estimator": "score_function"}}).inference), x, 300)
    assert score.var(0).sum() > 3 * reparam.var(0).sum()
    se = (score.var(0) / len(score) + reparam.var(0) / len(reparam)).sqrt()
    z = (score.mean(0) - reparam.mean(0)) / se
    assert float(z.abs().max()) < 5.0
    assert abs(float(z.pow(2).mean()) - 1.0) < 0.6  # chi-square per coordinate: mean 1 if unbiased


def test_trainer_loss_value_is_the_bound_for_score_function():
    """The straight-through loss reports the ELBO's value, not TraceGraph's surrogate's."""
    cfg, vae = _vae({"kl": "monte_carlo"})
    x = torch.rand(5, 5)
    pyro.set_rng_seed(4)
    mc = float(build_elbo(cfg.inference).differentiable_loss(vae.model, vae.guide, x).detach())
    pyro.set_rng_seed(4)
    sf = float(build_elbo(validate_config({"inference": {"estimator": "score_function"}}).inference)
               .differentiable_loss(vae.model, vae.guide, x).detach())
    assert abs(mc - sf) < 1e-4 * abs(mc)


@pytest.mark.parametrize("inference", [{"objective": "iwae", "num_particles": 3}, {"estimator": "score_function"}])
def test_trainer_runs_each_objective_and_reports_its_kl(tmp_path, inference):
    from pyro_vae.runs.run import train_run

    cfg = validate_config({"data": {"name": "synthetic", "n": 60, "x_dim": 3}, "model": {"decoder": {"hidden": [4]}},
                           "guide": {"hidden": [4]}, "inference": inference, "train": {"epochs": 1, "batch_size": 16}})
    run = train_run(cfg, tmp_path / "run", progress=False)
    assert run.summary["kl"] == {"z": "monte_carlo"}
    assert math.isfinite(run.summary["train_elbo"]) and math.isfinite(run.summary["val_elbo"])
