"""Figures written into a run's ``plots/``: learning curves, image grids, the latent space."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines with no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


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
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO (nats per data point, higher is better)")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(fig, path)


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


def reconstructions(x: torch.Tensor, recon: torch.Tensor, image_shape: Sequence[int], path: Path) -> Path:
    """Pairs of rows: data on top, its reconstruction below."""
    n = min(10, len(x))
    rows = torch.cat([x[:n], recon[:n]])
    return image_grid(rows, image_shape, path, "data (top) and reconstructions (bottom)", ncols=n)


def latent_scatter(z: torch.Tensor, labels: Optional[torch.Tensor], path: Path) -> Path:
    """The means of q(z|x) in a 2-D latent space, coloured by label."""
    z = z.detach().cpu().numpy()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if labels is None:
        ax.scatter(z[:, 0], z[:, 1], s=4, alpha=0.6)
    else:
        sc = ax.scatter(z[:, 0], z[:, 1], c=labels.cpu().numpy(), cmap="tab10", s=4, alpha=0.7)
        fig.colorbar(sc, ax=ax, label="label")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title("latent means of q(z|x), test split")
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
