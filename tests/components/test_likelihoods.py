"""Likelihood densities against their closed forms, learned scales against their MLEs, and data refused at build time."""

import math

import pytest
import torch

from pyro_vae import load_config
from pyro_vae.errors import DataError
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.build import prepare


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
