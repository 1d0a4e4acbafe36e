"""The baselines as ``pyro-vae compare`` methods: rows for em, variational_em and the mixtures, and em's refusal."""

import math

import pytest

from conftest import run_cli
from pyro_vae import load_config, load_data
from pyro_vae.errors import ConfigError
from pyro_vae.compare.methods import METHODS, Budget


LINEAR = ["data.name=synthetic", "data.n=300", "data.x_dim=5", "model.latent_dim=2", "model.decoder.name=linear",
          "model.likelihood.learn_scale=global", "guide.hidden=[]", "train.batch_size=50"]



def run_method(name, overrides, epochs):
    cfg = load_config(None, overrides)
    data = load_data(cfg.data, cfg.seed)
    return METHODS.get(name).fn(cfg, data, Budget(epochs=epochs, eval_samples=20, grad_samples=2))


def test_registered_names():
    for name in ("em", "variational_em", "svi", "gmm_em", "gmm_enum_svi", "gmm_amortized_svi"):
        assert name in METHODS


def test_em_row_reaches_the_closed_form_optimum():
    row = run_method("em", LINEAR, epochs=2000)
    assert row.extra["converged"] and row.extra["gap_to_closed_form"] < 1e-4
    assert row.test_log_likelihood == row.exact_log_likelihood == row.test_elbo
    assert row.curve[-1]["log_likelihood"] == row.test_log_likelihood and row.iterations == len(row.curve) - 1
    fa = run_method("em", LINEAR + ["model.likelihood.learn_scale=per_feature"], epochs=2000)
    assert fa.extra["algorithm"] == "factor_analysis_em" and math.isfinite(fa.test_log_likelihood)


def test_em_refuses_models_without_an_exact_posterior():
    with pytest.raises(ConfigError, match="model.decoder.name=linear"):
        run_method("em", ["data.name=synthetic", "data.n=100"], epochs=1)
    with pytest.raises(ConfigError, match="learn_scale"):
        run_method("em", LINEAR + ["model.likelihood.learn_scale=none"], epochs=1)


def test_variational_em_row_has_exact_and_held_out_numbers():
    row = run_method("variational_em", LINEAR, epochs=2)
    assert row.exact_log_likelihood is not None and math.isfinite(row.extra["test_iwae"])
    # IWAE with the held-out E-step's q is a lower bound of the exact log p(x) (up to its Monte Carlo error)
    assert row.extra["test_iwae"] < row.exact_log_likelihood + 0.05
    assert len(row.curve) == 2 and row.iterations == 2 * 5 * 6  # 240 train points / 50 = 5 batches, 5 E + 1 M


@pytest.mark.parametrize("name", ["gmm_em", "gmm_enum_svi", "gmm_amortized_svi"])
def test_mixture_rows(name):
    row = run_method(name, ["data.name=synthetic_mixture", "data.n=200", "model.latent_dim=3"], epochs=20)
    assert row.exact_log_likelihood == row.test_log_likelihood and math.isfinite(row.test_log_likelihood)
    assert row.extra["num_components"] == 3 and row.curve[-1]["log_likelihood"] == row.test_log_likelihood
    if name == "gmm_amortized_svi":  # an ELBO estimate, below the exact log-likelihood up to Monte Carlo error
        assert row.test_elbo < row.test_log_likelihood + 0.05


def test_cli_refusal_is_one_line(tmp_path):
    r = run_cli("compare", "--methods", "em", "--set", "data.name=synthetic", "--set", "data.n=100", "--epochs", "1",
                "--out", tmp_path / "c")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("pyro-vae: error: method 'em': exact EM")
    assert not (tmp_path / "c").exists()  # refused before anything was trained or written
