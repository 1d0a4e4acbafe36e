"""`pyro-vae compare` and the method registry: one row per method, same data and budget for all."""

import json

import pytest

from pyro_vae import validate_config
from pyro_vae.compare.comparison import compare, parse_method_set, resolve_methods
from pyro_vae.errors import ConfigError, RunDirError
from pyro_vae.compare.svi import BUILTIN_SETS
from pyro_vae.compare.methods import METHODS, Budget, MethodResult

from conftest import run_cli

ROW_FIELDS = {"name", "train_elbo", "val_elbo", "test_log_likelihood", "exact_log_likelihood", "test_elbo", "seconds",
              "examples_per_second", "iterations", "curve", "extra", "seed", "converged", "stop_reason", "stop_detail",
              "val_log_px", "estimator", "epochs"}
LINEAR = ["--set", "data.name=synthetic", "--set", "data.n=120", "--set", "data.x_dim=4", "--set", "model.latent_dim=2",
          "--set", "model.decoder.name=linear", "--set", "guide.hidden=[8]", "--set", "train.batch_size=32"]


def test_builtin_methods_are_registered():
    assert set(BUILTIN_SETS) <= set(METHODS.names())
    assert {"analytic_kl", "monte_carlo_kl", "iwae_k5", "iwae_k50", "score_function"} <= set(METHODS.names())


def test_method_set_parsing_keeps_commas_inside_values():
    name, overrides = parse_method_set("wide:model.decoder.hidden=[16, 16],inference.objective=iwae")
    assert name == "wide" and overrides == ["model.decoder.hidden=[16, 16]", "inference.objective=iwae"]
    for bad in ("noname", ":a=1", "x:", "x:a"):
        with pytest.raises(ConfigError):
            parse_method_set(bad)


def test_unknown_method_is_a_config_error_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'iwae_k5'"):
        resolve_methods(["iwae_k6"])
    with pytest.raises(ConfigError, match="already exists"):
        resolve_methods([], ["analytic_kl:inference.kl=analytic"])


def test_the_default_budget_is_until_converged_and_a_fixed_one_needs_a_size():
    assert Budget().stop == "converged" and "until converged" in Budget().describe()
    with pytest.raises(ConfigError, match="fixed budget needs"):
        Budget(stop="fixed")
    with pytest.raises(ConfigError, match="stop 'forever'"):
        Budget(stop="forever")
    assert Budget(seconds=0.0).exhausted(0, 0.0) and not Budget(epochs=2).exhausted(1, 1e9)


TINY = {"data": {"name": "synthetic", "n": 60, "x_dim": 3}, "model": {"decoder": {"hidden": [4]}}, "guide": {"hidden": [4]}}


def test_seconds_budget_stops_training(tmp_path):
    """A fixed wall-clock budget of ~0 s trains exactly one epoch (the check is at epoch ends)."""
    cfg = validate_config(TINY)
    report = compare(cfg, resolve_methods(["analytic_kl"]), Budget(stop="fixed", seconds=1e-9, eval_samples=5,
                                                                   grad_samples=2), tmp_path / "out", verbose=False)
    row = report["methods"][0]
    assert row["epochs"] == 1 and len(row["curve"]) == 1 and row["stop_reason"] == "seconds" and not row["converged"]
    with pytest.raises(RunDirError, match="not empty"):
        compare(cfg, resolve_methods(["analytic_kl"]), Budget(epochs=1), tmp_path / "out", verbose=False)


def test_a_row_that_hits_its_cap_is_marked_unconverged(tmp_path):
    """Until converged, capped at 2 epochs: the plateau rule cannot have stopped it (patience 20), so the row
    says converged false, reason max_epochs, and the table marks it."""
    cfg = validate_config(TINY)
    report = compare(cfg, resolve_methods(["analytic_kl"]), Budget(epochs=2, eval_samples=5, grad_samples=2),
                     tmp_path / "out", verbose=False)
    row = report["methods"][0]
    assert row["epochs"] == 2 and not row["converged"] and row["stop_reason"] == "max_epochs"
    assert row["stop_detail"] == "reached the cap of 2 epochs"
    assert "**NO**" in (tmp_path / "out" / "comparison.md").read_text()


