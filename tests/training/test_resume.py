"""Exact resume: runs killed (SIGKILL, SIGINT, SIGTERM) and resumed end bitwise equal to an uninterrupted run."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import given, settings, strategies as st

from conftest import interrupt_at_step
from pyro_vae import load_config, train_run, validate_config
from pyro_vae.cli import main
from pyro_vae.config import dump
from pyro_vae.rundir import RunDir
from pyro_vae.training.trainer import TIMING_FIELDS, Trainer
from pyro_vae.build import prepare

# One intra-op thread: fast under load on shared cores, and the same reduction order in every process.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
EPOCHS = 12  # 15 steps per epoch; checkpoints every 4 steps as well, so kills also land mid-epoch
SETTINGS = ["data.name=synthetic", "data.n=600", "data.x_dim=6", "model.decoder.hidden=[8]", "guide.hidden=[8]",
            "train.batch_size=32", f"train.epochs={EPOCHS}", "train.checkpoint_every_steps=4"]
TRAIN = [a for s in SETTINGS for a in ("--set", s)] + ["--no-progress"]



def start(*args):
    return subprocess.Popen([sys.executable, "-m", "pyro_vae", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV)


def wait_for_epoch(proc, epoch):
    """Read the plain progress lines until epoch ``epoch`` is reported (False if the process ended first)."""
    for line in proc.stdout:
        if line.startswith("epoch") and int(line.split()[1].split("/")[0]) >= epoch:
            return True
    return False


def parameters(path):
    return RunDir(path).load_checkpoint(quiet=True)["vae"]


def metrics(path):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in RunDir(path).read_metrics()]


def assert_same_run(path, reference):
    ours, theirs = parameters(path), parameters(reference)
    assert ours.keys() == theirs.keys()
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    assert metrics(path) == metrics(reference)
    assert [row["epoch"] for row in metrics(path)] == list(range(1, EPOCHS + 1))
    assert (path / "summary.json").is_file() and (path / "plots" / "learning_curves.png").is_file()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("reference") / "run"
    proc = start("train", *TRAIN, "--out", out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return out


def kill_and_resume(proc, out, targets, rng, jitter: float) -> int:
    """For each target epoch (``None``: at once), SIGKILL ``proc`` a random moment of up to ``jitter`` s after that
    epoch is reported, check that checkpoint.pt itself is whole, and resume; the last resume must finish cleanly.
    Returns how many kills hit a live process (a run that finished before its kill tests nothing)."""
    kills = 0
    for target in targets:
        if target is not None:
            wait_for_epoch(proc, target)
            time.sleep(rng.uniform(0.0, jitter))
        if proc.poll() is None:
            proc.kill()
            kills += 1
        proc.communicate(timeout=300)
        state = RunDir(out).load_checkpoint()  # checkpoint.pt itself is whole at every moment
        assert Path(state["_path"]).name == "checkpoint.pt" and not state["_problems"]
        proc = start("resume", out, "--no-progress")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    return kills


def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(reference, tmp_path):
    rng = random.Random(6)
    out = tmp_path / "run"
    proc = start("train", *TRAIN, "--out", out)
    # kill 1: a random moment soon after the run directory exists (possibly inside epoch 1);
    # kills 2 and 3: a random moment after a random epoch is reported (during its checkpoint, or later)
    while not (out / "config.yaml").exists() and proc.poll() is None:
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, 0.3))
    kills = kill_and_resume(proc, out, [None] + sorted(rng.sample(range(2, EPOCHS), 2)), rng, jitter=0.05)
    assert kills >= 2  # a run that finished before its kill tests nothing
    assert not list(out.glob(".*.tmp"))  # resume removed what the killed writers left
    assert_same_run(out, reference)


@pytest.mark.parametrize("sig,status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_writes_a_resumable_checkpoint(reference, tmp_path, sig, status):
    out = tmp_path / "run"
    proc = start("train", *TRAIN, "--out", out)
    assert wait_for_epoch(proc, 2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].endswith(f"continue with: pyro-vae resume {out}")
    state = RunDir(out).load_checkpoint()
    assert 2 * 15 <= state["step"] < EPOCHS * 15 and not (out / "summary.json").exists()
    if sig == signal.SIGTERM:
        return  # the same path as SIGINT from here on; one resume is enough to keep the suite fast
    proc = start("resume", out, "--no-progress")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_run(out, reference)


# The plateau rule at work: three cuts of the step size (0.03 -> 0.015 -> 0.0075 -> 0.005, the floor) and a stop
# some epochs after the best one, well before the cap, whose parameters are then restored
PLATEAU = [s for s in SETTINGS if not s.startswith("train.epochs")] + [
    "train.epochs=60", "optim.lr=0.03", "train.patience=3", "train.min_delta=0.1", "train.min_lr=0.005"]


@pytest.fixture(scope="module")
def plateau_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("plateau") / "run"
    proc = start("train", *[a for s in PLATEAU for a in ("--set", s)], "--no-progress", "--out", out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    state = RunDir(out).load_checkpoint(quiet=True)
    rows = metrics(out)
    cuts = [a["epoch"] for a, b in zip(rows, rows[1:]) if b["lr"] != a["lr"]]  # epochs whose end cut the step size
    assert state["stopping"]["reason"] == "plateau" and state["restored"] and len(cuts) >= 2
    assert state["stopping"]["best_epoch"] < state["epoch"] < 60
    return out, cuts, state["epoch"]


def test_sigkill_while_the_plateau_rule_cuts_the_step_size_then_resume_is_bitwise_exact(plateau_reference, tmp_path):
    """Kills just after two epochs that cut the step size and just after the last epoch (while the best parameters
    are restored and the summary written): the resumed run ends where the uninterrupted one did."""
    reference, cuts, last = plateau_reference
    rng = random.Random(7)
    out = tmp_path / "run"
    settings = [a for s in PLATEAU for a in ("--set", s)]
    proc = start("train", *settings, "--no-progress", "--out", out)
    assert kill_and_resume(proc, out, sorted(rng.sample(cuts, 2)) + [last], rng, jitter=0.02) >= 2
    ours, theirs = RunDir(out).load_checkpoint(quiet=True), RunDir(reference).load_checkpoint(quiet=True)
    for name, tensor in theirs["vae"].items():
        assert torch.equal(ours["vae"][name], tensor), name
    assert ours["stopping"] == theirs["stopping"] and ours["restored"] and ours["finished"]
    assert ours["optimizer"]["param_groups"][0]["lr"] == theirs["optimizer"]["param_groups"][0]["lr"] == 0.005
    assert metrics(out) == metrics(reference)
    summary = lambda path: yaml.safe_load((path / "summary.json").read_text())
    assert summary(out)["stopped"] == summary(reference)["stopped"]


@pytest.fixture
def tiny(tmp_path):
    """A config factory for in-process runs: 300 grey points in [0, 1]^8, dynamically binarized, 6 steps per epoch."""
    x = np.random.default_rng(0).uniform(size=(300, 8))
    np.savez(tmp_path / "grey.npz", x=x)

    def make(*extra):
        return load_config(None, ["data.name=npz", f"data.path={tmp_path / 'grey.npz'}", "data.binarize=dynamic",
                                  "model.likelihood.name=bernoulli", "model.decoder.hidden=[8]", "guide.hidden=[8]",
                                  "train.batch_size=40", "train.epochs=3", "inference.kl_warmup_epochs=2", *extra])
    return make


def test_mid_epoch_interrupt_resumes_dynamic_binarization_exactly(tmp_path, tiny):
    """In process: stop after step 9 of 18 (mid-epoch 2), resume, and match an uninterrupted run bitwise."""
    cfg = tiny()
    whole = train_run(cfg, tmp_path / "whole", progress=False)

    path = interrupt_at_step(cfg, tmp_path / "whole" / "config.yaml", tmp_path / "cut", 8,
                             match=r"at step 9 \(epoch 2, batch 3/6\)")
    assert RunDir(path).load_checkpoint()["current"]["batch"] == 3
    assert main(["resume", str(path), "--no-progress"]) == 0
    resumed = parameters(path)
    for name, tensor in whole.vae.state_dict().items():
        assert torch.equal(resumed[name], tensor), name
    assert metrics(path) == metrics(tmp_path / "whole")


def fit(cfg):
    data, vae = prepare(cfg)
    trainer = Trainer.from_config(cfg, data, vae, progress=False)
    rows = [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in trainer.fit()]
    return rows, vae.state_dict()


def test_same_config_and_seed_give_the_same_metrics(tiny):
    (first, params), (second, again) = fit(tiny()), fit(tiny())
    assert first == second and len(first) == 3
    assert all(torch.equal(params[k], again[k]) for k in params)
    assert fit(tiny("seed=1"))[0] != first  # the seed does reach the run


def test_resuming_a_finished_run_changes_nothing(tmp_path, tiny, capsys):
    train_run(tiny("train.epochs=1"), tmp_path / "done", progress=False)
    before = {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()}
    assert main(["resume", str(tmp_path / "done")]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()} == before


def test_resuming_a_run_the_plateau_rule_stopped_changes_nothing(tmp_path, tiny, capsys):
    train_run(tiny("train.epochs=200", "train.patience=1", "train.min_delta=0", "train.min_lr=1"), tmp_path / "done",
              progress=False)
    state = RunDir(tmp_path / "done").load_checkpoint(quiet=True)
    assert state["finished"] and state["stopping"]["reason"] == "plateau" and state["epoch"] < 200
    before = {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()}
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "done")]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tmp_path / "done").rglob("*") if p.is_file()} == before


def test_truncated_checkpoint_falls_back_to_the_previous_one_and_still_ends_exactly(tmp_path, tiny, capsys):
    train_run(tiny(), tmp_path / "r", progress=False)
    final = parameters(tmp_path / "r")
    ckpt = tmp_path / "r" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    (tmp_path / "r" / "summary.json").unlink()
    capsys.readouterr()
    assert main(["resume", str(tmp_path / "r"), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt is truncated" in err[0] and "using checkpoint.prev.pt (epoch 2" in err[0]
    for name, tensor in final.items():
        assert torch.equal(parameters(tmp_path / "r")[name], tensor), name
    assert [row["epoch"] for row in RunDir(tmp_path / "r").read_metrics()] == [1, 2, 3]
    assert (tmp_path / "r" / "summary.json").is_file()


positive = st.floats(min_value=1e-30, max_value=1e30, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(lr=positive, beta=positive, clip=st.one_of(st.none(), positive), seed=st.integers(0, 2**31),
       hidden=st.lists(st.integers(1, 512), max_size=3), every=st.one_of(st.none(), st.integers(1, 10**6)),
       on_nonfinite=st.sampled_from(["stop", "skip"]))
def test_config_hash_survives_the_config_yaml_round_trip(lr, beta, clip, seed, hidden, every, on_nonfinite):
    """resume refuses a config.yaml whose hash differs from the checkpoint's, so writing and reading back
    config.yaml must never change the hash (floats included)."""
    cfg = validate_config({"seed": seed, "optim": {"lr": lr, "clip_norm": clip}, "inference": {"beta": beta},
                           "model": {"decoder": {"hidden": hidden}},
                           "train": {"checkpoint_every_steps": every, "on_nonfinite": on_nonfinite}})
    again = validate_config(yaml.safe_load(dump(cfg)))
    assert again == cfg and again.hash() == cfg.hash()


def test_a_run_from_before_a_key_was_added_still_resumes(tmp_path, tiny, capsys):
    """A checkpoint written before a config key existed (here: the likelihood's scale_init, at its default)
    holds a config without it and that config's hash; config.yaml lacks it too. Both read back with the
    default filled in, so resume accepts the run and finishes it; an edited config.yaml is still refused."""
    from pyro_vae.rundir import decode_checkpoint, encode_checkpoint

    run = tmp_path / "old"
    train_run(tiny("train.epochs=2", "train.stop=epochs", "model.likelihood.name=normal", "data.binarize=none"), run,
              progress=False)
    ckpt = run / "checkpoint.pt"
    state = decode_checkpoint(ckpt.read_bytes())
    del state["config"]["model"]["likelihood"]["scale_init"]
    state["config_hash"], state["finished"] = "an older hash", False
    ckpt.write_bytes(encode_checkpoint(state))
    (run / "summary.json").unlink()
    raw = yaml.safe_load((run / "config.yaml").read_text())
    del raw["model"]["likelihood"]["scale_init"]
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    assert main(["resume", str(run), "--no-progress"]) == 0 and (run / "summary.json").is_file()
    raw["optim"]["lr"] = 0.5
    (run / "config.yaml").write_text(yaml.safe_dump(raw))
    capsys.readouterr()
    assert main(["resume", str(run), "--no-progress"]) == 2
    assert "differs from the config the checkpoint was trained with" in capsys.readouterr().err
