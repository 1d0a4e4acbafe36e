"""Bad input everywhere a user can give it: one line, exit 2, no traceback, and no file changed."""

import errno
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

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
    ("a file, not a directory", lambda run: [shutil.rmtree(run), run.write_text("x")], "run: is a file, not a run directory"),
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


def one_error_line(capsys, message: str) -> str:
    """The single stderr line the CLI printed: ``pyro-vae: error: ...`` holding ``message``, nothing else."""
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pyro-vae: error: ") and message in err[0], err
    return err[0]


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
    err = [one_error_line(capsys, message)]
    assert snapshot(root) == before


@pytest.mark.parametrize("case,breaks,message", RUN_DIR_CASES, ids=[c[0] for c in RUN_DIR_CASES])
def test_evaluate_refuses_a_broken_run_directory(finished, tmp_path, monkeypatch, capsys, case, breaks, message):
    """``evaluate`` reads runs through ``load_run``: the same one-line RunDirError, and nothing written."""
    root = broken_copy(finished, tmp_path, monkeypatch, breaks)
    before = snapshot(root)
    capsys.readouterr()
    assert main(["evaluate", str(root / "run"), "--no-progress", "--samples", "2"]) == 2
    err = [one_error_line(capsys, message)]
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
    err = [one_error_line(capsys, message)]
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


# -- issue 13: late errors under --overwrite, the file system, numbers, YAML and the CLI's own errors ----------
def with_user_files(run):
    """A finished run as a user leaves it: an evaluation, a figure of their own in plots/, notes beside it."""
    assert main(["evaluate", str(run), "--samples", "2", "--no-progress"]) == 0
    (run / "plots" / "mine.png").write_bytes(b"a user's figure")
    (run / "notes.txt").write_text("why I ran this\n")


def dup_yaml(d):
    return [write(d / "dup.yaml", "train:\n  epochs: 3\n  batch_size: 8\n  epochs: 4\n")]


# (case, argv after the command given (root: the copy holding ``run``, d: a scratch folder), message)
OVERWRITE_CASES = [
    ("late error: fused engine and score function", lambda root, d: ["--set", "train.engine=fused", "--set",
                                                                     "inference.estimator=score_function"],
     "train.engine: 'fused' does not cover"),
    ("config is the run's own config.yaml", lambda root, d: [root / "run" / "config.yaml"],
     "is the config.yaml that --overwrite would replace"),
    ("seed beyond 64 bits", lambda root, d: ["--set", f"seed={2 ** 64}"], f"seed: Input should be less than or equal to {2 ** 32 - 1}"),
    ("alpha NaN", lambda root, d: ["--set", "inference.objective=renyi", "--set", "inference.alpha=.nan"],
     "inference.alpha: Input should be a finite number (got nan)"),
    ("lr infinite", lambda root, d: ["--set", "optim.lr=.inf"], "optim.lr: Input should be a finite number (got inf)"),
    ("component key infinite", lambda root, d: ["--set", "model.prior.name=student_t", "--set", "model.prior.df=-.inf"],
     "model.prior.df: Input should be a finite number"),
    ("duplicate YAML key", lambda root, d: dup_yaml(d), "dup.yaml: 'epochs' appears twice in one mapping (lines 2 and 4)"),
    ("config is a directory", lambda root, d: [d], "is a directory, not a YAML config file"),
    ("component given as a number", lambda root, d: ["--set", "model.prior=5"],
     "model.prior: expected a mapping with a 'name' (got 5)"),
]


