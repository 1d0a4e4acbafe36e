"""Every prior is a normalized density whose samples follow it; the learnable mixtures train on digits."""

import math

import pytest
import torch

from pyro_vae import build_vae, load_config, load_run, train_run, validate_config
from pyro_vae.components.guides import GUIDES
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.inference.kl import kl_report
from pyro_vae.components.priors import PRIORS

X_DIM = 4
NUM_SAMPLES = 10000
BOX = 12.0  # moments are compared on |z_i| < BOX, where every prior's are finite


def perturbed_prior(name, latent_dim):
    """The prior of a fresh VAE with every learnable parameter moved off its initial value."""
    vae = build_vae(validate_config({"model": {"latent_dim": latent_dim, "prior": {"name": name}}}), X_DIM)
    with torch.no_grad():
        for p in vae.prior.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return vae.prior


def proposal(latent_dim):
    """g(z) = prod_i StudentT(z_i; 2, 0, 3): heavier-tailed than every prior, so the weights p/g stay bounded."""
    t = torch.distributions.StudentT(torch.tensor(2.0, dtype=torch.float64), 0.0, 3.0).expand((latent_dim,))
    return torch.distributions.Independent(t, 1)


def mean_and_se(values):
    """Monte Carlo estimate of E[values] over the leading dim and its standard error."""
    return values.mean(0), values.std(0) / math.sqrt(len(values))


@pytest.mark.parametrize("latent_dim", [1, 2])
@pytest.mark.parametrize("name", PRIORS.names())
def test_prior_density_integrates_to_one_and_matches_its_samples(name, latent_dim):
    """Importance sampling from g: E_g[p/g] = 1 (normalized), and for regions R and the first moment,
    E_g[f p/g] must equal the mean of f over the prior's own samples, each within 4 standard errors."""
    prior = perturbed_prior(name, latent_dim)
    g = proposal(latent_dim)
    with torch.no_grad():
        p = prior()
        u = g.sample((NUM_SAMPLES,))
        weights = (p.log_prob(u.float()).double() - g.log_prob(u)).exp()  # p(u) / g(u)
        samples = p.sample((NUM_SAMPLES,)).double()
    assert torch.isfinite(weights).all() and torch.isfinite(samples).all()

    total, se = mean_and_se(weights)
    assert abs(float(total) - 1) < 4 * float(se), (float(total), float(se))

    cut = 0.3
    tests = {
        "P(z0 < cut)": lambda z: (z[:, :1] < cut).double(),
        "P(all z < cut)": lambda z: (z < cut).all(-1, keepdim=True).double(),
        "P(|z| < 1)": lambda z: (z.norm(dim=-1, keepdim=True) < 1).double(),
        "E[z 1_box]": lambda z: z * (z.abs() < BOX).all(-1, keepdim=True),
    }
    for what, f in tests.items():
        by_weight, se_w = mean_and_se(weights[:, None] * f(u))
        by_sample, se_s = mean_and_se(f(samples))
        tol = 4 * torch.sqrt(se_w ** 2 + se_s ** 2)
        assert ((by_weight - by_sample).abs() < tol).all(), (what, by_weight, by_sample, tol)


def test_vamp_prior_uses_the_guide_and_owns_its_pseudo_inputs():
    cfg = validate_config({"model": {"latent_dim": 2, "prior": {"name": "vamp", "num_components": 7}}})
    vae = build_vae(cfg, X_DIM)
    names = dict(vae.named_parameters())
    assert names["prior.pseudo_inputs"].shape == (7, X_DIM)
    # the encoder is shared, not duplicated under the prior
    assert not any(n.startswith("prior.encoder") for n in names)
    expected = vae.encoder(vae.prior.pseudo_inputs)  # the uniform mixture of q(z|u_k)
    z = torch.randn(5, 2)
    log_mix = torch.logsumexp(expected.log_prob(z[:, None, :]), -1) - math.log(7)
    assert torch.allclose(vae.prior().log_prob(z), log_mix, atol=1e-5)
    loss = -vae.prior().log_prob(z).sum()
    loss.backward()
    assert vae.prior.pseudo_inputs.grad is not None and vae.encoder.loc_head.weight.grad is not None


@pytest.mark.parametrize("prior", [{"name": "vamp", "num_components": 10}, {"name": "mixture", "num_components": 5}])
def test_learnable_prior_trains_on_digits(prior, tmp_path):
    name = prior["name"]
    overrides = ["train.epochs=2", "train.batch_size=256", "model.latent_dim=2", "model.decoder.hidden=[16]", "guide.hidden=[16]",
                 f"model.prior.name={name}", f"model.prior.num_components={prior['num_components']}"]
    cfg = load_config(None, overrides)
    before = build_vae(cfg, 64).prior.state_dict()
    run = train_run(cfg, tmp_path / name, progress=False)
    elbos = [row["train_elbo"] for row in run.metrics]
    assert len(elbos) == 2 and all(math.isfinite(e) for e in elbos) and elbos[1] > elbos[0]
    assert run.summary["kl"] == {"z": "monte_carlo"}  # no closed-form KL to a mixture
    after = run.vae.prior.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the prior itself was learned
    reloaded = load_run(tmp_path / name)
    x = reloaded.data.test[:8]
    assert torch.allclose(reloaded.vae.prior().log_prob(reloaded.vae.encoder(x).mean),
                          run.vae.prior().log_prob(run.vae.encoder(x).mean))


ANALYTIC_PAIRS = {(p, g) for p in ("normal", "laplace", "learned_normal") for g in ("mean_field", "conv")}


@pytest.mark.parametrize("guide", GUIDES.names())
@pytest.mark.parametrize("prior", PRIORS.names())
def test_every_prior_guide_pair_has_a_kl_report_and_a_finite_analytic_elbo(prior, guide):
    """``kl: analytic`` is closed form exactly for the Normal-family pairs torch knows, Monte Carlo otherwise,
    and the ELBO (with vectorized particles) is finite either way."""
    cfg = validate_config({"model": {"latent_dim": 2, "prior": {"name": prior}}, "guide": {"name": guide},
                           "inference": {"kl": "analytic", "num_particles": 2}})
    vae = build_vae(cfg, X_DIM, (2, 2))
    x = torch.rand(3, X_DIM)
    expected = "analytic" if (prior, guide) in ANALYTIC_PAIRS else "monte_carlo"
    assert kl_report(vae.model, vae.guide, x, "analytic") == {"z": expected}
    assert kl_report(vae.model, vae.guide, x, "monte_carlo") == {"z": "monte_carlo"}
    loss = build_elbo(cfg.inference).differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