def test_a_row_that_converges_says_so(tmp_path):
    """patience 2 and min_delta 1e9 on the yardstick: no epoch improves on the first by that much and min_lr = lr
    allows no cut, so the rule stops at epoch 3, converged, keeping the best of the three epochs."""
    cfg = validate_config({**TINY, "train": {"patience": 2, "min_delta": 1e9, "min_lr": 1.0}})
    report = compare(cfg, resolve_methods(["analytic_kl"]), Budget(eval_samples=5, grad_samples=2), tmp_path / "o",
                     verbose=False)
    row = report["methods"][0]
    assert row["converged"] and row["stop_reason"] == "plateau" and row["epochs"] == 3
    scores = [c["val_log_px"] for c in row["curve"]]
    best = scores.index(max(scores))
    assert row["extra"]["best_epoch"] == best + 1 and row["val_log_px"] == scores[best]


def test_compare_cli_end_to_end(tmp_path):
    out = tmp_path / "cmp"
    res = run_cli("compare", *LINEAR, "--budget", "fixed", "--epochs", "2", "--samples", "20", "--grad-samples", "4",
                  "--out", out,
                  "--method-set", "renyi_half:inference.objective=renyi,inference.alpha=0.5,inference.num_particles=3")
    assert res.returncode == 0, res.stderr
    report = json.loads((out / "comparison.json").read_text())
    names = [r["name"] for r in report["methods"]]
    assert names == list(BUILTIN_SETS) + ["renyi_half"]
    for row in report["methods"]:
        assert set(row) >= ROW_FIELDS, row["name"]
        assert row["iterations"] == 2 * 3 and len(row["curve"]) == 2  # 2 epochs of ceil(96 / 32) steps
        assert set(row["curve"][0]) >= {"epoch", "wall_time", "val_elbo", "val_log_px"}
        assert row["estimator"] == "exact" and row["stop_reason"] == "max_epochs" and not row["converged"]
        assert row["exact_log_likelihood"] is not None  # linear-Gaussian: exact, and that is the test number
        assert row["test_log_likelihood"] == row["exact_log_likelihood"] >= row["test_elbo"] - 1e-3
        assert row["extra"]["grad_variance_encoder"] > 0 and row["extra"]["grad_variance_decoder"] > 0
    by_name = {r["name"]: r for r in report["methods"]}
    assert by_name["iwae_k50"]["extra"]["inference"]["num_particles"] == 50
    assert by_name["renyi_half"]["extra"]["inference"]["alpha"] == 0.5
    table = (out / "comparison.md").read_text()
    assert all(f"| {n} |" in table or f"| **{n}** †" in table for n in names)
    for plot in report["plots"]:
        assert (out / plot).stat().st_size > 0
    assert len(report["plots"]) >= 3 and (out / "report.html").stat().st_size > 0
    assert report["command"].startswith("pyro-vae compare --set data.name=synthetic")
    assert "comparison.json" in res.stdout and "report.html" in res.stdout


def test_compare_cli_bad_method_is_one_line_error(tmp_path):
    res = run_cli("compare", "--methods", "nope", "--epochs", "1", "--out", tmp_path / "x")
    assert res.returncode == 2 and res.stderr.startswith("pyro-vae: error: --methods: unknown method 'nope'")
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_method_result_round_trips_to_a_dict():
    r = MethodResult("m", -1.0, -1.1, -0.9, None, -1.2, 1.0, 10.0, 3)
    assert set(r.to_dict()) == ROW_FIELDS and not r.converged


def test_method_sets_are_validated_before_any_training(tmp_path):
    res = run_cli("compare", "--methods", "analytic_kl", "--method-set", "bad:inference.alpha=1,inference.objective=renyi",
                  "--epochs", "1", "--out", tmp_path / "x")
    assert res.returncode == 2 and "method 'bad': inference.alpha" in res.stderr
    assert "[1/" not in res.stderr and not (tmp_path / "x").exists()


def test_variational_em_refuses_an_objective_without_a_pyro_loss_before_any_training(tmp_path):
    res = run_cli("compare", "--set", "inference.objective=rws", "--methods", "analytic_kl,variational_em",
                  "--epochs", "1", "--out", tmp_path / "x")
    assert res.returncode == 2 and "method 'variational_em': inference.objective: rws runs on the fused" in res.stderr
    assert "[1/" not in res.stderr and not (tmp_path / "x").exists() and len(res.stderr.strip().splitlines()) == 1


