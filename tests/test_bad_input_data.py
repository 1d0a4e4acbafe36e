"""Bad data files: refused in one line with exit status 2 before any file is written (``pyro_vae.data``'s checks)."""

import numpy as np
import pytest

from conftest import run_cli
from pyro_vae.cli import main
from test_bad_input import broken_copy, finished, one_error_line, snapshot  # noqa: F401 (finished: a module-scoped fixture)
from test_data_idx import write_mnist

RNG = np.random.default_rng(0)
TINY = ["--set", "model.decoder.hidden=[8]", "--set", "guide.hidden=[8]", "--set", "train.epochs=1"]


def data(name, path, *more):
    return ["--set", f"data.name={name}", "--set", f"data.path={path}", *more, *TINY]


def npz(d, *more, **arrays):
    """``arrays`` saved in ``d/data.npz``; the CLI args that train on it."""
    np.savez(d / "data.npz", **arrays)
    return data("npz", d / "data.npz", *more)


def splits(**changes):
    """Train/val/test arrays of 0/1 values with labels, then ``changes`` (an array, or None to drop it)."""
    arrays = {"train": RNG.integers(0, 2, (20, 5)).astype(float), "val": RNG.integers(0, 2, (5, 5)).astype(float),
              "test": RNG.integers(0, 2, (6, 5)).astype(float),
              "train_y": np.arange(20) % 3, "val_y": np.arange(5) % 3, "test_y": np.arange(6) % 3}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def x_with(row, col, value, n=40, d=5):
    x = RNG.normal(size=(n, d))
    x[row, col] = value
    return x


def truncated_idx(d):
    write_mnist(d)
    labels = d / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    return data("mnist", d, "--set", "data.val_size=2")


def npy(d):
    np.save(d / "x.npy", RNG.normal(size=(40, 5)))
    return data("npz", d / "x.npy")


def a_file(d):
    (d / "mnist").write_text("not a directory")
    return data("mnist", d / "mnist")


# (case, write the bad file(s) into the directory given and return the CLI args, expected message)
DATA_CASES = [
    ("split labels of the wrong length", lambda d: npz(d, **splits(val_y=np.zeros(3, int))),
     "data.npz: array 'val_y' has shape (3,); expected one label per point, shape (5,)"),
    ("labels of the wrong length", lambda d: npz(d, x=RNG.normal(size=(40, 5)), y=np.zeros(39, int)),
     "array 'y' has shape (39,); expected one label per point, shape (40,)"),
    ("labels not 1-D", lambda d: npz(d, x=RNG.normal(size=(40, 5)), y=np.zeros((40, 1), int)),
     "array 'y' has shape (40, 1); expected one label per point"),
    ("string labels", lambda d: npz(d, x=RNG.normal(size=(40, 5)), y=np.array(["cat", "dog"] * 20)),
     "array 'y': labels must be integers (dtype <U3)"),
    ("fractional labels", lambda d: npz(d, x=RNG.normal(size=(40, 5)), y=np.arange(40) / 4),
     "array 'y': labels must be integers, but label 1 is 0.25"),
    ("NaN label", lambda d: npz(d, **splits(test_y=np.array([0, 1, np.nan, 1, 0, 2]))),
     "array 'test_y': labels must be integers, but label 2 is nan"),
    ("bernoulli on grey val data", lambda d: npz(d, "--set", "model.likelihood.name=bernoulli", **splits(val=RNG.random((5, 5)))),
     "'bernoulli' needs data in {0, 1} but data 'npz' val split of "),
    ("continuous_bernoulli on test data above 1", lambda d: npz(d, "--set", "model.likelihood.name=continuous_bernoulli",
                                                                  **splits(test=np.full((6, 5), 2.0))),
     "'continuous_bernoulli' needs data in [0, 1] but data 'npz' test split of "),
    (".npy given as the .npz", npy, "x.npy is a .npy file (one bare array); expected an .npz with an array 'x', e.g. np.savez(path, x=array)"),
    ("a directory as the .npz", lambda d: data("npz", d), "is a directory; expected an .npz file"),
    ("a file as the mnist directory", a_file, "mnist is a file; expected a directory of IDX files"),
    ("complex values", lambda d: npz(d, x=RNG.normal(size=(40, 5)) + 1j), "array 'x' is complex (dtype complex128); expected real numbers"),
    ("string values", lambda d: npz(d, x=np.array([["a", "b"]] * 40)), "array 'x' is not numeric (dtype <U1)"),
    ("object array", lambda d: npz(d, x=np.array([[1.0, None]] * 40, dtype=object)),
     "array 'x' holds Python objects (dtype object), which are never unpickled"),
    ("zero features", lambda d: npz(d, x=np.zeros((40, 0))), "array 'x' has shape (40, 0); expected (N, D) with at least one feature"),
    ("zero feature images", lambda d: npz(d, x=np.zeros((40, 3, 0))), "array 'x' has shape (40, 0)"),
    ("empty train split", lambda d: npz(d, **splits(train=np.zeros((0, 5)), train_y=None)),
     "array 'train' is empty (shape (0, 5)); training needs at least one point"),
    ("beyond float32", lambda d: npz(d, x=x_with(7, 2, 1e39)), "array 'x' has a value beyond float32's range of +-3.403e+38 (1e+39) at row 7, column 2"),
    ("NaN in a split", lambda d: npz(d, **splits(val=x_with(3, 1, np.nan, n=5))), "array 'val' has a non-finite value (nan) at row 3, column 1"),
    ("truncated IDX file", truncated_idx, "train-labels-idx1-ubyte: truncated IDX file (its header promises shape (12,): 20 bytes, found 19)"),
]


@pytest.mark.parametrize("case,args,message", DATA_CASES, ids=[c[0] for c in DATA_CASES])
def test_train_refuses_bad_data_and_keeps_the_existing_run(finished, tmp_path, monkeypatch, capsys, case, args, message):
    root = broken_copy(finished, tmp_path, monkeypatch, lambda run: None)
    bad = tmp_path / "bad"
    bad.mkdir()
    argv = [str(a) for a in args(bad)]
    before = snapshot(tmp_path)
    capsys.readouterr()
    assert main(["train", *argv, "--out", str(root / "run"), "--overwrite", "--no-progress"]) == 2
    err = [one_error_line(capsys, message)]
    assert "np." not in err[0].replace("np.savez", "")  # plain numbers, not numpy 2's np.int32(12)
    assert snapshot(tmp_path) == before


def test_bad_data_in_a_real_process_is_one_line_without_traceback(tmp_path):
    np.savez(tmp_path / "c.npz", x=RNG.normal(size=(40, 5)) + 1j)
    r = run_cli("train", *data("npz", tmp_path / "c.npz"), "--out", tmp_path / "run", "--no-progress")
    assert r.returncode == 2, r.stderr
    assert r.stderr == f"pyro-vae: error: {tmp_path / 'c.npz'}: array 'x' is complex (dtype complex128); expected real numbers\n"
    assert not (tmp_path / "run").exists()
