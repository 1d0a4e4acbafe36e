"""The EM-style methods for nonlinear decoders as `pyro-vae compare` methods: rws, wake_sleep, mcem, semi_amortized."""

import math

import pytest
from conftest import run_cli

from pyro_vae import validate_config
from pyro_vae.baselines import ppca
from pyro_vae.compare.comparison import compare, resolve_methods
from pyro_vae.compare.jobs import spec
from pyro_vae.compare.methods import METHODS, Budget
from pyro_vae.data import load_data
from pyro_vae.errors import ConfigError

NEW = ["rws", "wake_sleep", "mcem", "semi_amortized"]
ROW_FIELDS = {"name", "train_elbo", "val_elbo", "test_log_likelihood", "exact_log_likelihood", "test_elbo", "seconds",
              "examples_per_second", "iterations", "curve", "extra", "seed", "converged", "stop_reason", "stop_detail",
              "val_log_px", "estimator", "epochs"}
CURVE_FIELDS = {"epoch", "wall_time", "val_log_px", "val_elbo", "score", "train_objective"}
MLP = {"data": {"name": "synthetic", "n": 120, "x_dim": 4}, "model": {"decoder": {"hidden": [8]}},
       "guide": {"hidden": [8]}, "train": {"batch_size": 32}}  # 96 training points: 3 minibatches an epoch
PPCA = {"data": {"name": "synthetic", "n": 1000, "x_dim": 5, "latent_dim": 2},
        "model": {"latent_dim": 2, "decoder": {"name": "linear"}, "likelihood": {"learn_scale": "global"}},
        "guide": {"hidden": []}, "optim": {"lr": 0.03},
        "train": {"patience": 3, "min_delta": 0.01, "min_lr": 0.003}}


def test_the_methods_are_registered_for_the_command_line_and_its_workers():
    for name in NEW:
        method = METHODS.get(name).fn
        assert method.tunes_lr and spec(name, method) is None  # --lr-grid applies; --jobs workers know it by name
    assert hasattr(METHODS.get("mcem").fn, "check") and hasattr(METHODS.get("semi_amortized").fn, "check")


def test_every_method_runs_in_a_tiny_compare_and_returns_complete_rows(tmp_path):
    budget = Budget(stop="fixed", epochs=2, eval_samples=10, grad_samples=2, yardstick_samples=10)
    report = compare(validate_config(MLP), resolve_methods(NEW), budget, tmp_path / "out", verbose=False)
    rows = {r["name"]: r for r in report["methods"]}
    assert list(rows) == NEW
    for name, row in rows.items():
        assert set(row) == ROW_FIELDS, name
        assert row["epochs"] == 2 and row["iterations"] == 2 * 3 and row["seed"] == 0, name
        assert not row["converged"] and row["stop_reason"] == "max_epochs" and row["stop_detail"], name
        assert row["exact_log_likelihood"] is None and math.isfinite(row["test_log_likelihood"]), name
        assert math.isfinite(row["val_log_px"]) and math.isfinite(row["val_elbo"]), name
        assert math.isfinite(row["test_elbo"]) and row["seconds"] > 0 and row["examples_per_second"] > 0, name
        assert len(row["curve"]) == 2 and all(set(c) == CURVE_FIELDS for c in row["curve"]), name
        if name == "mcem":  # no encoder: scored at its chains, on training points, which is not the yardstick
            assert all(c["val_log_px"] is None and math.isfinite(c["score"]) for c in row["curve"])
            assert row["extra"]["curve_score"].startswith("training log p(x) (IWAE-64 from a Normal at each")
        else:  # scored on the yardstick each epoch, exactly as the SVI methods are: the curve is its numbers
            assert all(c["val_log_px"] == c["score"] and math.isfinite(c["val_elbo"]) for c in row["curve"]), name
            assert row["extra"]["curve_score"] == "validation log p(x)", name
        extra = row["extra"]
        assert extra["lr"] == extra["final_lr"] == 0.003 and extra["settings"] and extra["curve_score"], name
        # IWAE-10 is a bound: up to its Monte Carlo error it lies above the ELBO of the same q
        assert row["test_log_likelihood"] == extra["test_iwae"] and extra["test_iwae"] > row["test_elbo"] - 1.0, name
    for name in ("rws", "wake_sleep", "semi_amortized"):  # the encoder's q, as the SVI methods are scored
        assert rows[name]["estimator"] == "IWAE-10" and rows[name]["extra"]["yardstick"] == "IWAE-10"
    assert rows["mcem"]["estimator"] == "IWAE-10 (after a 300-step E-step)"  # no encoder: a held-out E-step's q
    assert math.isnan(rows["mcem"]["train_elbo"]) and rows["mcem"]["extra"]["gradient_evaluations"] == 6 * 27
    assert rows["rws"]["extra"]["settings"] == {"num_particles": 5, "phi_update": "wake"}
    assert rows["wake_sleep"]["extra"]["settings"] == {"num_particles": 1, "phi_update": "sleep"}
    assert rows["semi_amortized"]["extra"]["gradient_steps"] == 6 * 6  # 5 refinement steps and the update
    assert "semi_amortized" in (tmp_path / "out" / "comparison.md").read_text()


