"""The baselines as ``pyro-vae compare`` methods: rows for em, variational_em and the mixtures, and em's refusal."""

import math

import pytest

from conftest import run_cli
from pyro_vae import load_config, load_data
from pyro_vae.errors import ConfigError
from pyro_vae.compare.methods import METHODS, Budget


LINEAR = ["data.name=synthetic", "data.n=300", "data.x_dim=5", "model.latent_dim=2", "model.decoder.name=linear",
          "model.likelihood.learn_scale=global", "guide.hidden=[]", "train.batch_size=50"]



def run_method(name, overrides, epochs=None, stop="converged"):
    cfg = load_config(None, overrides)
    data = load_data(cfg.data, cfg.seed)
    return METHODS.get(name).fn(cfg, data, Budget(stop=stop, epochs=epochs, eval_samples=20, grad_samples=2))


def test_registered_names():
    for name in ("em", "variational_em", "svi", "gmm_em", "gmm_enum_svi", "gmm_amortized_svi"):
        assert name in METHODS


def test_em_row_reaches_the_closed_form_optimum():
    """Until converged (the default budget): EM stops at its tolerance, on the closed-form maximum likelihood
    on the training split and, within 0.005 nats per point, on the test split."""
    row = run_method("em", LINEAR)
    assert row.converged and row.stop_reason == "tol" and row.extra["gap_to_closed_form"] < 1e-4
    assert abs(row.extra["closed_form_test_log_likelihood"] - row.test_log_likelihood) < 5e-3
    assert row.test_log_likelihood == row.exact_log_likelihood == row.test_elbo
    assert row.iterations == len(row.curve) - 1 and row.curve[-1]["val_log_px"] == row.val_log_px
    assert row.extra["reference_val_log_px"] >= row.val_log_px - 1e-3
    fa = run_method("em", LINEAR + ["model.likelihood.learn_scale=per_feature"])
    assert fa.extra["algorithm"] == "factor_analysis_em" and math.isfinite(fa.test_log_likelihood) and fa.converged


def test_em_at_its_cap_is_unconverged():
    row = run_method("em", LINEAR, epochs=2)
    assert row.iterations == 2 and not row.converged and row.stop_reason == "max_epochs"


def test_em_refuses_models_without_an_exact_posterior():
    with pytest.raises(ConfigError, match="model.decoder.name=linear"):
        run_method("em", ["data.name=synthetic", "data.n=100"], epochs=1)
    with pytest.raises(ConfigError, match="learn_scale"):
        run_method("em", LINEAR + ["model.likelihood.learn_scale=none"], epochs=1)


def test_variational_em_row_has_exact_and_held_out_numbers():
    row = run_method("variational_em", LINEAR, epochs=2, stop="fixed")
    assert row.exact_log_likelihood is not None and math.isfinite(row.extra["test_iwae"])
    assert row.val_log_px is not None and row.stop_reason == "max_epochs" and not row.converged
    # IWAE with the held-out E-step's q is a lower bound of the exact log p(x) (up to its Monte Carlo error)
    assert row.extra["test_iwae"] < row.exact_log_likelihood + 0.05
    assert len(row.curve) == 2 and row.iterations == 2 * 5 * 6  # 240 train points / 50 = 5 batches, 5 E + 1 M


@pytest.mark.parametrize("name", ["gmm_em", "gmm_enum_svi", "gmm_amortized_svi"])
def test_mixture_rows(name):
    row = run_method(name, ["data.name=synthetic_mixture", "data.n=200", "model.latent_dim=3"], epochs=20)
    assert row.exact_log_likelihood == row.test_log_likelihood and math.isfinite(row.test_log_likelihood)
    assert row.extra["num_components"] == 3 and math.isfinite(row.val_log_px)
    assert row.stop_reason in ("tol", "plateau", "max_epochs") and row.converged == (row.stop_reason != "max_epochs")
    if name == "gmm_em":  # the best of the k-means++ restarts, every one recorded
        assert len(row.extra["restarts"]) == 10
        assert row.train_elbo == max(r["log_likelihood"] for r in row.extra["restarts"])
    if name == "gmm_amortized_svi":  # an ELBO estimate, below the exact log-likelihood up to Monte Carlo error
        assert row.test_elbo < row.test_log_likelihood + 0.05


def test_cli_refusal_is_one_line(tmp_path):
    r = run_cli("compare", "--methods", "em", "--set", "data.name=synthetic", "--set", "data.n=100", "--epochs", "1",
                "--out", tmp_path / "c")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1 and lines[0].startswith("pyro-vae: error: method 'em': exact EM")
    assert not (tmp_path / "c").exists()  # refused before anything was trained or written
