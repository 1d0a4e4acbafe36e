"""The ``pyro-vae`` CLI end to end, and every bad-input case: exit 2, one line, nothing touched."""

import json

import numpy as np
import pytest
import yaml

from conftest import TINY, run_cli


def test_train_end_to_end_writes_the_run_directory(tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", *TINY, "--out", out)
    assert r.returncode == 0, r.stderr
    assert "KL per latent site (requested analytic): z: analytic" in r.stdout
    assert f"run directory: {out}" in r.stdout
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert all({"epoch", "train_elbo", "val_elbo", "seconds"} <= row.keys() for row in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kl"] == {"z": "analytic"} and summary["epochs"] == 2
    for name in ("learning_curves", "reconstructions", "samples", "latent"):
        assert (out / "plots" / f"{name}.png").stat().st_size > 1000
    assert yaml.safe_load((out / "config.yaml").read_text())["model"]["decoder"]["hidden"] == [16]
    assert (out / "checkpoint.pt").is_file()


def test_student_t_prior_reports_monte_carlo_kl(tmp_path):
    r = run_cli("train", *TINY, "--set", "model.prior.name=student_t", "--out", tmp_path / "t")
    assert r.returncode == 0, r.stderr
    assert "z: monte_carlo" in r.stdout
    assert json.loads((tmp_path / "t" / "summary.json").read_text())["kl"] == {"z": "monte_carlo"}


def test_components_lists_every_registry():
    r = run_cli("components")
    assert r.returncode == 0
    for name in ("student_t", "laplace", "bernoulli", "linear", "mean_field", "npz", "synthetic"):
        assert name in r.stdout


def write_config(path, text):
    path.write_text(text)
    return path


BAD_INPUT = [
    ("misspelt key", lambda d: ["--set", "model.latnt_dim=3"], "model.latnt_dim: unknown key (did you mean 'latent_dim'?)"),
    ("wrong type", lambda d: ["--set", "train.epochs=many"], "train.epochs"),
    ("negative latent_dim", lambda d: ["--set", "model.latent_dim=-1"], "model.latent_dim"),
    ("missing config", lambda d: [d / "nope.yaml"], "nope.yaml: config file not found"),
    ("unreadable config", lambda d: [write_config(d / "bad.yaml", "a: [\n")], "bad.yaml: not valid YAML"),
    ("missing data file", lambda d: ["--set", "data.name=npz", "--set", f"data.path={d / 'none.npz'}"], "data.path: file not found"),
    ("npz without arrays", lambda d: ["--set", "data.name=npz", "--set", f"data.path={npz(d, other=np.zeros((30, 2)))}"], "expected an array 'x'"),
    ("nan in data", lambda d: ["--set", "data.name=npz", "--set", f"data.path={npz(d, x=np.full((30, 2), np.nan))}"], "non-finite value (nan)"),
    ("bernoulli on grey data", lambda d: ["--set", "model.likelihood.name=bernoulli"], "'bernoulli' needs data in {0, 1}"),
]


def npz(d, **arrays):
    path = d / "user.npz"
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case,args,message", BAD_INPUT, ids=[c[0] for c in BAD_INPUT])
def test_bad_input_exits_2_with_one_line_and_touches_nothing(tmp_path, case, args, message):
    out = tmp_path / "existing"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')
    (out / "checkpoint.pt").write_bytes(b"precious")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    r = run_cli("train", *args(tmp_path), "--out", out, "--overwrite")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert lines[0].startswith("pyro-vae: error: ") and message in lines[0]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_existing_nonempty_out_is_refused_without_overwrite(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    r = run_cli("train", *TINY, "--out", out)
    assert r.returncode == 2 and "pass --overwrite" in r.stderr
    assert (out / "notes.txt").read_text() == "mine" and len(list(out.iterdir())) == 1
