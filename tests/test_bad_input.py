"""Bad input everywhere a user can give it: one line, exit 2, no traceback, and no file changed."""

import os
import re
import shutil

import numpy as np
import pytest
import yaml
from hypothesis import given, settings, strategies as st

from conftest import run_cli
from pyro_vae import load_config, load_run, train_run
from pyro_vae.cli import main
from pyro_vae.config import apply_overrides
from pyro_vae.errors import ConfigError, RunDirError



@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished two-epoch run on a user's .npz, named by a relative path so that copies of the whole
    directory stay valid (kept pristine; each case works on a copy, from inside it)."""
    root = tmp_path_factory.mktemp("finished")
    np.savez(root / "user.npz", x=np.random.default_rng(0).normal(size=(100, 5)))
    cfg = load_config(None, ["data.name=npz", "data.path=user.npz", "model.decoder.hidden=[8]",
                             "guide.hidden=[8]", "train.epochs=2", "train.batch_size=40"])
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train_run(cfg, "run", progress=False)
    finally:
        os.chdir(cwd)
    return root


def edit_yaml(path, **changes):
    raw = yaml.safe_load(path.read_text())
    for key, value in changes.items():
        section, name = key.split("__")
        raw[section][name] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def flip_a_byte(path):
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def unfinish(run):
    (run / "summary.json").unlink()  # a run killed after its last checkpoint: resume must load the data again


# (case, how to break the copied run directory ``run`` (root: its parent), expected message)
RUN_DIR_CASES = [
    ("missing directory", lambda run: shutil.rmtree(run), "run: run directory not found"),
    ("no config.yaml", lambda run: (run / "config.yaml").unlink(), "run: not a run directory (no config.yaml)"),
    ("config.yaml not YAML", lambda run: (run / "config.yaml").write_text("seed: [\n"), "config.yaml: not valid YAML"),
    ("config.yaml unknown key", lambda run: edit_yaml(run / "config.yaml", train__epoks=3),
     "config.yaml: train.epoks: unknown key (did you mean 'epochs'?)"),
    ("no checkpoint", lambda run: [(run / n).unlink() for n in ("checkpoint.pt", "checkpoint.prev.pt")],
     "run: no usable checkpoint (no checkpoint.pt)"),
    ("both checkpoints truncated", lambda run: [truncate(run / n) for n in ("checkpoint.pt", "checkpoint.prev.pt")],
     "no usable checkpoint (checkpoint.pt is truncated ("),
    ("checkpoints corrupt", lambda run: [flip_a_byte(run / n) for n in ("checkpoint.pt", "checkpoint.prev.pt")],
     "no usable checkpoint (checkpoint.pt is corrupt (checksum mismatch); checkpoint.prev.pt is corrupt"),
    ("checkpoint not ours", lambda run: [(run / "checkpoint.pt").write_bytes(b"precious"), (run / "checkpoint.prev.pt").unlink()],
     "no usable checkpoint (checkpoint.pt is not a pyro_vae checkpoint)"),
    ("checkpoint empty", lambda run: [(run / "checkpoint.pt").write_bytes(b""), (run / "checkpoint.prev.pt").unlink()],
     "no usable checkpoint (checkpoint.pt is empty)"),
]
RESUME_ONLY_CASES = [
    ("config.yaml edited", lambda run: edit_yaml(run / "config.yaml", train__epochs=5),
     "config.yaml: differs from the config the checkpoint was trained with"),
    ("data file gone", lambda run: [unfinish(run), (run.parent / "user.npz").unlink()], "data.path: file not found"),
    ("data file changed", lambda run: [unfinish(run), np.savez(run.parent / "user.npz", x=np.zeros((100, 3)))],
     "does not fit this run (ValueError: x_dim 5 but the data has 3 features)"),
]


def snapshot(root):
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}


def broken_copy(finished, tmp_path, monkeypatch, breaks):
    root = tmp_path / "copy"
    shutil.copytree(finished, root)
    monkeypatch.chdir(root)
    breaks(root / "run")
    return root


@pytest.mark.parametrize("case,breaks,message", RUN_DIR_CASES + RESUME_ONLY_CASES,
                         ids=[c[0] for c in RUN_DIR_CASES + RESUME_ONLY_CASES])
def test_resume_refuses_a_broken_run_directory(finished, tmp_path, monkeypatch, capsys, case, breaks, message):
    root = broken_copy(finished, tmp_path, monkeypatch, breaks)
    before = snapshot(root)
    capsys.readouterr()
    assert main(["resume", str(root / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and message in err[0], err
    assert snapshot(root) == before


@pytest.mark.parametrize("case,breaks,message", RUN_DIR_CASES, ids=[c[0] for c in RUN_DIR_CASES])
def test_evaluate_refuses_a_broken_run_directory(finished, tmp_path, monkeypatch, capsys, case, breaks, message):
    """``evaluate`` reads runs through ``load_run``: the same one-line RunDirError, and nothing written."""
    root = broken_copy(finished, tmp_path, monkeypatch, breaks)
    before = snapshot(root)
    capsys.readouterr()
    assert main(["evaluate", str(root / "run"), "--no-progress", "--samples", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and message in err[0], err
    assert snapshot(root) == before
    with pytest.raises(RunDirError, match=re.escape(message)):
        load_run(root / "run")


def test_resume_of_a_missing_directory_in_a_real_process(tmp_path):
    r = run_cli("resume", tmp_path / "nope")
    assert r.returncode == 2 and r.stderr == f"pyro-vae: error: {tmp_path / 'nope'}: run directory not found\n"


def write(path, content):
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


TRAIN_CASES = [
    ("--set without =", lambda d: ["--set", "train.epochs"], "--set 'train.epochs': expected key=value"),
    ("--set unparseable", lambda d: ["--set", "guide.hidden=[8,"], "--set guide.hidden: cannot parse value '[8,' as YAML"),
    ("--set into a value", lambda d: ["--set", "seed.x=1"], "seed: Input should be a valid integer (got a mapping)"),
    ("on_nonfinite typo", lambda d: ["--set", "train.on_nonfinite=skp"], "train.on_nonfinite"),
    ("checkpoint_every_steps 0", lambda d: ["--set", "train.checkpoint_every_steps=0"], "train.checkpoint_every_steps"),
    ("config is a list", lambda d: [write(d / "list.yaml", "- 1\n- 2\n")], "list.yaml: expected a mapping of sections"),
    ("config not UTF-8", lambda d: [write(d / "bin.yaml", b"\xff\xfe\x00")], "bin.yaml: cannot read config"),
    ("npz not a zip", lambda d: ["--set", "data.name=npz", "--set", f"data.path={write(d / 'x.npz', b'PK nonsense')}"],
     "data.path: cannot read"),
]


@pytest.mark.parametrize("case,args,message", TRAIN_CASES, ids=[c[0] for c in TRAIN_CASES])
def test_train_refuses_bad_input_and_keeps_the_existing_run(finished, tmp_path, monkeypatch, capsys, case, args, message):
    root = broken_copy(finished, tmp_path, monkeypatch, lambda run: None)
    argv = [str(a) for a in args(tmp_path)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", *argv, "--out", str(root / "run"), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and message in err[0], err
    assert snapshot(tmp_path) == before


# -- property-based: overrides land where they say, and never leak or raise anything but ConfigError --------------
keys = st.lists(st.text("abcdefgh_", min_size=1, max_size=6), min_size=1, max_size=4)
scalars = st.one_of(st.integers(-10**6, 10**6), st.booleans(), st.none(), st.text("abcxyz", min_size=1, max_size=8),
                    st.floats(allow_nan=False, allow_infinity=False, width=32))


@settings(max_examples=150, deadline=None)
@given(keys, scalars)
def test_override_sets_exactly_that_key(path, value):
    text = yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()
    raw = apply_overrides({"keep": {"me": 1}}, [f"{'.'.join(path)}={text}"])
    node = raw
    for part in path:
        node = node[part]
    assert node == value or (value is None and node == "")
    if path[0] != "keep":
        assert raw["keep"] == {"me": 1}


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=30))
def test_any_override_text_is_applied_or_refused_in_one_line(item):
    try:
        load_config(None, [item])
    except ConfigError as err:
        assert "\n" not in str(err)
