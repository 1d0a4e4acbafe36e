"""The NaN/inf guard: a non-finite loss or gradient stops the run (or skips the step), names the site,
and never replaces the last good checkpoint."""

import re

import numpy as np
import pytest
import torch

from pyro_vae.cli import main
from pyro_vae.rundir import RunDir

ROW = 17  # the train row that carries the planted extreme value



@pytest.fixture
def planted(tmp_path):
    """Clean val/test splits and a train split whose row ``ROW`` holds 1e30: its squared residual overflows
    float32, so log p(x|z) at site 'x' is -inf for that point (and only that point)."""
    rng = np.random.default_rng(0)
    train, val, test = rng.normal(size=(120, 4)), rng.normal(size=(20, 4)), rng.normal(size=(20, 4))
    train[ROW, 2] = 1e30
    path = tmp_path / "planted.npz"
    np.savez(path, train=train, val=val, test=test)
    return ["--set", "data.name=npz", "--set", f"data.path={path}", "--set", "model.decoder.hidden=[8]",
            "--set", "guide.hidden=[8]", "--set", "train.batch_size=30", "--set", "train.epochs=2", "--no-progress"]


def run(capsys, *args):
    status = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return status, out, err.strip().splitlines()


def test_planted_extreme_value_stops_naming_site_and_row(tmp_path, planted, capsys):
    out = tmp_path / "run"
    status, _, err = run(capsys, "train", *planted, "--out", out)
    assert status == 3 and len(err) == 1
    assert err[0].startswith("pyro-vae: error: non-finite step ")
    assert re.search(r": the loss is (nan|inf); ", err[0])
    assert f"model site 'x': log_prob is -inf for 1 of 30 points (first: train row {ROW})" in err[0]
    assert f"kept the last good checkpoint {out / 'checkpoint.pt'}" in err[0]
    state = RunDir(out).load_checkpoint()  # the step-0 checkpoint: intact and finite
    assert state["step"] == 0 and all(torch.isfinite(t).all() for t in state["vae"].values())
    assert not (out / "summary.json").exists()


def test_skip_mode_skips_exactly_the_poisoned_batch(tmp_path, planted, capsys):
    out = tmp_path / "run"
    status, stdout, err = run(capsys, "train", *planted, "--set", "train.on_nonfinite=skip", "--out", out)
    assert status == 0, err
    assert len(err) == 2 and all(line.startswith("pyro-vae: warning: skipped non-finite step") for line in err)
    assert all("site 'x'" in line and f"train row {ROW}" in line for line in err)
    rows = RunDir(out).read_metrics()
    assert [r["skipped_steps"] for r in rows] == [1, 1]  # one batch per epoch holds row ROW
    assert all(np.isfinite(r["train_elbo"]) for r in rows)
    assert all(torch.isfinite(t).all() for t in RunDir(out).load_checkpoint()["vae"].values())


@pytest.mark.parametrize("validate_args", [False, True])
def test_huge_learning_rate_diverges_and_is_caught(tmp_path, capsys, validate_args):
    """lr = 1e30 throws the parameters to ~1e30 after one Adam step; the next forward pass overflows.
    With Pyro's validation on, the NaN is rejected by a distribution's constructor instead (a ValueError)."""
    out = tmp_path / "run"
    status, _, err = run(capsys, "train", "--set", "data.name=synthetic", "--set", "data.n=200", "--set", "optim.lr=1e30",
                         "--set", f"train.validate_args={validate_args}", "--set", "model.decoder.hidden=[8]",
                         "--set", "guide.hidden=[8]", "--set", "train.epochs=2", "--no-progress", "--out", out)
    assert status == 3 and len(err) == 1 and err[0].startswith("pyro-vae: error: non-finite step 2 (epoch 1)")
    assert "site '" in err[0] or "non-finite parameters" in err[0]
    state = RunDir(out).load_checkpoint()
    assert all(torch.isfinite(t).all() for t in state["vae"].values())


def test_grads_finite_tests_elements_not_norms():
    from pyro_vae.training.guards import grads_finite

    def params(*values):
        out = []
        for v in values:
            p = torch.nn.Parameter(torch.zeros(3))
            p.grad = torch.tensor([0.0, 1.0, v])
            out.append(p)
        return out

    assert grads_finite(params(1.0, 2.0)) and grads_finite([])
    assert grads_finite(params(1e30, 3e38))  # finite, though their squares (an L2 norm) overflow
    assert not grads_finite(params(1.0, float("nan")))
    assert not grads_finite(params(float("-inf"), 1.0))
