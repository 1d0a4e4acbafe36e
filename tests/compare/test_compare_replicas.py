"""`compare --seeds N` with the seeds of an SVI method stacked as replicas in one vectorized step: the rows are
the per-run path's (to float rounding), a method the replicas do not cover trains one run at a time and says
so, and a replica stopped by a non-finite step is a row of its own while the others train on."""

import math

import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.compare import svi
from pyro_vae.compare.comparison import compare, resolve_methods
from pyro_vae.compare.methods import Budget

# 96 training rows at B=32; a nonlinear decoder (IWAE test numbers, Monte Carlo draws after training)
TINY = {"data": {"name": "synthetic", "n": 120, "x_dim": 4}, "model": {"decoder": {"hidden": [8]}},
        "guide": {"hidden": [8]}, "train": {"batch_size": 32, "patience": 1, "min_delta": 1e9, "min_lr": 1e-3}}
# until converged: the plateau rule with no gain above 1e9 nats cuts the step size after epoch 2, stops at its
# floor, restores the best epoch; capped at 4 epochs
BUDGET = Budget(epochs=4, eval_samples=20, grad_samples=3, yardstick_samples=10, yardstick_points=12)
NUMBERS = ("test_log_likelihood", "test_elbo", "val_log_px", "val_elbo", "train_elbo")
EXTRA = ("test_iwae", "grad_variance_encoder", "grad_variance_decoder", "best_epoch", "final_lr")
CLOSE = dict(rel=1e-4, abs=1e-5)  # the core's tolerance: batched products round apart from addmm at some shapes


def rows(report, name):
    return [r for r in report["methods"] if r["name"] == name]


def assert_rows_equal(got, want):
    assert [r["seed"] for r in got] == [r["seed"] for r in want]
    for a, b in zip(got, want):
        for key in NUMBERS:
            assert a[key] == pytest.approx(b[key], **CLOSE), (a["seed"], key)
        for key in EXTRA:
            assert a["extra"][key] == pytest.approx(b["extra"][key], **CLOSE), (a["seed"], key)
        assert (a["epochs"], a["iterations"], a["stop_reason"], a["converged"], a["estimator"]) == \
            (b["epochs"], b["iterations"], b["stop_reason"], b["converged"], b["estimator"])
        assert [c["val_log_px"] for c in a["curve"]] == pytest.approx([c["val_log_px"] for c in b["curve"]], **CLOSE)


def test_stacked_seeds_give_the_per_run_rows_and_others_fall_back(tmp_path, capsys):
    """analytic_kl's three seeds stacked equal the same three trained one at a time (stack_seeds=False), its
    stopping, best epoch, test bounds and gradient statistics included; iwae_k5 trains one run at a time, says
    why once, and the report's header names both."""
    cfg = validate_config(TINY)
    methods = resolve_methods(["analytic_kl", "iwae_k5"])
    stacked = compare(cfg, methods, BUDGET, tmp_path / "stacked", seeds=3)
    err = capsys.readouterr().err
    assert "analytic_kl (seeds 0, 1, 2): stacked as 3 replicas" in err
    assert err.count("iwae_k5: its seeds train one run at a time (inference.objective=iwae") == 1
    alone = compare(cfg, methods, BUDGET, tmp_path / "alone", seeds=3, stack_seeds=False, verbose=False)

    assert_rows_equal(rows(stacked, "analytic_kl"), rows(alone, "analytic_kl"))
    assert rows(stacked, "analytic_kl")[0]["stop_reason"] == "plateau"  # the rule ran, and stopped each alike
    assert [(r["extra"]["replicas"], r["extra"]["vectorized"]) for r in stacked["methods"]] == \
        [(3, True)] * 3 + [(1, False)] * 3
    assert all(r["extra"]["vectorized"] is False for r in alone["methods"])
    for a, b in zip(rows(stacked, "iwae_k5"), rows(alone, "iwae_k5")):  # the per-run path, untouched
        assert a["test_log_likelihood"] == b["test_log_likelihood"] and a["curve"][-1]["val_log_px"] == \
            b["curve"][-1]["val_log_px"]
    assert stacked["seed_runs"]["stacked"] == {"analytic_kl": 3}
    assert "iwae_k5" in stacked["seed_runs"]["alone"]
    header = (tmp_path / "stacked" / "comparison.md").read_text()
    assert "- **Seed runs:** stacked as 3 replicas in one vectorized step for analytic_kl; one run at a time for " \
           "iwae_k5 (inference.objective=iwae" in header


def test_with_a_step_size_search_the_other_seeds_are_stacked(tmp_path):
    """--lr-grid trains the first seed in the search; the remaining two are stacked at the chosen step size and
    equal their runs one at a time."""
    cfg = validate_config(TINY)
    methods = resolve_methods(["analytic_kl"])
    kw = dict(seeds=3, lr_grid=(3e-3, 1e-2), verbose=False)
    stacked = compare(cfg, methods, BUDGET, tmp_path / "s", **kw)
    alone = compare(cfg, methods, BUDGET, tmp_path / "a", stack_seeds=False, **kw)
    assert [r["extra"]["replicas"] for r in stacked["methods"]] == [1, 2, 2]
    assert_rows_equal(stacked["methods"], alone["methods"])
    assert "(the first seed trained in the step-size search)" in stacked["seed_runs"]["description"]


def test_a_nonfinite_replica_is_its_own_unconverged_row(tmp_path, monkeypatch):
    """A NaN in seed 1's decoder: its row has not converged, says where (replica and seed) in stop_detail and has
    no test numbers; seeds 0 and 2 are their clean runs, and the summary takes their two values."""
    cfg = validate_config(TINY)
    build = svi.ReplicaTrainer.from_configs

    def poisoned(*args, **kwargs):
        rt = build(*args, **kwargs)
        with torch.no_grad():
            rt.replicas[1].vae.decoder.net[0].weight[0, 0] = float("nan")
        return rt

    monkeypatch.setattr(svi.ReplicaTrainer, "from_configs", poisoned)
    report = compare(cfg, resolve_methods(["analytic_kl"]), BUDGET, tmp_path / "nan", seeds=3, verbose=False)
    monkeypatch.undo()
    bad = report["methods"][1]
    assert (bad["seed"], bad["converged"], bad["stop_reason"], bad["epochs"]) == (1, False, "nonfinite", 0)
    assert "replica 1 (seed 1) step 1 (epoch 1)" in bad["stop_detail"] and "decoder.net.0.weight" in bad["stop_detail"]
    assert bad["test_log_likelihood"] is None and math.isnan(bad["test_elbo"]) and bad["curve"] == []
    clean = compare(cfg, resolve_methods(["analytic_kl"]), BUDGET, tmp_path / "clean", seeds=3, verbose=False)
    assert_rows_equal([report["methods"][0], report["methods"][2]], [clean["methods"][0], clean["methods"][2]])
    summary = report["summary"]["methods"][0]
    assert summary["test_log_likelihood"]["n"] == 2 and summary["n_converged"] == sum(
        r["converged"] for r in report["methods"])
    assert "nonfinite" in (tmp_path / "nan" / "comparison.md").read_text()