def test_conv_models_train_inside_compare_on_digits(tmp_path):
    """The conv pair needs the image shape: compare builds every method's VAE as `train` does."""
    cfg = validate_config({"model": {"decoder": {"name": "conv", "channels": [4]}},
                           "guide": {"name": "conv", "channels": [4]}, "train": {"batch_size": 256}})
    report = compare(cfg, resolve_methods(["analytic_kl"]), Budget(epochs=1, eval_samples=3, grad_samples=2),
                     tmp_path / "out", verbose=False)
    assert report["methods"][0]["iterations"] == 6 and (tmp_path / "out" / "comparison.md").is_file()


def test_a_method_refused_before_training_leaves_no_output_folder(tmp_path):
    cfg = validate_config({"data": {"name": "synthetic", "n": 60, "x_dim": 3}})
    with pytest.raises(ConfigError, match="method 'convy': .*conv"):
        compare(cfg, resolve_methods([], ["convy:model.decoder.name=conv"]), Budget(epochs=1), tmp_path / "out", verbose=False)
    assert not (tmp_path / "out").exists()


def test_an_svi_row_trains_on_the_loop_of_pyro_vae_train(tmp_path):
    """The same config through `compare` (analytic_kl: the default inference, so the config as given; a fixed
    budget) and `pyro-vae train` (stop: epochs): one engine, seed, initialisation and data order, so the same
    training ELBO after every epoch, bit for bit, and the same number of steps. (compare validates on its
    yardstick, train on the ELBO; validation draws from its own stream, so training does not see the difference.)"""
    cfg = validate_config({"data": {"name": "synthetic", "n": 120, "x_dim": 4}, "model": {"decoder": {"hidden": [8]}},
                           "guide": {"hidden": [8]}, "train": {"stop": "epochs", "epochs": 3, "batch_size": 32}})
    report = compare(cfg, resolve_methods(["analytic_kl"]), Budget(stop="fixed", epochs=3, eval_samples=5,
                                                                   grad_samples=2), tmp_path / "cmp", verbose=False)
    row = report["methods"][0]
    from pyro_vae import train_run

    run = train_run(cfg, tmp_path / "run", progress=False)
    assert [c["train_elbo"] for c in row["curve"]] == [m["train_elbo"] for m in run.metrics]
    assert row["train_elbo"] == run.metrics[-1]["train_elbo"] and row["iterations"] == run.summary["steps"] == 9
    assert row["extra"]["engine"] == "fused" and row["epochs"] == 3


def test_seeds_give_every_method_a_spread_and_a_paired_difference(tmp_path):
    """Two seeds of two methods on the same split: comparison.json keeps every seed's row, the summary's mean and
    the paired difference are the hand-computed ones from those rows."""
    cfg = validate_config(TINY)
    report = compare(cfg, resolve_methods(["analytic_kl", "monte_carlo_kl"]),
                     Budget(stop="fixed", epochs=2, eval_samples=5, grad_samples=2), tmp_path / "o", verbose=False,
                     seeds=2, baseline="monte_carlo_kl")
    rows = report["methods"]
    assert [(r["name"], r["seed"]) for r in rows] == [("analytic_kl", 0), ("analytic_kl", 1),
                                                      ("monte_carlo_kl", 0), ("monte_carlo_kl", 1)]
    assert rows[0]["test_log_likelihood"] != rows[1]["test_log_likelihood"]  # the seed changes the run
    summary = report["summary"]
    assert summary["baseline"] == report["baseline"] == "monte_carlo_kl"
    a = [r["test_log_likelihood"] for r in rows[:2]]
    b = [r["test_log_likelihood"] for r in rows[2:]]
    mean = summary["methods"][0]["test_log_likelihood"]
    assert mean["mean"] == pytest.approx(sum(a) / 2) and mean["n"] == 2
    diff = next(d for d in summary["differences"] if d["name"] == "analytic_kl" and d["metric"] == "test_log_likelihood")
    d = [a[0] - b[0], a[1] - b[1]]
    assert diff["mean"] == pytest.approx(sum(d) / 2)
    assert diff["se"] == pytest.approx(abs(d[0] - d[1]) / 2)  # sd of two values |d0 - d1| / sqrt(2), over sqrt(2)
    assert "Paired differences vs monte_carlo_kl" in (tmp_path / "o" / "comparison.md").read_text()


