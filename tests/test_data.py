"""Data loaders, splits, binarization and the checks on user files."""

import numpy as np
import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.data import DATASETS, load_data
from pyro_vae.errors import DataError


def spec(**kw):
    base = {"name": "digits", "binarize": "none", "val_fraction": 0.1, "test_fraction": 0.1}
    return DATASETS.resolve({**base, **kw}, where="data")


def test_digits_split_is_seeded_and_disjoint():
    a, b = load_data(spec(), 0), load_data(spec(), 0)
    assert torch.equal(a.train, b.train) and a.x_dim == 64 and a.image_shape == (8, 8)
    assert len(a.train) + len(a.val) + len(a.test) == 1797
    assert 0 <= float(a.train.min()) and float(a.train.max()) <= 1
    c = load_data(spec(), 1)
    assert not torch.equal(a.train, c.train)


def test_load_data_takes_the_config_data_section():
    cfg = validate_config({"data": {"name": "synthetic", "n": 40, "x_dim": 3, "val_fraction": 0.25}})
    ds = load_data(cfg.data, cfg.seed)
    assert (ds.name, ds.x_dim, len(ds.val), len(ds.test)) == ("synthetic", 3, 10, 4)
    assert torch.equal(ds.train, load_data(spec(name="synthetic", n=40, x_dim=3, val_fraction=0.25), 0).train)


def test_static_and_dynamic_binarization():
    s = load_data(spec(binarize="static"), 0)
    for split in ("train", "val", "test"):
        assert set(s.split(split).unique().tolist()) <= {0.0, 1.0}
    d = load_data(spec(binarize="dynamic"), 0)
    assert set(d.val.unique().tolist()) <= {0.0, 1.0}
    assert len(d.train.unique()) > 2  # grey values kept, redrawn every epoch by the trainer


def test_npz_matrix_images_and_presplit(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "m.npz", x=rng.random((50, 7)), y=np.arange(50) % 3)
    ds = load_data(spec(name="npz", path=str(tmp_path / "m.npz")), 0)
    assert ds.x_dim == 7 and ds.labels["train"] is not None and ds.image_shape is None
    np.savez(tmp_path / "i.npz", x=rng.random((40, 4, 5)))
    assert load_data(spec(name="npz", path=str(tmp_path / "i.npz")), 0).image_shape == (4, 5)
    np.savez(tmp_path / "s.npz", train=rng.random((20, 3)), val=rng.random((5, 3)), test=rng.random((6, 3)))
    ds = load_data(spec(name="npz", path=str(tmp_path / "s.npz")), 0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (20, 5, 6)


def test_synthetic_keeps_truth():
    ds = load_data(spec(name="synthetic", x_dim=5, latent_dim=2, noise=0.3, n=100, seed=1), 0)
    assert ds.truth["W"].shape == (5, 2) and ds.x_dim == 5 and len(ds.train) == 80


@pytest.mark.parametrize("make,message", [
    (lambda p: None, r"data\.path: file not found"),
    (lambda p: p.write_bytes(b"not a zip"), r"data\.path: cannot read .* as \.npz"),
    (lambda p: np.savez(p, other=np.zeros((3, 2))), r"expected an array 'x' or arrays 'train', 'val', 'test' \(found: other\)"),
    (lambda p: np.savez(p, x=np.array([[0.0, np.nan]] * 20)), r"non-finite value \(nan\)"),
    (lambda p: np.savez(p, x=np.array([[0.0, np.inf]] * 20)), r"non-finite value \(inf\)"),
    (lambda p: np.savez(p, x=np.zeros(20)), r"array 'x' has shape \(20,\)"),
    (lambda p: np.savez(p, x=np.zeros((2, 3))), r"too few"),
])
def test_bad_npz(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(DataError, match=message) as err:
        load_data(spec(name="npz", path=str(path)), 0)
    assert "\n" not in str(err.value)


def test_boolean_data_and_integer_valued_float_labels_are_accepted(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "b.npz", x=rng.random((30, 4)) > 0.5, y=(np.arange(30) % 3).astype(float))
    ds = load_data(spec(name="npz", path=str(tmp_path / "b.npz")), 0)
    assert ds.train.dtype == torch.float32 and set(ds.train.unique().tolist()) <= {0.0, 1.0}
    assert ds.labels["train"].dtype == torch.int64 and set(ds.labels["train"].tolist()) <= {0, 1, 2}


def test_a_bad_value_is_reported_at_its_row_in_the_file_not_in_a_split(tmp_path):
    x = np.zeros((50, 3))
    x[41, 2] = -1e40
    np.savez(tmp_path / "o.npz", x=x)
    with pytest.raises(DataError, match=r"array 'x' has a value beyond float32's range .* \(-1e\+40\) at row 41, column 2$"):
        load_data(spec(name="npz", path=str(tmp_path / "o.npz")), 0)


def test_empty_val_and_test_splits_are_allowed(tmp_path):
    np.savez(tmp_path / "s.npz", train=np.ones((4, 2)), val=np.ones((0, 2)), test=np.ones((0, 2)))
    ds = load_data(spec(name="npz", path=str(tmp_path / "s.npz")), 0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (4, 0, 0)
