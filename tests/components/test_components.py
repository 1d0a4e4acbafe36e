"""Conformance tests run on every registered component (a new one is tested once registered)."""

import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import Trace_ELBO

from pyro_vae import build_vae, validate_config
from pyro_vae.components.catalog import ALL_REGISTRIES
from pyro_vae.components.decoders import DECODERS
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.likelihoods import LIKELIHOODS
from pyro_vae.components.priors import PRIORS

LATENT, X_DIM, BATCH = 3, 6, 5
IMAGE = (2, 3)  # X_DIM as an image, so image-only components (conv) are tested too


def data_for(likelihood_name):
    x = torch.rand(BATCH, X_DIM)
    return torch.bernoulli(x) if likelihood_name in ("bernoulli",) else x


@pytest.mark.parametrize("name", PRIORS.names())
def test_prior(name):
    # through build_vae, so priors that need the rest of the VAE (vamp) are bound to it
    prior = build_vae(validate_config({"model": {"latent_dim": LATENT, "prior": {"name": name}}}), X_DIM).prior
    p = prior()
    assert p.event_shape == (LATENT,)
    z = p.sample((BATCH,))
    assert z.shape == (BATCH, LATENT)
    assert torch.isfinite(p.log_prob(z)).all() and p.log_prob(z).shape == (BATCH,)


@pytest.mark.parametrize("name", LIKELIHOODS.names())
def test_likelihood(name):
    lik = LIKELIHOODS.build(LIKELIHOODS.resolve({"name": name}), X_DIM)
    params = torch.randn(BATCH, X_DIM * lik.params_per_feature)
    d = lik(params)
    assert d.event_shape == (X_DIM,) and d.batch_shape == (BATCH,)
    x = data_for(name)
    assert torch.isfinite(d.log_prob(x)).all()


@pytest.mark.parametrize("name", DECODERS.names())
def test_decoder(name):
    dec = DECODERS.build(DECODERS.resolve({"name": name}), LATENT, X_DIM, IMAGE)
    assert dec(torch.randn(BATCH, LATENT)).shape == (BATCH, X_DIM)
    assert dec(torch.randn(4, BATCH, LATENT)).shape == (4, BATCH, X_DIM)  # vectorized particles


@pytest.mark.parametrize("name", GUIDES.names())
def test_guide(name):
    enc = GUIDES.build(GUIDES.resolve({"name": name}), X_DIM, LATENT, IMAGE)
    q = enc(torch.rand(BATCH, X_DIM))
    assert q.event_shape == (LATENT,) and q.batch_shape == (BATCH,)
    z = q.rsample()
    assert z.shape == (BATCH, LATENT) and torch.isfinite(q.log_prob(z)).all()


def vae_cases():
    for section, registry in ALL_REGISTRIES.items():
        if section == "data":
            continue
        for name in registry.names():
            yield pytest.param(section, name, id=f"{section}={name}")


def config_with(section, name):
    raw = {"model": {"latent_dim": LATENT}}
    if section == "guide":
        raw["guide"] = {"name": name}
    else:
        raw["model"][section.split(".")[1]] = {"name": name}
    return validate_config(raw)


@pytest.mark.parametrize("section,name", list(vae_cases()))
def test_vae_sites_shapes_and_model_guide_match(section, name):
    cfg = config_with(section, name)
    vae = build_vae(cfg, X_DIM, IMAGE)
    x = data_for(cfg.model.likelihood.name)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, trace=guide_trace)).get_trace(x)
    model_trace.compute_log_prob()
    z, obs = model_trace.nodes["z"], model_trace.nodes["x"]
    assert z["fn"].event_shape == (LATENT,) and z["value"].shape == (BATCH, LATENT)
    assert obs["fn"].event_shape == (X_DIM,) and obs["is_observed"]
    assert [f.name for f in z["cond_indep_stack"]] == ["data"]
    assert [f.name for f in obs["cond_indep_stack"]] == ["data"]
    assert torch.isfinite(model_trace.log_prob_sum())
    # with validation on, Trace_ELBO checks that model and guide sites match
    loss = Trace_ELBO().differentiable_loss(vae.model, vae.guide, x)
    assert torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in vae.encoder.parameters())
    assert any(p.grad is not None for p in vae.decoder.parameters())