def test_bad_seeds_baseline_or_grid_are_refused_before_anything_is_written(tmp_path):
    cfg = validate_config(TINY)
    methods = resolve_methods(["analytic_kl"])
    for kwargs, match in (({"seeds": 0}, "--seeds 0"), ({"baseline": "em"}, "--baseline em: not one of"),
                          ({"lr_grid": [0.01, -1.0]}, "--lr-grid")):
        with pytest.raises(ConfigError, match=match):
            compare(cfg, methods, Budget(epochs=1), tmp_path / "never", verbose=False, **kwargs)
    assert not (tmp_path / "never").exists()
    res = run_cli("compare", "--methods", "analytic_kl", "--lr-grid", "0.01,fast", "--out", tmp_path / "x")
    assert res.returncode == 2 and res.stderr.strip().startswith("pyro-vae: error: --lr-grid 0.01,fast: expected")
    assert not (tmp_path / "x").exists()


def test_a_step_size_grid_is_searched_per_method_on_the_validation_yardstick(tmp_path):
    """Each candidate step size trains seed 0; the one with the best final validation log p(x) is kept, and its
    run is the method's first row (not trained twice)."""
    cfg = validate_config(TINY)
    report = compare(cfg, resolve_methods(["analytic_kl"]),
                     Budget(stop="fixed", epochs=2, eval_samples=5, grad_samples=2), tmp_path / "o", verbose=False,
                     lr_grid=[1e-4, 3e-2])
    steps = report["step_sizes"]
    candidates = steps["selection"]["analytic_kl"]
    best = max(candidates, key=lambda c: c["val_log_px"])
    assert [c["lr"] for c in candidates] == [1e-4, 3e-2] and steps["chosen"]["analytic_kl"] == best["lr"]
    row = report["methods"][0]
    assert row["extra"]["lr"] == best["lr"] and row["val_log_px"] == best["val_log_px"]
    assert "chosen per method from the grid" in (tmp_path / "o" / "comparison.md").read_text()


def test_runs_in_worker_processes_give_the_rows_of_one_process(tmp_path):
    """--jobs 2: the same (method, seed) rows in the same order as in one process, built-in and --method-set
    methods alike (workers rebuild a set from its overrides); only the timings differ, and the numbers up to the
    rounding of another thread count."""
    cfg = validate_config(TINY)
    methods = resolve_methods(["analytic_kl"], ["k3:inference.objective=iwae,inference.num_particles=3"])
    budget = Budget(stop="fixed", epochs=2, eval_samples=5, grad_samples=2)
    one = compare(cfg, methods, budget, tmp_path / "one", verbose=False, seeds=2)
    two = compare(cfg, methods, budget, tmp_path / "two", verbose=False, seeds=2, jobs=2)
    assert two["jobs"] == 2
    for a, b in zip(one["methods"], two["methods"], strict=True):
        assert (a["name"], a["seed"], a["epochs"], a["iterations"]) == (b["name"], b["seed"], b["epochs"], b["iterations"])
        assert b["test_log_likelihood"] == pytest.approx(a["test_log_likelihood"], rel=1e-4)
    with pytest.raises(ConfigError, match="--jobs 0"):
        compare(cfg, methods, budget, tmp_path / "never", verbose=False, jobs=0)


def test_final_ais_scores_every_method_on_the_same_reference_and_keeps_exact_values(tmp_path):
    """--final ais: where no closed form exists every row's test log p(x) is AIS (from the method's own q: the
    encoder's, or variational EM's per-point E-step), labelled so; it lies above the method's own IWAE-10 by more
    than their Monte Carlo errors (AIS with 20 temperatures is the tighter bound); a linear-Gaussian row keeps
    its exact value."""
    mlp = validate_config({"data": {"name": "synthetic", "n": 120, "x_dim": 4}, "model": {"decoder": {"hidden": [8]}},
                           "guide": {"hidden": [8]}, "train": {"batch_size": 32}})
    budget = Budget(stop="fixed", epochs=3, eval_samples=10, grad_samples=2, final="ais", ais_steps=20,
                    ais_chains=8, ais_leapfrog=5)
    report = compare(mlp, resolve_methods(["analytic_kl", "variational_em"]), budget, tmp_path / "mlp", verbose=False)
    for row in report["methods"]:
        assert row["estimator"] == "AIS (T=20, C=8, L=5)", row["name"]
        assert row["test_log_likelihood"] == row["extra"]["test_ais"] and row["extra"]["test_ais_mc_se"] > 0
    svi = report["methods"][0]
    noise = (svi["extra"]["test_ais_mc_se"] ** 2 + svi["extra"]["test_iwae_mc_se"] ** 2) ** 0.5
    assert svi["extra"]["test_ais"] - svi["extra"]["test_iwae"] > 3 * noise
    assert "AIS (T=20, C=8, L=5)" in (tmp_path / "mlp" / "comparison.md").read_text()
    linear = validate_config({"data": {"name": "synthetic", "n": 120, "x_dim": 4}, "model": {"latent_dim": 2,
                              "decoder": {"name": "linear"}}, "guide": {"hidden": [8]}, "train": {"batch_size": 32}})
    row = compare(linear, resolve_methods(["analytic_kl"]), budget, tmp_path / "lin", verbose=False)["methods"][0]
    assert row["estimator"] == "exact" and row["test_log_likelihood"] == row["exact_log_likelihood"]
    with pytest.raises(ConfigError, match="final 'hmc'"):
        Budget(final="hmc")


