"""Datasets: bundled digits, a user's ``.npz`` file, and synthetic linear-Gaussian draws.

Every loader returns arrays ``(N, x_dim)``; ``load_data`` checks them (``_check_split``, the one place
that refuses bad data), splits them with a seeded permutation, casts them to float32 tensors, and
binarizes them for Bernoulli likelihoods when asked. :class:`DataConfig` is the ``data`` config
section, the base of every dataset's spec.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, PositiveFloat, PositiveInt

from pyro_vae.errors import DataError
from pyro_vae.registry import ComponentSpec, Registry


class DataConfig(ComponentSpec):
    """``data``: which dataset, how to split and binarize it; loader keys sit beside ``name``.

    The spec that ``DATASETS`` makes for each dataset subclasses this with that loader's keyword arguments.
    """

    name: str = "digits"  # a registered dataset (pyro-vae components); its own keys sit beside name
    binarize: Literal["none", "static", "dynamic"] = "none"  # for Bernoulli likelihoods: one seeded draw, or a fresh one every epoch
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # share of the points held out for validation (seeded split)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)  # share of the points held out for testing (seeded split)

    @property
    def source(self) -> Optional[str]:
        """The file or directory the dataset reads (its ``path`` key), or None for bundled or generated data."""
        return getattr(self, "path", None)


DATASETS = Registry("data", base=DataConfig)
SPLITS = ("train", "val", "test")
FLOAT32_MAX = float(np.finfo(np.float32).max)
NPY_MAGIC = b"\x93NUMPY"


@dataclass
class Raw:
    """What a loader returns: all points in ``x`` (split later) or ready-made ``splits``.

    ``names`` says how error messages name the data and labels of ``"x"`` or of a split (default
    ``"data"``/``"labels"``, ``"val data"``/``"val labels"``), e.g. ``("array 'val'", "array 'val_y'")``.
    """

    x: Optional[np.ndarray] = None
    labels: Optional[np.ndarray] = None
    splits: Optional[Dict[str, Tuple[np.ndarray, Optional[np.ndarray]]]] = None
    image_shape: Optional[Tuple[int, ...]] = None
    truth: Optional[Dict[str, np.ndarray]] = None
    names: Dict[str, Tuple[str, str]] = field(default_factory=dict)

    def name(self, part: str) -> Tuple[str, str]:
        return self.names.get(part) or (("data", "labels") if part == "x" else (f"{part} data", f"{part} labels"))


@dataclass
class Dataset:
    """Train/val/test tensors ``(n, x_dim)``, optional integer labels, and metadata."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    labels: Dict[str, Optional[torch.Tensor]] = field(default_factory=dict)
    image_shape: Optional[Tuple[int, ...]] = None
    truth: Optional[Dict[str, torch.Tensor]] = None  # true parameters of synthetic data
    binarize: str = "none"

    @property
    def x_dim(self) -> int:
        return self.train.shape[1]

    def split(self, name: str) -> torch.Tensor:
        if name not in SPLITS:
            raise DataError(f"--split {name}: choose one of {', '.join(SPLITS)}")
        return getattr(self, name)

    def splits(self) -> Dict[str, torch.Tensor]:
        return {s: getattr(self, s) for s in SPLITS}


@DATASETS.register("digits")
class Digits:
    """scikit-learn's bundled 8x8 handwritten digits (1797 images), pixels scaled to [0, 1]."""

    def __init__(self):
        pass

    def load(self) -> Raw:
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return Raw(x=bunch.images.reshape(len(bunch.images), -1) / 16.0, labels=bunch.target, image_shape=(8, 8))


