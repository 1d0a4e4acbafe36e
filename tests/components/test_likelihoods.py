"""Likelihood densities against closed forms, learned scales against their MLEs (trained, initial), bad data refused."""

import math

import pytest
import torch

from pyro_vae import load_config
from pyro_vae.build import prepare
from pyro_vae.components.likelihoods import LIKELIHOODS, LocScaleLikelihood, StudentTLikelihood
from pyro_vae.components.networks import MIN_SCALE
from pyro_vae.errors import DataError


def build(name, x_dim, **params):
    return LIKELIHOODS.build(LIKELIHOODS.resolve({"name": name, **params}), x_dim)


def test_continuous_bernoulli_is_normalized_and_matches_its_closed_form():
    """p(x; lam) = C(lam) lam^x (1 - lam)^(1 - x), C(lam) = 2 atanh(1 - 2 lam) / (1 - 2 lam) (C(1/2) = 2)."""
    logits = torch.tensor([-4.0, -1.0, -1e-3, 0.0, 0.5, 3.0], dtype=torch.float64)
    lik = build("continuous_bernoulli", len(logits))
    cells = 20000
    x = ((torch.arange(cells, dtype=torch.float64) + 0.5) / cells)[:, None].expand(cells, len(logits))
    per_feature = lik(logits).base_dist.log_prob(x)  # (cells, features)
    assert torch.allclose(per_feature.exp().mean(0), torch.ones(len(logits), dtype=torch.float64), atol=1e-6)
    lam = torch.sigmoid(logits)
    away = (lam - 0.5).abs() > 1e-2  # the closed form is 0/0 at lam = 1/2, where C = 2
    log_c = torch.where(away, torch.log(2 * torch.atanh(1 - 2 * lam) / (1 - 2 * lam)), torch.tensor(math.log(2.0), dtype=torch.float64))
    expected = log_c + x * lam.log() + (1 - x) * (1 - lam).log()
    assert torch.allclose(per_feature, expected, atol=1e-3)
    # event shape (x_dim,): the features' log densities add up
    assert torch.allclose(lik(logits).log_prob(x), per_feature.sum(-1))


@pytest.mark.parametrize("name", ["continuous_bernoulli", "bernoulli"])
def test_bounded_likelihoods_refuse_data_outside_their_support(name):
    lik = build(name, 3)
    with pytest.raises(DataError, match=rf"^model.likelihood.name: '{name}' needs data in .* \[-0.5, 2\]"):
        lik.check_data(torch.tensor([[0.0, 0.5, 2.0], [-0.5, 1.0, 0.2]]), where="data 'x'")


def test_continuous_bernoulli_accepts_grey_levels():
    build("continuous_bernoulli", 3).check_data(torch.tensor([[0.0, 0.5, 1.0]]), where="data 'x'")


def test_continuous_bernoulli_on_unbounded_data_fails_before_training():
    cfg = load_config(None, ["data.name=synthetic", "model.likelihood.name=continuous_bernoulli"])
    with pytest.raises(DataError, match=r"^model.likelihood.name: 'continuous_bernoulli' needs data in \[0, 1\] but data 'synthetic'"):
        prepare(cfg)


@pytest.mark.parametrize("name,mle", [
    ("normal", lambda r: r.pow(2).mean(0).sqrt()),  # sigma_j = sqrt(mean r_j^2)
    ("laplace", lambda r: r.abs().mean(0)),  # b_j = mean |r_j|
])
def test_per_feature_scale_reaches_its_maximum_likelihood_estimate(name, mle):
    """With the location fixed, gradient ascent on sum log p(x|loc) must find the closed-form MLE of each scale."""
    torch.manual_seed(0)
    x_dim, n = 3, 500
    true_scale = torch.tensor([0.2, 1.0, 3.0])
    loc = torch.randn(n, x_dim)
    family = torch.distributions.Normal if name == "normal" else torch.distributions.Laplace
    x = family(loc, true_scale).sample()
    lik = build(name, x_dim, learn_scale="per_feature", scale=1.0)
    assert lik.log_scale.shape == (x_dim,)
    optimizer = torch.optim.Adam(lik.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        (-lik(loc).log_prob(x).sum() / n).backward()
        optimizer.step()
    assert torch.allclose(lik.scale.detach(), mle(x - loc), rtol=1e-3)


def test_student_t_likelihood_matches_its_closed_form():
    """log p(x_i|z) = lgamma((v+1)/2) - lgamma(v/2) - log(v pi)/2 - log s - (v+1)/2 log(1 + r_i^2 / (v s^2))."""
    df, scale = 3.0, 0.7
    loc, x = torch.randn(4, 5), 3 * torch.randn(4, 5)
    r2 = ((x - loc) / scale) ** 2
    per_feature = (math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi) - math.log(scale)
                   - (df + 1) / 2 * torch.log1p(r2 / df))
    assert torch.allclose(build("student_t", 5, df=df, scale=scale)(loc).log_prob(x), per_feature.sum(-1), atol=1e-4)


