"""Figures written into a run's ``plots/``: learning curves, image grids, the latent space."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

matplotlib.use("Agg")  # files only: runs on machines with no display


def learning_curves(metrics: List[Dict], path: Path) -> Path:
    """Train and validation ELBO (nats per data point) against epoch."""
    fig, ax = plt.subplots(figsize=(6, 4))
    epochs = [m["epoch"] for m in metrics]
    ax.plot(epochs, [m["train_elbo"] for m in metrics], label="train (objective, running mean)")
    ax.plot(epochs, [m["val_elbo"] for m in metrics], label="validation ELBO")
    if len(metrics) > 4:  # the first epoch's bound is often far below the rest: do not let it flatten them
        later = [v for m in metrics[1:] for v in (m["train_elbo"], m["val_elbo"]) if np.isfinite(v)]
        if later:
            lo, hi = min(later), max(later)
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.05 * (hi - lo + 1e-9))
    _mark_schedule(ax, metrics)
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point, higher is better)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


def _mark_schedule(ax, metrics: List[Dict]) -> None:
    """Dotted lines where the step size was cut, and a dot on the best validation ELBO (the kept parameters)."""
    cuts = [m["epoch"] for prev, m in zip(metrics, metrics[1:]) if m.get("lr") is not None and m.get("lr") != prev.get("lr")]
    for i, epoch in enumerate(cuts):
        ax.axvline(epoch - 0.5, color="grey", ls=":", lw=0.8, label="step size cut" if i == 0 else None)
    finite = [m for m in metrics if np.isfinite(m["val_elbo"])]
    if finite:
        best = max(finite, key=lambda m: m["val_elbo"])
        ax.plot([best["epoch"]], [best["val_elbo"]], "o", color="C1", ms=5, label=f"best validation (epoch {best['epoch']})")


def image_grid(images: torch.Tensor, image_shape: Sequence[int], path: Path, title: str, ncols: int = 10) -> Path:
    """``images``: ``(n, prod(image_shape))`` in roughly [0, 1], drawn as a grid of greyscale images."""
    images = images.detach().cpu().reshape(-1, *image_shape).clamp(0, 1).numpy()
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(ncols * 0.8, nrows * 0.8 + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, images):
        ax.imshow(img, cmap="gray", vmin=0, vmax=1)
    fig.suptitle(title)
    return _save(fig, path)


def reconstructions(x: torch.Tensor, recon: torch.Tensor, image_shape: Sequence[int], path: Path,
                    what: str = "mean of q(z|x)") -> Path:
    """Pairs of rows: data on top, below it the mean of p(x|z) at ``z`` = ``what`` (the summary of q used)."""
    n = min(10, len(x))
    rows = torch.cat([x[:n], recon[:n]])
    return image_grid(rows, image_shape, path, f"data (top); mean of p(x|z) at z = {what} (bottom)", ncols=n)


def latent(z: torch.Tensor, labels: Optional[torch.Tensor], path: Path, what: str = "mean of q(z|x)",
           split: str = "test") -> Path:
    """One summary ``z`` of q(z|x) per data point, ``(n, latent_dim)``, coloured by label: a strip per label
    (or a histogram) for latent_dim 1, a scatter for 2, the first two principal axes for more."""
    z = z.detach().cpu().double().numpy()
    labels = None if labels is None else labels.cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    title = f"{what}, {split} split"
    if z.shape[1] == 1:
        _strips(ax, z[:, 0], labels)
    elif z.shape[1] == 2:
        _scatter(fig, ax, z, labels, ("$z_1$", "$z_2$"))
    else:
        points, _, share = principal_axes(z)
        _scatter(fig, ax, points, labels, [f"principal axis {i + 1} ({100 * s:.0f}% of variance)" for i, s in enumerate(share)])
        title += f"\non the first two principal axes of the {z.shape[1]}-D points ({100 * share.sum():.0f}% of their variance)"
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def principal_axes(z: np.ndarray, k: int = 2) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PCA of the rows of ``z`` ``(n, d)``, ``k <= d``: the centred rows projected on the first ``k`` principal axes
    ``(n, k)``, the axes as orthonormal rows ``(k, d)`` (each signed so its largest entry is positive), and the share
    of the total variance along each ``(k,)``.
    """
    centred = z - z.mean(axis=0)
    # thin SVD: (min(n, d), d) axes, never a (d, d) matrix; full only when fewer than k points leave too few axes
    _, s, vt = np.linalg.svd(centred, full_matrices=len(z) < k)
    largest = np.abs(vt[:k]).argmax(axis=1)  # (k,): an axis's sign is arbitrary; fix it by its largest entry
    axes = vt[:k] * np.sign(vt[np.arange(k), largest])[:, None]  # (k, d)
    variance = np.zeros(z.shape[1])
    variance[: len(s)] = s**2
    share = variance[:k] / max(variance.sum(), np.finfo(float).tiny)
    return centred @ axes.T, axes, share


def _scatter(fig, ax, points: np.ndarray, labels: Optional[np.ndarray], axis_labels: Sequence[str]) -> None:
    """``points`` ``(n, 2)`` as dots, coloured by label when there are labels."""
    if labels is None:
        ax.scatter(points[:, 0], points[:, 1], s=4, alpha=0.6)
    else:
        sc = ax.scatter(points[:, 0], points[:, 1], c=labels, cmap="tab10", s=4, alpha=0.7)
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])


def _strips(ax, z: np.ndarray, labels: Optional[np.ndarray]) -> None:
    """A 1-D latent ``z`` ``(n,)``: one jittered strip of dots per label, or a histogram without labels."""
    if labels is None:
        ax.hist(z, bins=40)
        ax.set_ylabel("count")
    else:
        jitter = np.random.default_rng(0).uniform(-0.3, 0.3, size=len(z))  # a local stream: global RNG untouched
        ax.scatter(z, labels + jitter, c=labels, cmap="tab10", s=4, alpha=0.7)
        if len(np.unique(labels)) <= 20:
            ax.set_yticks(np.unique(labels))
        ax.set_ylabel("label (jittered)")
    ax.set_xlabel("$z_1$")


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
