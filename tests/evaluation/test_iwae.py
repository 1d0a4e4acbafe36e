"""The IWAE inner loop against the modules it stands in for: the decoder's own forward and the likelihood's distribution."""

import pyro
import pytest
import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.evaluation.decode import L2_FALLBACK_BYTES, LogLikelihood, decode, l2_cache_bytes, log_likelihood, tanh_
from pyro_vae.components.networks import ACTIVATIONS


def test_tanh_identity_is_tanh_up_to_rounding():
    h = torch.linspace(-30, 30, 200001)
    got = tanh_(h.clone())
    want = torch.tanh(h.double())
    assert float((got.double() - want).abs().max()) < 2e-7
    assert got.abs().max() <= 1  # saturates at +-1, no overflow of exp


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_decode_matches_the_decoder(activation):
    """Every activation (in place or not) through two hidden layers gives the module's output."""
    cfg = validate_config({"model": {"latent_dim": 3, "decoder": {"hidden": [8, 6], "activation": activation}}})
    vae = build_vae(cfg, 5)
    z = 3 * torch.randn(4, 7, 3)
    with torch.no_grad():
        want = vae.decoder(z)
        got = decode(vae.decoder, z)
    assert got.shape == want.shape == (4, 7, 5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_decode_under_autograd_is_the_decoder_itself():
    """In-place activations would break a backward pass: with gradients on, decode is decoder(z)."""
    vae = build_vae(validate_config({}), 5)
    z = torch.randn(2, 3, vae.latent_dim)
    out = decode(vae.decoder, z)
    assert out.requires_grad and torch.equal(out, vae.decoder(z))


@pytest.mark.parametrize("likelihood", [{"name": "bernoulli"}, {"name": "normal", "learn_scale": "per_feature"},
                                        {"name": "laplace", "learn_scale": "global"}, {"name": "student_t"},
                                        {"name": "continuous_bernoulli"}])
def test_log_likelihood_is_the_likelihood_distribution(likelihood):
    """log p(x|z) against ``likelihood(decoder(z)).log_prob(x)``, a learned scale moved off its start value."""
    cfg = validate_config({"model": {"latent_dim": 2, "decoder": {"hidden": [8]}, "likelihood": likelihood}})
    vae = build_vae(cfg, 6)
    with torch.no_grad():
        for p in vae.likelihood.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        z = torch.randn(5, 4, 2)
        x = torch.bernoulli(torch.full((4, 6), 0.5)) if likelihood["name"] == "bernoulli" else torch.rand(4, 6)
        want = vae.likelihood(vae.decoder(z)).log_prob(x)
        got = log_likelihood(vae.decoder, vae.likelihood, z, x)
    assert got.shape == (5, 4)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_l2_cache_size_from_sysfs(tmp_path):
    for index, (level, size) in enumerate([("1", "32K"), ("1", "32K"), ("2", "512K"), ("3", "32768K")]):
        (tmp_path / f"index{index}").mkdir()
        (tmp_path / f"index{index}" / "level").write_text(level + "\n")
        (tmp_path / f"index{index}" / "size").write_text(size + "\n")
    assert l2_cache_bytes(str(tmp_path)) == 512 * 1024
    assert l2_cache_bytes(str(tmp_path / "missing")) == L2_FALLBACK_BYTES


def test_compiled_log_likelihood_matches_eager_and_reports_compile_time():
    """The compiled graph (one per shape; the first call compiles, seconds) gives the eager numbers; a
    short last chunk runs eagerly instead of compiling a second graph."""
    pyro.enable_validation(False)
    cfg = validate_config({"model": {"latent_dim": 2, "decoder": {"hidden": [8]}, "likelihood": "bernoulli"}})
    vae = build_vae(cfg, 6)
    x = torch.bernoulli(torch.full((3, 6), 0.5))
    compiled = LogLikelihood(compile=True)
    with torch.no_grad():
        for k in (4, 4):
            z = torch.randn(k, 3, 2)
            torch.testing.assert_close(compiled(vae.decoder, vae.likelihood, z, x),
                                       log_likelihood(vae.decoder, vae.likelihood, z, x), rtol=1e-5, atol=1e-5)
        seconds = compiled.compile_seconds
        z = torch.randn(1, 3, 2)
        torch.testing.assert_close(compiled(vae.decoder, vae.likelihood, z, x, full=False),
                                   log_likelihood(vae.decoder, vae.likelihood, z, x))
    assert seconds > 0 and compiled.compile_seconds == seconds and len(compiled.shapes) == 1