@pytest.mark.parametrize("name", ["laplace", "student_t"])
def test_global_learned_scale_is_one_parameter(name):
    lik = build(name, 4, learn_scale="global")
    assert [p.shape for p in lik.parameters()] == [torch.Size([])]
    assert lik(torch.zeros(2, 4)).event_shape == (4,)


# init_scale: a learned scale starts at the family's MLE for a decoder that predicts each feature's centre.
LOC_SCALE = ["normal", "laplace", "student_t"]
DF = 5.0  # the Student-t's df in these tests


def sample(name, loc, scale, n, seed):
    """``n`` rows of the family with per-feature ``loc`` and ``scale``."""
    torch.manual_seed(seed)
    family = {"normal": torch.distributions.Normal, "laplace": torch.distributions.Laplace,
              "student_t": lambda loc, scale: torch.distributions.StudentT(DF, loc, scale)}[name]
    return family(loc, scale).sample((n,))


def relative_se(name, m):
    """Standard error of the scale's MLE over ``m`` observations, relative to the scale: the inverse Fisher
    information of log scale, 1/2 (Normal), 1 (Laplace: |r| is Exponential with mean b) and (df + 3) / (2 df) (t)."""
    return math.sqrt({"normal": 0.5, "laplace": 1.0, "student_t": (DF + 3) / (2 * DF)}[name] / m)


def lik_with(name, x_dim, **params):
    return build(name, x_dim, **({"df": DF} if name == "student_t" else {}), **params)


@pytest.mark.parametrize("learn_scale", ["global", "per_feature"])
@pytest.mark.parametrize("name", LOC_SCALE)
def test_init_scale_recovers_the_scale_the_data_were_drawn_with(name, learn_scale):
    """Data of a known scale, far from 0 and the configured 0.1, with distinct feature locations: init_scale finds
    the scale within 4 standard errors of its MLE (m = n rows per feature, n * x_dim pooled)."""
    n = 4000
    loc = torch.tensor([-20.0, 0.0, 5.0, 40.0])
    # per feature: 8-fold apart, none below feature_floor (0.1) times their root mean square (3.5)
    true = torch.tensor([0.8, 1.5, 3.0, 6.0]) if learn_scale == "per_feature" else torch.full((4,), 2.5)
    lik = lik_with(name, 4, scale=0.1, learn_scale=learn_scale)
    lik.init_scale(sample(name, loc, true, n, seed=1))
    assert lik.log_scale.shape == ((4,) if learn_scale == "per_feature" else ())
    m = n if learn_scale == "per_feature" else n * 4
    expected = true if learn_scale == "per_feature" else true[0]
    assert torch.allclose(lik.scale.detach(), expected, rtol=4 * relative_se(name, m), atol=0)
    assert isinstance(lik.log_scale, torch.nn.Parameter)  # still the parameter the optimizer will train


def score_at_the_start(name, learn_scale, x):
    """d/d log sigma of sum log p(x | loc = each feature's centre, sigma) at init_scale's sigma."""
    lik = lik_with(name, x.shape[1], learn_scale=learn_scale)
    lik.init_scale(x)
    centre = x.median(0).values if name == "laplace" else x.mean(0)
    (grad,) = torch.autograd.grad(lik(centre.expand_as(x)).log_prob(x).sum(), lik.log_scale)
    return grad


GAMMA = torch.distributions.Gamma(2.0, 1.0)  # data of no family here, skewed; scales far enough apart, none floored


@pytest.mark.parametrize("learn_scale", ["global", "per_feature"])
@pytest.mark.parametrize("name", LOC_SCALE)
def test_init_scale_is_the_maximum_likelihood_scale_about_the_feature_centres(name, learn_scale, monkeypatch):
    """The definition, family by family: with loc = each feature's mean (median for the Laplace), the start sigma
    is a stationary point of sum log p(x | loc, sigma) in log sigma, even for data not of the family (the
    Student-t's EM run to convergence here)."""
    monkeypatch.setattr(StudentTLikelihood, "em_rtol", 1e-8)
    x = GAMMA.sample((500, 3)) * torch.tensor([1.0, 2.0, 4.0])
    # d/d log sigma of each point's log p is O(1); at the MLE their sum is 0 up to float32 rounding
    assert score_at_the_start(name, learn_scale, x).abs().max() < 1e-4 * x.numel()


