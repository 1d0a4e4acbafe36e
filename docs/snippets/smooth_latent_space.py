"""Why nearby codes decode alike: the default digits VAE against the same VAE with the KL switched (almost) off.

Both are trained for the same fixed budget (60 epochs, seeds 0 and 1) and differ only in ``inference.beta``: 1 (the
ELBO) or 1e-4 (beta must be > 0), which leaves the reconstruction term alone in charge. For each the snippet
prints q's noise and the layout of the codes mu(x), how far apart codes of different digits sit in units of that
noise, how much the noise changes the decoding, and how smoothly the decoder maps straight lines between the codes
of two test digits (mean distance between neighbouring decodings, path length over endpoint distance).

    python docs/snippets/smooth_latent_space.py [FIGURE_DIR]

With FIGURE_DIR (the page uses docs/concepts/img) it also writes the decoded interpolations and latent grids of
seed 0 there as smooth_latent_interpolations.png and smooth_latent_grid.png.
"""

import contextlib
import io
import sys
from pathlib import Path

import torch
from torch.distributions import Normal, kl_divergence

from pyro_vae.build import prepare
from pyro_vae.config import load
from pyro_vae.training.trainer import Trainer

torch.set_num_threads(1)  # same float summation order on every machine
FIGURES = Path(sys.argv[1]) if len(sys.argv) > 1 else None
BETAS, SEEDS, EPOCHS, STEPS = (1.0, 1e-4), (0, 1), 60, 32
LABEL = {1.0: "beta = 1", 1e-4: "beta = 1e-4"}


def train(beta: float, seed: int):
    cfg = load(None, [f"seed={seed}", f"inference.beta={beta}", "train.stop=epochs", f"train.epochs={EPOCHS}"])
    data, vae = prepare(cfg)
    trainer = Trainer.from_config(cfg, data, vae, run=None, progress=False)
    with contextlib.redirect_stdout(io.StringIO()):  # per-epoch lines carry timings
        trainer.fit()
    return data, vae.eval(), trainer.metrics[-1]["val_elbo"]


@torch.no_grad()
def measure(data, vae):
    """The numbers of one trained VAE (test points; the likelihood is Normal, so g(z) is the mean of p(x|z))."""
    g = torch.Generator().manual_seed(0)
    x, labels = data.test, data.labels["test"]
    loc, scale = vae.encoder.loc_scale(x)  # (n, 2) each: q(z|x) = N(loc, diag scale^2)
    kl = kl_divergence(Normal(loc, scale), Normal(0.0, 1.0)).sum(-1).mean()
    # the nearest code of a different digit, in units of that point's noise v(x)
    dist = torch.cdist(loc, loc).masked_fill(labels[:, None] == labels[None, :], float("inf"))
    separation = (dist.min(-1).values / scale.mean(-1)).median()
    decode = vae.decoder
    jitter = (decode(loc + scale * torch.randn(loc.shape, generator=g)) - decode(loc)).norm(dim=-1).mean()
    # straight lines between the codes of 100 random pairs of test digits, STEPS + 1 points each
    pairs = torch.randint(len(x), (100, 2), generator=g)
    t = torch.linspace(0, 1, STEPS + 1)[None, :, None]
    a, b = loc[pairs[:, 0]][:, None], loc[pairs[:, 1]][:, None]
    images = decode(a + t * (b - a))  # (100, STEPS + 1, 64)
    steps = (images[:, 1:] - images[:, :-1]).norm(dim=-1)  # (100, STEPS)
    ratio = steps.sum(1) / (images[:, -1] - images[:, 0]).norm(dim=-1)
    return {"scale": scale.mean(), "sd": loc.std(0), "kl": kl, "separation": separation,
            "jitter": jitter, "step": steps.mean(), "ratio": ratio.mean(),
            "recon": (decode(loc) - x).norm(dim=-1).mean()}


results, seed0 = {}, {}
for beta in BETAS:
    for seed in SEEDS:
        data, vae, elbo = train(beta, seed)
        results[beta, seed] = {**measure(data, vae), "elbo": elbo}
        if seed == 0:
            seed0[beta] = (data, vae)

r = {beta: results[beta, 0] for beta in BETAS}
print(f"digits VAE, {EPOCHS} epochs, seed 0                        beta = 1     beta = 1e-4")
rows = [("validation ELBO (nats per point)", "elbo", "{:11.2f}"),
        ("KL(q(z|x) || p(z)) per test point", "kl", "{:11.2f}"),
        ("reconstruction error |x - g(mu(x))|", "recon", "{:11.3f}"),
        ("q's noise v(x), mean over points and dims", "scale", "{:11.4f}"),
        ("nearest code of another digit, in units of v", "separation", "{:11.1f}"),
        ("decoding change under q's own noise", "jitter", "{:11.4f}"),
        (f"interpolations, {STEPS} steps: mean neighbour distance", "step", "{:11.4f}"),
        ("interpolations: path length / endpoint distance", "ratio", "{:11.3f}")]