def test_a_method_set_with_a_fused_only_objective_trains_and_reports_its_gradient_noise(tmp_path):
    """--method-set with inference.objective=rws (no Pyro loss): trained on the fused engine, and its gradient
    statistics taken on that same fused loss, the encoder's and decoder's both finite."""
    cfg = validate_config({"data": {"name": "synthetic", "n": 120, "x_dim": 4}, "model": {"decoder": {"hidden": [8]}},
                           "guide": {"hidden": [8]}, "train": {"batch_size": 32}})
    methods = resolve_methods([], ["rws5:inference.objective=rws,inference.num_particles=5"])
    report = compare(cfg, methods, Budget(stop="fixed", epochs=2, eval_samples=5, grad_samples=3), tmp_path / "cmp",
                     verbose=False)
    (row,) = report["methods"]
    assert row["name"] == "rws5" and row["extra"]["engine"] == "fused" and row["epochs"] == 2
    for group in ("encoder", "decoder"):
        assert row["extra"][f"grad_snr_{group}"] > 0 and row["extra"][f"grad_variance_{group}"] > 0


def test_test_points_score_every_method_on_the_same_fixed_rows_of_the_test_split(tmp_path):
    """--test-points N: N rows of the test split, drawn once (seed 0) and kept in their order, for every method;
    the exact numbers are those of those rows; the report says how many it scored."""
    import torch

    from pyro_vae.baselines import ppca
    from pyro_vae.data import load_data

    cfg = validate_config({"data": {"name": "synthetic", "n": 200, "x_dim": 4}, "model": {
        "latent_dim": 2, "decoder": {"name": "linear"}, "likelihood": {"learn_scale": "global"}},
        "guide": {"hidden": []}, "train": {"batch_size": 32}})
    data = load_data(cfg.data, cfg.seed)
    budget = Budget(stop="fixed", epochs=2, eval_samples=5, grad_samples=2, test_points=7)
    rows = budget.test_split(data)
    assert rows.shape == (7, 4) and torch.equal(rows, budget.test_split(data))
    index = [int((data.test == r).all(1).nonzero()) for r in rows]
    assert index == sorted(index) and len(set(index)) == 7
    assert Budget(test_points=len(data.test)).test_split(data) is data.test and Budget().test_split(data) is data.test
    report = compare(cfg, resolve_methods(["em", "analytic_kl"]), budget, tmp_path / "cmp", verbose=False)
    assert report["n_test_scored"] == 7 and report["n_test"] == len(data.test)
    em, svi = report["methods"]
    q = ppca.ppca_closed_form(data.train, 2).params
    assert em["extra"]["closed_form_test_log_likelihood"] == pytest.approx(
        ppca.log_likelihood(rows, q["W"], q["b"], q["noise_var"]), rel=1e-9)
    assert svi["estimator"] == "exact" and "test numbers on 7 of them" in (tmp_path / "cmp" / "comparison.md").read_text()
    with pytest.raises(ConfigError, match="budget: test_points 0 must be at least 1"):
        Budget(test_points=0)


def test_bad_test_points_are_refused_in_one_line(tmp_path):
    res = run_cli("compare", "--methods", "analytic_kl", "--test-points", "0", "--out", tmp_path / "x")
    assert res.returncode == 2 and "--test-points 0: must be a finite number > 0" in res.stderr
    assert not (tmp_path / "x").exists()