@pytest.mark.parametrize("learn_scale", ["global", "per_feature"])
def test_student_t_start_stops_its_em_near_the_mle(learn_scale):
    """With the default em_rtol the EM stops early: each point's score is then within em_rtol of 0 (it is about
    the Fisher information of log sigma, 2 df / (df + 3), times half sigma^2's relative error)."""
    x = GAMMA.sample((500, 3)) * torch.tensor([1.0, 2.0, 4.0])
    assert score_at_the_start("student_t", learn_scale, x).abs().max() < StudentTLikelihood.em_rtol * x.numel()


def test_pooled_scale_is_the_root_mean_of_the_feature_variances():
    """global: sigma^2 = mean over features of each feature's variance (Normal); b = mean of the features' MADs (Laplace)."""
    x = torch.randn(300, 4, dtype=torch.float64) * torch.tensor([0.5, 1.0, 2.0, 4.0], dtype=torch.float64) + 3
    normal, laplace = build("normal", 4, learn_scale="global"), build("laplace", 4, learn_scale="global")
    normal.init_scale(x)
    laplace.init_scale(x)
    assert math.isclose(float(normal.scale.detach()), float(x.var(0, unbiased=False).mean().sqrt()), rel_tol=1e-6)
    assert math.isclose(float(laplace.scale.detach()), float((x - x.median(0).values).abs().mean(0).mean()), rel_tol=1e-6)


@pytest.mark.parametrize("learn_scale", ["global", "per_feature"])
@pytest.mark.parametrize("name", LOC_SCALE)
def test_scale_init_config_keeps_the_configured_scale(name, learn_scale):
    lik = lik_with(name, 3, scale=0.25, learn_scale=learn_scale, scale_init="config")
    lik.init_scale(10 * torch.randn(100, 3))
    assert torch.equal(lik.log_scale.detach(), torch.full(lik.log_scale.shape, math.log(0.25)))


@pytest.mark.parametrize("scale_init", ["data", "config"])
@pytest.mark.parametrize("name", LOC_SCALE)
def test_a_fixed_scale_is_the_configured_scale_whatever_scale_init_says(name, scale_init):
    lik = lik_with(name, 3, scale=0.25, scale_init=scale_init)
    lik.init_scale(10 * torch.randn(100, 3))
    assert dict(lik.named_parameters()) == {}
    assert torch.equal(lik.log_scale, torch.tensor(math.log(0.25)))


@pytest.mark.parametrize("learn_scale", ["global", "per_feature"])
@pytest.mark.parametrize("name", LOC_SCALE)
def test_all_constant_data_start_at_min_scale_not_at_log_zero(name, learn_scale):
    lik = lik_with(name, 3, learn_scale=learn_scale)
    lik.init_scale(torch.full((50, 3), 0.7))
    assert torch.isfinite(lik.log_scale).all()
    assert torch.allclose(lik.scale.detach(), torch.tensor(MIN_SCALE).expand(lik.log_scale.shape))


@pytest.mark.parametrize("name", LOC_SCALE)
def test_a_constant_or_tiny_feature_starts_at_a_tenth_of_the_features_rms_scale(name):
    """The MLE of a (near-)constant feature's scale is about 0, but the untrained decoder does not predict that
    feature yet: per_feature starts it at feature_floor times the root mean square of the features' MLEs; the
    other features keep their MLE."""
    x = sample(name, torch.zeros(4), torch.tensor([1.0, 1e-3, 2.0, 1.0]), 2000, seed=2)
    x[:, 3] = 0.7  # constant
    lik = lik_with(name, 4, learn_scale="per_feature")
    lik.init_scale(x)
    mle = lik.residual_scale(x, 0)
    floor = LocScaleLikelihood.feature_floor * mle.pow(2).mean().sqrt()
    assert mle[3] < 1e-6 and mle[1] < floor < mle[[0, 2]].min()  # 0 up to float32 rounding of the mean
    assert torch.allclose(lik.scale.detach(), mle.maximum(floor))


def test_likelihoods_without_a_scale_ignore_init_scale():
    for name in ("bernoulli", "continuous_bernoulli"):
        lik = build(name, 3)
        lik.init_scale(torch.rand(10, 3))
        assert lik.state_dict() == {}


@pytest.mark.parametrize("name", LOC_SCALE)
def test_scale_init_is_a_config_key_defaulting_to_data(name):
    spec = LIKELIHOODS.resolve({"name": name})
    assert spec.scale_init == "data"
    assert LIKELIHOODS.resolve({"name": name, "scale_init": "config"}).scale_init == "config"
    with pytest.raises(Exception, match="scale_init"):
        LIKELIHOODS.resolve({"name": name, "scale_init": "mle"})
