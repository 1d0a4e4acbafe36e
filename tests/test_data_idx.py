"""IDX (MNIST-format) loaders: ``mnist`` on files the test writes, and ``fashion_mnist``'s default location."""

import gzip

import numpy as np
import pytest

from pyro_vae.data import DATASETS, FASHION_MNIST_DIR, load_data, read_idx
from pyro_vae.errors import DataError


def write_idx(path, array: np.ndarray, code: int = 0x08, compress: bool = False) -> None:
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    blob = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(blob)
    else:
        path.write_bytes(blob)


def write_mnist(root, n_train=12, n_test=5, shape=(3, 4), compress=False, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
              "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
              "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8)}
    for name, a in arrays.items():
        write_idx(root / name, a, compress=compress)
    return arrays


def spec(name="mnist", **kw):
    return DATASETS.resolve({"name": name, "binarize": "none", "val_fraction": 0.1, "test_fraction": 0.1, **kw}, where="data")


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_loader_reads_idx_files_into_the_canonical_split(tmp_path, compress):
    arrays = write_mnist(tmp_path, compress=compress)
    ds = load_data(spec(path=str(tmp_path), val_size=4), seed=0)
    images, labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    assert ds.image_shape == (3, 4) and ds.x_dim == 12
    np.testing.assert_allclose(ds.train.numpy(), images[:8].reshape(8, 12) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.val.numpy(), images[8:].reshape(4, 12) / 255.0, rtol=1e-6)
    np.testing.assert_allclose(ds.test.numpy(), arrays["t10k-images-idx3-ubyte"].reshape(5, 12) / 255.0, rtol=1e-6)
    assert ds.labels["train"].tolist() == labels[:8].tolist()
    assert ds.labels["test"].tolist() == arrays["t10k-labels-idx1-ubyte"].tolist()


def test_read_idx_other_dtypes(tmp_path):
    a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
    write_idx(tmp_path / "f", a, code=0x0D)
    np.testing.assert_array_equal(read_idx(tmp_path / "f"), a)
    b = np.array([-5, 0, 70000], dtype=np.int32)
    write_idx(tmp_path / "i", b, code=0x0C)
    np.testing.assert_array_equal(read_idx(tmp_path / "i"), b)


def test_mnist_errors_name_the_file(tmp_path):
    with pytest.raises(DataError, match="directory not found"):
        load_data(spec(path=str(tmp_path / "nope")), seed=0)
    write_mnist(tmp_path)
    with pytest.raises(DataError, match="val_size"):
        load_data(spec(path=str(tmp_path), val_size=12), seed=0)
    labels = tmp_path / "train-labels-idx1-ubyte"
    labels.write_bytes(labels.read_bytes()[:-1])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte: truncated"):
        load_data(spec(path=str(tmp_path)), seed=0)
    labels.write_bytes(b"\x08\x00\x00\x01")
    with pytest.raises(DataError, match="bad magic"):
        load_data(spec(path=str(tmp_path)), seed=0)
    labels.unlink()
    with pytest.raises(DataError, match="no train-labels-idx1-ubyte"):
        load_data(spec(path=str(tmp_path)), seed=0)


def test_mnist_label_count_must_match_images(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="do not match"):
        load_data(spec(path=str(tmp_path), val_size=2), seed=0)


def test_fashion_mnist_reads_a_user_path_and_explains_a_missing_install(tmp_path):
    write_mnist(tmp_path, compress=True)
    ds = load_data(spec("fashion_mnist", path=str(tmp_path), val_size=2), seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (10, 2, 5)
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(spec("fashion_mnist", path=str(tmp_path / "missing")), seed=0)


@pytest.mark.skipif(not (FASHION_MNIST_DIR and __import__("pathlib").Path(FASHION_MNIST_DIR).is_dir()),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_from_the_debian_package_is_50k_10k_10k():
    ds = load_data(spec("fashion_mnist"), seed=0)
    assert (len(ds.train), len(ds.val), len(ds.test), ds.image_shape) == (50000, 10000, 10000, (28, 28))
    assert float(ds.train.min()) == 0.0 and float(ds.train.max()) == 1.0


def test_idx_header_errors_print_plain_numbers(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.zeros(5, np.uint8))
    path.write_bytes(path.read_bytes() + b"\x00\x00")
    with pytest.raises(DataError, match=r"labels: 2 bytes too long for an IDX file \(its header promises shape \(5,\): 13 bytes, found 15\)$"):
        read_idx(path)
    path.write_bytes(bytes([0, 0, 0x08, 3, 0, 0]))
    with pytest.raises(DataError, match=r"truncated IDX file \(its header has 3 dimensions but ends after 6 bytes\)"):
        read_idx(path)


def test_mnist_labels_must_be_integers(tmp_path):
    write_mnist(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 2.5, 3, 4], np.float32), code=0x0D)
    with pytest.raises(DataError, match=r"test labels: labels must be integers, but label 2 is 2\.5$"):
        load_data(spec(path=str(tmp_path), val_size=2), seed=0)