def test_on_ppca_every_converged_method_reaches_the_closed_form_maximum_likelihood(tmp_path):
    """Until converged (a fast plateau rule: patience 3, 0.01 nats, step 0.03 cut to 0.003), every method's test
    log p(x) is exact and within 0.1 nats per point of the closed-form MLE's. The error here is the fitted
    parameters' (the test log p(x) has no Monte Carlo error of its own), measured across seeds: with seeds 0, 1, 2
    the gaps (closed form minus method, nats/pt) are rws 0.003, 0.013, 0.004; wake_sleep 0.020, 0.028, -0.017;
    mcem 0.024, 0.013, 0.061; semi_amortized 0.009, 0.003, 0.012, every run converged in 24-53 epochs."""
    cfg = validate_config(PPCA)
    data = load_data(cfg.data, cfg.seed)
    p = ppca.ppca_closed_form(data.train.double(), 2).params
    best = ppca.log_likelihood(data.test, p["W"], p["b"], p["noise_var"])
    report = compare(cfg, resolve_methods(NEW), Budget(epochs=60, eval_samples=10, grad_samples=2), tmp_path / "out",
                     verbose=False)
    for row in report["methods"]:
        assert row["converged"] and row["stop_reason"] == "plateau", (row["name"], row["stop_detail"])
        assert row["estimator"] == "exact" and row["test_log_likelihood"] == row["exact_log_likelihood"]
        assert abs(best - row["test_log_likelihood"]) < 0.1, (row["name"], best - row["test_log_likelihood"])
    curves = {r["name"]: r["curve"] for r in report["methods"]}
    # the encoder methods are scored on the yardstick; mcem exactly on the validation split, the yardstick's points
    assert all(c["val_log_px"] == c["score"] for n in NEW for c in curves[n])


@pytest.mark.parametrize("name, overrides, match", [
    ("semi_amortized", {"guide": {"name": "full_rank"}}, "mean-field Normal"),
    ("semi_amortized", {"inference": {"objective": "iwae", "kl": "monte_carlo", "num_particles": 2}}, "reparam"),
    ("mcem", {"data": {"name": "digits", "binarize": "dynamic"}, "model": {"likelihood": {"name": "bernoulli"}}},
     "static, not dynamic")])
def test_a_config_a_method_cannot_run_is_refused_before_anything_is_written(tmp_path, name, overrides, match):
    cfg = validate_config({**MLP, **overrides})
    with pytest.raises(ConfigError, match=f"method '{name}': .*{match}"):
        compare(cfg, resolve_methods(["rws", name]), Budget(epochs=1), tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


def test_the_command_line_refusal_is_one_line(tmp_path):
    r = run_cli("compare", "--methods", "rws,semi_amortized", "--set", "data.name=synthetic", "--set", "data.n=60",
                "--set", "guide.name=flow", "--epochs", "1", "--out", tmp_path / "c")
    lines = r.stderr.splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("pyro-vae: error: method 'semi_amortized': guide.name")
    assert not (tmp_path / "c").exists()


def test_final_ais_labels_every_new_row_with_the_ais_estimator(tmp_path):
    budget = Budget(stop="fixed", epochs=1, eval_samples=5, grad_samples=2, yardstick_samples=5, final="ais",
                    ais_steps=5, ais_chains=2, ais_leapfrog=2)
    report = compare(validate_config(MLP), resolve_methods(NEW), budget, tmp_path / "out", verbose=False)
    for row in report["methods"]:
        assert row["estimator"] == "AIS (T=5, C=2, L=2)", row["name"]
        assert row["test_log_likelihood"] == row["extra"]["test_ais"] and row["extra"]["test_ais_mc_se"] > 0
        assert math.isfinite(row["extra"]["test_iwae"])  # the method's own IWAE is kept beside it
    assert "AIS (T=5, C=2, L=2)" in (tmp_path / "out" / "comparison.md").read_text()