for label, key, fmt in rows:
    print(f"  {label:<50}" + "".join(fmt.format(float(r[beta][key])) for beta in BETAS))
print(f"  {'spread of the codes mu(x), sd per dimension':<50}"
      + "".join(f"  {r[beta]['sd'][0]:.2f} {r[beta]['sd'][1]:.2f}" for beta in BETAS))
print("path length / endpoint distance by seed:" + "".join(
    f"   {LABEL[beta]}: " + " ".join(f"{results[beta, s]['ratio']:.3f}" for s in SEEDS) for beta in BETAS))
print("mean neighbour distance by seed:        " + "".join(
    f"   {LABEL[beta]}: " + " ".join(f"{results[beta, s]['step']:.4f}" for s in SEEDS) for beta in BETAS))



def mosaic(images: torch.Tensor) -> torch.Tensor:
    """``(rows, cols, 8, 8)`` images as one ``(rows * 9 - 1, cols * 9 - 1)`` picture with a one-pixel grey gap."""
    rows, cols = images.shape[:2]
    out = torch.full((rows * 9 - 1, cols * 9 - 1), 0.5)
    for i in range(rows):
        for j in range(cols):
            out[i * 9:i * 9 + 8, j * 9:j * 9 + 8] = images[i, j]
    return out


if FIGURES is not None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    titles = {1.0: "beta = 1 (the ELBO)", 1e-4: "beta = 1e-4 (KL almost off)"}
    with torch.no_grad():
        # interpolations: from the code of the first test image of digit a to that of digit b, for five pairs
        fig, axes = plt.subplots(1, 2, figsize=(12, 3.0))
        for ax, beta in zip(axes, BETAS):
            data, vae = seed0[beta]
            loc, _ = vae.encoder.loc_scale(data.test)
            first = [int((data.labels["test"] == d).nonzero()[0]) for d in range(10)]
            t = torch.linspace(0, 1, 12)[:, None]
            x = data.test
            rows = [torch.cat([x[first[a]][None], vae.decoder(loc[first[a]] + t * (loc[first[b]] - loc[first[a]])),
                               x[first[b]][None]]) for a, b in ((0, 1), (2, 3), (4, 5), (6, 7), (8, 9))]
            ax.imshow(mosaic(torch.stack(rows).reshape(5, 14, 8, 8).clamp(0, 1)), cmap="gray", vmin=0, vmax=1)
            ax.set_axis_off()
            ax.set_title(f"{titles[beta]}\ntest digit | 12 decodings from its code to the other's | test digit",
                         fontsize=10)
        fig.tight_layout()
        fig.savefig(FIGURES / "smooth_latent_interpolations.png", dpi=90)
        plt.close(fig)

        # latent grids: the codes of the training digits, and the decodings of a grid over the same square
        n = 15
        fig, axes = plt.subplots(2, 2, figsize=(8, 8.4))
        for k, beta in enumerate(BETAS):
            data, vae = seed0[beta]
            loc, scale = vae.encoder.loc_scale(data.train)
            lim = 2.5 * float(loc.std(0).max())
            ax = axes[0, k]
            points = ax.scatter(loc[:, 0], loc[:, 1], c=data.labels["train"], cmap="tab10", s=3, vmin=-0.5, vmax=9.5)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            ax.set_title(f"{titles[beta]}\ncodes mu(x) of the training digits, mean v(x) {float(scale.mean()):.3f}",
                         fontsize=10)
            grid = torch.linspace(-lim, lim, n)
            zz = torch.stack(torch.meshgrid(grid, grid.flip(0), indexing="xy"), -1)  # (row, col, 2): z_2 falls down
            images = vae.decoder(zz.reshape(-1, 2)).reshape(n, n, 8, 8).clamp(0, 1)
            axes[1, k].imshow(mosaic(images), cmap="gray", vmin=0, vmax=1, extent=(-lim, lim, -lim, lim))
            axes[1, k].set_title(f"decodings g(z), {n} x {n} grid over that square", fontsize=10)
        fig.colorbar(points, ax=axes[0, 1], ticks=range(10), label="digit", fraction=0.046)
        fig.tight_layout()
        fig.savefig(FIGURES / "smooth_latent_grid.png", dpi=72)
        plt.close(fig)