@DATASETS.register("npz")
class Npz:
    """A user's ``.npz``: array ``x`` (optional ``y`` labels), or ``train``/``val``/``test`` (optional ``<split>_y``).

    Arrays are ``(N, D)``, or images ``(N, H, W)`` that are flattened (the shape is kept for plots).
    """

    def __init__(self, *, path: str):
        self.path = Path(path).expanduser()

    def load(self) -> Raw:
        arrays = self._read()
        if "x" in arrays:
            x, shape = self._matrix(arrays["x"], "x")
            return Raw(x=x, labels=arrays.get("y"), image_shape=shape, names={"x": ("array 'x'", "array 'y'")})
        if all(s in arrays for s in SPLITS):
            splits, shapes = {}, set()
            for s in SPLITS:
                x, shape = self._matrix(arrays[s], s)
                splits[s] = (x, arrays.get(f"{s}_y"))
                shapes.add((shape, x.shape[1]))
            if len(shapes) != 1:
                raise DataError(f"{self.path}: arrays train/val/test have different feature shapes")
            return Raw(splits=splits, image_shape=shape, names={s: (f"array '{s}'", f"array '{s}_y'") for s in SPLITS})
        raise DataError(f"{self.path}: expected an array 'x' or arrays 'train', 'val', 'test' (found: {', '.join(arrays) or 'none'})")

    def _read(self) -> Dict[str, np.ndarray]:
        if self.path.is_dir():
            raise DataError(f"data.path: {self.path} is a directory; expected an .npz file")
        if not self.path.is_file():
            what = "is not a regular file" if self.path.exists() else "file not found"
            raise DataError(f"data.path: {what}: {self.path}")
        try:
            with open(self.path, "rb") as f:
                if f.read(len(NPY_MAGIC)) == NPY_MAGIC:  # np.load would return the one array, not an archive
                    raise DataError(f"data.path: {self.path} is a .npy file (one bare array); expected an .npz with "
                                    f"an array 'x', e.g. np.savez(path, x=array)")
            with np.load(self.path, allow_pickle=False) as f:
                return {k: self._member(f, k) for k in f.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError, zlib.error) as err:
            raise DataError(f"data.path: cannot read {self.path} as .npz ({err.__class__.__name__})") from None

    def _member(self, npz, key: str) -> np.ndarray:
        try:
            return npz[key]
        except ValueError as err:
            if "allow_pickle" not in str(err):
                raise
            raise DataError(f"{self.path}: array '{key}' holds Python objects (dtype object), which are never "
                            f"unpickled; save numeric arrays") from None

    def _matrix(self, a: np.ndarray, key: str) -> Tuple[np.ndarray, Optional[Tuple[int, ...]]]:
        if a.ndim == 3:
            return a.reshape(len(a), -1), tuple(a.shape[1:])
        if a.ndim == 2:
            return a, None
        raise DataError(f"{self.path}: array '{key}' has shape {a.shape}; expected (N, D) or (N, H, W)")


@DATASETS.register("synthetic")
class Synthetic:
    """Draws from a linear-Gaussian model x = W z + b + noise * eps, z, eps ~ N(0, I); keeps W, b, noise."""

    def __init__(self, *, x_dim: PositiveInt = 10, latent_dim: PositiveInt = 2, noise: PositiveFloat = 0.5,
                 n: PositiveInt = 2000, seed: int = 0):
        self.x_dim, self.latent_dim, self.noise, self.n, self.seed = x_dim, latent_dim, noise, n, seed

    def load(self) -> Raw:
        rng = np.random.default_rng(self.seed)
        W = rng.normal(size=(self.x_dim, self.latent_dim))
        b = rng.normal(size=self.x_dim)
        z = rng.normal(size=(self.n, self.latent_dim))
        x = z @ W.T + b + self.noise * rng.normal(size=(self.n, self.x_dim))
        return Raw(x=x, truth={"W": W, "b": b, "noise": np.array(self.noise)})


@DATASETS.register("synthetic_mixture")
class SyntheticMixture:
    """Draws from a Gaussian mixture: z ~ Categorical(weights), x = locs[z] + scales[z] * eps; keeps weights, locs, scales.

    Means are ``separation`` times standard Normal draws; per-component scales are drawn in
    [0.5, 1.5] (one per component when ``covariance_type: spherical``, one per feature when ``diag``).
    """

    def __init__(self, *, x_dim: PositiveInt = 2, num_components: PositiveInt = 3, separation: PositiveFloat = 3.0,
                 covariance_type: Literal["spherical", "diag"] = "spherical", n: PositiveInt = 1000, seed: int = 0):
        self.x_dim, self.num_components, self.separation = x_dim, num_components, separation
        self.covariance_type, self.n, self.seed = covariance_type, n, seed

    def load(self) -> Raw:
        rng = np.random.default_rng(self.seed)
        k, d = self.num_components, self.x_dim
        weights = rng.dirichlet(np.full(k, 5.0))
        locs = self.separation * rng.normal(size=(k, d))
        scales = rng.uniform(0.5, 1.5, size=(k, 1) if self.covariance_type == "spherical" else (k, d))
        z = rng.choice(k, size=self.n, p=weights)
        x = locs[z] + scales[z] * rng.normal(size=(self.n, d))
        return Raw(x=x, labels=z, truth={"weights": weights, "locs": locs, "scales": np.broadcast_to(scales, (k, d)).copy()})


IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"  # where Debian's dataset-fashion-mnist installs it


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format, optionally gzipped): magic ``0 0 dtype ndim``, big-endian int32 dims, data."""
    import gzip

    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"data.path: cannot read {path} ({err.__class__.__name__})") from None
    if len(blob) < 4 or blob[0] != 0 or blob[1] != 0 or blob[2] not in IDX_DTYPES:
        raise DataError(f"{path}: not an IDX file (bad magic number)")
    ndim = blob[3]
    if len(blob) < 4 + 4 * ndim:
        raise DataError(f"{path}: truncated IDX file (its header has {ndim} dimensions but ends after {len(blob)} bytes)")
    shape = tuple(int(d) for d in np.frombuffer(blob, ">i4", count=ndim, offset=4))  # plain ints for messages
    dtype = np.dtype(IDX_DTYPES[blob[2]])
    if any(d < 0 for d in shape):
        raise DataError(f"{path}: not an IDX file (its header promises shape {shape})")
    size = 4 + 4 * ndim + math.prod(shape) * dtype.itemsize
    if len(blob) != size:
        how = "truncated" if len(blob) < size else f"{len(blob) - size} bytes too long for an"
        raise DataError(f"{path}: {how} IDX file (its header promises shape {shape}: {size} bytes, found {len(blob)})")
    data = np.frombuffer(blob, dtype, offset=4 + 4 * ndim).reshape(shape)
    return data.astype(dtype.newbyteorder("="))  # a writable copy in native byte order


@DATASETS.register("mnist")
class Mnist:
    """MNIST-format IDX files in the directory ``path`` (``train-images-idx3-ubyte`` etc., ``.gz`` or not).

    Pixels are scaled to [0, 1]. The last ``val_size`` training images are the validation split
    and ``t10k`` is the test split (MNIST's 50k/10k/10k), so ``val_fraction``/``test_fraction`` do not apply.
    """

    def __init__(self, *, path: str, val_size: NonNegativeInt = 10000):
        self.path = Path(path).expanduser()
        self.val_size = val_size

    def _file(self, stem: str) -> Path:
        for candidate in (self.path / stem, self.path / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
        raise DataError(f"data.path: {self.path} has no {stem} (or {stem}.gz)")

    def _split(self, which: str) -> Tuple[np.ndarray, np.ndarray]:
        images, labels = (read_idx(self._file(stem)) for stem in IDX_FILES[which])
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{self.path}: {which} images {images.shape} and labels {labels.shape} do not match "
                            f"(expected (N, H, W) and (N,))")
        return images, labels

    def load(self) -> Raw:
        if self.path.is_file():
            raise DataError(f"data.path: {self.path} is a file; expected a directory of IDX files "
                            f"({', '.join(IDX_FILES['train'])}, ...)")
        if not self.path.is_dir():
            raise DataError(f"data.path: directory not found: {self.path}")
        (train_x, train_y), (test_x, test_y) = self._split("train"), self._split("test")
        if train_x.shape[1:] != test_x.shape[1:]:
            raise DataError(f"{self.path}: train images are {train_x.shape[1:]} but test images {test_x.shape[1:]}")
        n_train = len(train_x) - self.val_size
        if n_train < 1:
            raise DataError(f"data.val_size: {self.val_size} leaves no training images of {len(train_x)}")
        scale = 255.0 if train_x.dtype == np.uint8 else 1.0
        flat = lambda a: a.reshape(len(a), -1) / scale  # noqa: E731
        return Raw(splits={"train": (flat(train_x[:n_train]), train_y[:n_train]),
                           "val": (flat(train_x[n_train:]), train_y[n_train:]),
                           "test": (flat(test_x), test_y)},
                   image_shape=tuple(train_x.shape[1:]))


@DATASETS.register("fashion_mnist")
class FashionMnist(Mnist):
    """Fashion-MNIST (Xiao et al. 2017) as installed by Debian's ``dataset-fashion-mnist`` package, or a
    user's copy of its IDX files at ``path``; 28x28 grey images of 10 clothing classes, 50k/10k/10k."""

    def __init__(self, *, path: str = FASHION_MNIST_DIR, val_size: NonNegativeInt = 10000):
        super().__init__(path=path, val_size=val_size)

    def load(self) -> Raw:
        if not self.path.exists():
            raise DataError(f"data.path: Fashion-MNIST not found at {self.path}; install Debian's "
                            f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or set data.path")
        return super().load()


def load_data(data: DataConfig, seed: int) -> Dataset:
    """Load, check, split and binarize the dataset of ``data`` (``cfg.data``, or a spec from ``DATASETS.resolve``)."""
    raw = DATASETS.build(data).load()
    where = data.source or data.name
    if raw.splits is None:  # checked before splitting, so that a message's row is the file's row
        x, y = _check_split(raw.x, raw.labels, "x", where, raw.name("x"))
        splits = _split(x, y, data.val_fraction, data.test_fraction, seed, where)
    else:
        splits = {s: _check_split(*raw.splits[s], s, where, raw.name(s)) for s in SPLITS}
    tensors = {s: torch.as_tensor(x, dtype=torch.float32) for s, (x, _) in splits.items()}
    labels = {s: None if y is None else torch.as_tensor(y) for s, (_, y) in splits.items()}
    ds = Dataset(name=data.name, labels=labels, image_shape=raw.image_shape, binarize=data.binarize,
                 truth=None if raw.truth is None else {k: torch.as_tensor(v, dtype=torch.float32) for k, v in raw.truth.items()},
                 **tensors)
    if data.binarize != "none":
        _binarize(ds, data.binarize, seed, where)
    return ds


def _check_split(x, y, part: str, where: str, names: Tuple[str, str]) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Refuse data that would fail late or silently: return ``x`` as float64 ``(N, D)`` and ``y`` as int64 ``(N,)``.

    ``part`` is ``"x"`` (all points, split later) or a split; ``names`` name its data and labels in messages.
    Real numbers or booleans, at least one feature, at least one training point, finite and within
    float32's range (the tensors are float32); labels are integers (or integer-valued floats), one per point.
    """
    what, what_y = names
    x = np.asarray(x)
    if np.iscomplexobj(x):
        raise DataError(f"{where}: {what} is complex (dtype {x.dtype}); expected real numbers")
    if x.dtype != bool and not np.issubdtype(x.dtype, np.number):
        raise DataError(f"{where}: {what} is not numeric (dtype {x.dtype})")
    if x.ndim != 2 or x.shape[1] == 0:
        raise DataError(f"{where}: {what} has shape {x.shape}; expected (N, D) with at least one feature")
    if len(x) == 0 and part in ("x", "train"):
        raise DataError(f"{where}: {what} is empty (shape {x.shape}); training needs at least one point")
    x = x.astype(np.float64, copy=False)
    bad, why = ~np.isfinite(x), "a non-finite value"
    if not bad.any():  # finite in float64 but inf once cast to float32
        bad, why = np.abs(x) > FLOAT32_MAX, f"a value beyond float32's range of +-{FLOAT32_MAX:.4g}"
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{where}: {what} has {why} ({float(x[row, col]):g}) at row {row}, column {col}")
    return x, None if y is None else _check_labels(y, len(x), where, what_y)


def _check_labels(y, n: int, where: str, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{where}: {what} has shape {y.shape}; expected one label per point, shape ({n},)")
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        raise DataError(f"{where}: {what}: labels must be integers (dtype {y.dtype})")
    bad = ~np.isfinite(y) | (y != np.round(y))
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: {what}: labels must be integers, but label {i} is {float(y[i]):g}")
    return y.astype(np.int64)


def _split(x, y, val_fraction, test_fraction, seed, where):
    n = len(x)
    n_val, n_test = math.floor(n * val_fraction), math.floor(n * test_fraction)
    n_train = n - n_val - n_test
    if n_train < 1 or (val_fraction > 0 and n_val < 1) or (test_fraction > 0 and n_test < 1):
        raise DataError(f"{where}: {n} points are too few for val_fraction={val_fraction}, test_fraction={test_fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    parts = np.split(perm, [n_train, n_train + n_val])
    return {s: (x[idx], None if y is None else y[idx]) for s, idx in zip(SPLITS, parts)}


def _binarize(ds: Dataset, mode: str, seed: int, where: str) -> None:
    """Static: one seeded Bernoulli draw for every split. Dynamic: val/test drawn once; train redrawn each epoch."""
    for s in SPLITS:
        x = ds.split(s)
        if x.numel() and (x.min() < 0 or x.max() > 1):
            raise DataError(f"data.binarize: {where} {s} data has values in [{float(x.min()):g}, {float(x.max()):g}]; binarizing needs [0, 1]")
    g = torch.Generator().manual_seed(seed + 7919)
    for s in SPLITS:
        if mode == "static" or s != "train":
            setattr(ds, s, torch.bernoulli(ds.split(s), generator=g))


def binarize_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A fresh Bernoulli draw of grey values in [0, 1] (dynamic binarization)."""
    return torch.bernoulli(x, generator=generator)