@pytest.mark.parametrize("case,args,message", OVERWRITE_CASES, ids=[c[0] for c in OVERWRITE_CASES])
def test_overwrite_keeps_the_old_run_whole_on_any_error(finished, tmp_path, monkeypatch, capsys, case, args, message):
    root = broken_copy(finished, tmp_path, monkeypatch, with_user_files)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [str(a) for a in args(root, scratch)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", *argv, "--out", str(root / "run"), "--overwrite", "--no-progress"]) == 2
    err = [one_error_line(capsys, message)]
    assert err[0].count("(got") <= 1, err
    assert snapshot(tmp_path) == before
    left = {p.name for p in (root / "run").iterdir()}  # no staging folder either
    assert left == {p.name for p in (finished / "run").iterdir()} | {"notes.txt", "evaluation.json"}


def test_overwrite_replaces_only_pyro_vaes_files(finished, tmp_path, monkeypatch, capsys):
    """A successful --overwrite: every file of the old run is the new run's; the user's files are untouched."""
    root = broken_copy(finished, tmp_path, monkeypatch, with_user_files)
    run = root / "run"
    old = snapshot(run)
    assert main(["train", "--set", "data.name=npz", "--set", "data.path=user.npz", "--set", "train.epochs=1",
                 "--set", "model.decoder.hidden=[4]", "--set", "guide.hidden=[4]", "--out", str(run),
                 "--overwrite", "--no-progress"]) == 0
    new = snapshot(run)
    assert new[run / "notes.txt"] == old[run / "notes.txt"] and new[run / "plots" / "mine.png"] == old[run / "plots" / "mine.png"]
    assert run / "evaluation.json" not in new and run / "checkpoint.prev.pt" in new  # the old evaluation described the old run
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["decoder"]["hidden"] == [4]
    assert not (run / ".pyro_vae-new").exists() and not list(run.glob(".*.tmp"))
    mode = 0o666 & ~_umask()
    for name in ("config.yaml", "summary.json", "metrics.jsonl", "checkpoint.pt"):
        assert (run / name).stat().st_mode & 0o777 == mode, name  # not mkstemp's 0600


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


# (case, argv given (root: the copy holding ``run``, d: a scratch folder), message): nothing may appear on disk
REFUSED_CASES = [
    ("--out under a file", lambda root, d: ["train", "--out", root / "run" / "config.yaml" / "sub"],
     "config.yaml/sub: Not a directory; a part of the path is a file, not a directory"),
    ("--out in a symlink loop", lambda root, d: [loop(d), "train", "--out", d / "a" / "run"][1:],
     "Too many levels of symbolic links; it is a loop of symbolic links"),
    ("--out exists without --overwrite", lambda root, d: ["train", "--out", root / "run"], "pass --overwrite or choose another --out"),
    ("argparse: unknown flag", lambda root, d: ["train", "--bogus"], "pyro-vae train: error: unrecognized arguments: --bogus"),
    ("argparse: bad int", lambda root, d: ["compare", "--epochs", "x"], "pyro-vae compare: error: argument --epochs: invalid int value"),
    ("--out empty", lambda root, d: ["train", "--out", ""], "--out: empty; give a directory"),
    ("data.path a device, not a file", lambda root, d: ["train", "--set", "data.name=npz", "--set", "data.path=/dev/null"],
     "data.path: is not a regular file: /dev/null"),
    ("evaluate --seed beyond 32 bits", lambda root, d: ["evaluate", root / "run", "--seed", 2 ** 40],
     f"--seed {2 ** 40}: must be in [0, {2 ** 32 - 1}]"),
    ("compare --seconds nan", lambda root, d: ["compare", "--seconds", "nan", "--out", d / "cmp"], "--seconds nan: must be a finite number > 0"),
    ("compare --seconds inf", lambda root, d: ["compare", "--seconds", "inf", "--out", d / "cmp"], "--seconds inf: must be a finite number > 0"),
    ("compare --ais-steps 0", lambda root, d: ["compare", "--final", "ais", "--ais-steps", "0", "--out", d / "cmp"],
     "--ais-steps 0: must be a finite number > 0"),
    ("argparse: compare --final bad", lambda root, d: ["compare", "--final", "hmc", "--out", d / "cmp"],
     "pyro-vae compare: error: argument --final: invalid choice: 'hmc'"),
    ("compare lr infinite", lambda root, d: ["compare", "--set", "optim.lr=.inf", "--out", d / "cmp"], "optim.lr: Input should be a finite number"),
    ("compare --out under a file", lambda root, d: ["compare", "--out", root / "user.npz" / "cmp", "--epochs", "1"],
     "user.npz/cmp: Not a directory"),
]


def loop(d):
    os.symlink(d / "b", d / "a")
    os.symlink(d / "a", d / "b")
    return d


@pytest.mark.parametrize("case,args,message", REFUSED_CASES, ids=[c[0] for c in REFUSED_CASES])
def test_refused_before_anything_is_written(finished, tmp_path, monkeypatch, capsys, case, args, message):
    root = broken_copy(finished, tmp_path, monkeypatch, lambda run: None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    argv = [str(a) for a in args(root, scratch)]
    before, listing = snapshot(tmp_path), sorted(map(str, tmp_path.rglob("*")))
    capsys.readouterr()
    with pytest.raises(SystemExit) if case.startswith("argparse") else _no_exit() as exit_:
        code = main([*argv, "--no-progress"] if argv[0] == "train" else argv)
    code = exit_.value.code if case.startswith("argparse") else code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert snapshot(tmp_path) == before and sorted(map(str, tmp_path.rglob("*"))) == listing


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_a_foreign_checkpoint_is_named_with_what_does_not_fit(finished, tmp_path, monkeypatch, capsys):
    """Parameters of another architecture: the one line says which tensor does not fit, not just 'Error(s) in...'."""
    other = tmp_path / "other"
    cfg = load_config(None, ["data.name=npz", f"data.path={finished / 'user.npz'}", "model.decoder.hidden=[3]",
                             "guide.hidden=[8]", "train.epochs=1", "train.batch_size=40"])
    train_run(cfg, other, progress=False)
    root = broken_copy(finished, tmp_path, monkeypatch, lambda run: [shutil.copy(other / n, run / n)
                                                                     for n in ("checkpoint.pt", "checkpoint.prev.pt")])
    before = snapshot(root)
    for command, message in (("evaluate", "parameters do not match config.yaml (RuntimeError: Error(s) in loading "
                                          "state_dict for VAE: size mismatch for decoder"),
                             ("resume", "config.yaml: differs from the config the checkpoint was trained with")):
        capsys.readouterr()
        if command == "resume":
            unfinish(root / "run")
            before = snapshot(root)
        assert main([command, str(root / "run"), "--no-progress"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0], err
        assert snapshot(root) == before


def test_an_unreadable_checkpoint_falls_back_to_the_previous_one(finished, tmp_path, monkeypatch, capsys):
    root = broken_copy(finished, tmp_path, monkeypatch, unfinish)
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "checkpoint.pt":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    capsys.readouterr()
    assert main(["resume", str(root / "run"), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert any("checkpoint.pt cannot be read (Permission denied); using checkpoint.prev.pt" in line for line in err), err


def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(finished, tmp_path, monkeypatch, capsys):
    """ENOSPC at the first checkpoint after step 0: exit 2, one line naming the cause, checkpoint.pt still whole."""
    from pyro_vae.rundir import RunDir, decode_checkpoint

    root = broken_copy(finished, tmp_path, monkeypatch, lambda run: None)
    real, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) >= 3:  # step 0's checkpoint and config.yaml are written; the next write finds the disk full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    code = main(["train", "--set", "data.name=npz", "--set", "data.path=user.npz", "--set", "train.epochs=2",
                 "--out", str(root / "new"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device; the disk is full" in err[0], err
    state = RunDir(root / "new").load_checkpoint()
    assert state["step"] == 0 and decode_checkpoint((root / "new" / "checkpoint.pt").read_bytes())


def _unprivileged(cmd):
    """``cmd`` as user nobody when this process is root (root ignores file permissions), else as is."""
    if os.geteuid() != 0:
        return cmd
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: cannot drop privileges to test permissions")
    return ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]


@pytest.fixture
def shared_copy(finished):
    """A copy of the finished run that user nobody can read (but, once chmod'ed, not write)."""
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="pyro_vae-perm-"))
    try:
        shutil.copytree(finished, root / "copy")
        for p in [root, *root.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        yield root / "copy"
    finally:
        shutil.rmtree(root)


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_a_run_directory_that_cannot_be_written_is_refused_before_any_work(shared_copy, command):
    run = shared_copy / "run"
    if command == "resume":
        unfinish(run)
    run.chmod(0o555)
    home = shared_copy.parent / "home"  # matplotlib's cache needs a writable home
    home.mkdir(mode=0o777)
    home.chmod(0o777)
    before = snapshot(shared_copy)
    r = subprocess.run(_unprivileged([sys.executable, "-m", "pyro_vae", command, str(run), "--no-progress"]),
                       capture_output=True, text=True, cwd=shared_copy,
                       env={**os.environ, "HOME": str(home), "MPLCONFIGDIR": str(home)})
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"pyro-vae: error: {run}: cannot write here (Permission denied); {command} writes " \
                       f"{'evaluation.json into the run directory' if command == 'evaluate' else 'checkpoints, metrics and plots there'}\n"
    assert snapshot(shared_copy) == before


def test_out_on_a_read_only_file_system_is_refused(tmp_path):
    """A real read-only mount (a private mount namespace), where root may not write either."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare(1): cannot make a read-only mount here")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = f"mount -t tmpfs -o ro none {ro} && exec {sys.executable} -m pyro_vae train --out {ro}/run --no-progress"
    r = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True)
    if "mount" in r.stderr and r.returncode != 2:
        pytest.skip(f"cannot make a private read-only mount here: {r.stderr.strip()}")
    assert r.returncode == 2 and r.stderr == (f"pyro-vae: error: --out {ro}/run: {ro} is not writable (permission denied "
                                              f"or a read-only file system); choose another --out\n")


def test_a_config_that_asks_for_more_memory_than_there_is_is_one_line(tmp_path, capsys):
    """10^10 particles of a 64-pixel image need ~4.7 TB: the allocation fails at once, said in one line with the keys
    that multiply into memory (the run directory keeps its step-0 checkpoint, as any later error does)."""
    capsys.readouterr()
    code = main(["train", "--set", "inference.num_particles=10000000000", "--set", "train.epochs=1",
                 "--set", "model.decoder.hidden=[4]", "--set", "guide.hidden=[4]", "--out", str(tmp_path / "run"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pyro-vae: error: out of memory: an allocation failed ("), err
    assert "inference.num_particles" in err[0]


def test_overwrite_failing_before_its_first_checkpoint_leaves_the_old_run_whole(finished, tmp_path, monkeypatch, capsys):
    """The disk fills while the new run writes its step-0 checkpoint (inside the staging folder): the error is one
    line, the staged files go, and the old run, user files included, is byte-identical."""
    root = broken_copy(finished, tmp_path, monkeypatch, with_user_files)
    before = snapshot(tmp_path)

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    capsys.readouterr()
    assert main(["train", "--set", "data.name=npz", "--set", "data.path=user.npz", "--set", "train.epochs=1",
                 "--out", str(root / "run"), "--overwrite", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device; the disk is full" in err[0], err
    assert snapshot(tmp_path) == before and not (root / "run" / ".pyro_vae-new").exists()
