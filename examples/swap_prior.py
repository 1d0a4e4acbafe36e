"""Swap the prior by one word: Normal, Laplace and Student-t (examples/configs/student_t_prior.yaml), side by side."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import load_config, train_run  # noqa: E402

CI = os.environ.get("CI") == "true"  # tiny settings in CI
config = Path(__file__).parent / "configs" / "student_t_prior.yaml"
tiny = ["train.epochs=1", "model.decoder.hidden=[16]", "guide.hidden=[16]"] if CI else ["train.epochs=30"]
out = Path("runs/examples/swap_prior")

runs = {}
for prior in ("normal", "laplace", "student_t"):
    overrides = tiny + ([f"model.prior={prior}"] if prior != "student_t" else [])  # student_t: the config as written
    runs[prior] = train_run(load_config(config, overrides), out=out / prior, overwrite=True, progress=False)
    s = runs[prior].summary
    print(f"prior {prior:<10} val ELBO {s['val_elbo']:9.2f}  KL estimator for z: {s['kl']['z']} (requested {s['kl_requested']})")

fig, axes = plt.subplots(1, 3, figsize=(13, 4.3), sharex=True, sharey=True)
for ax, (prior, run) in zip(axes, runs.items()):
    with torch.no_grad():
        z = run.vae.encoder(run.data.test).mean
    ax.scatter(z[:, 0], z[:, 1], c=run.data.labels["test"], cmap="tab10", s=5)
    ax.set_title(f"prior {prior}: val ELBO {run.summary['val_elbo']:.1f}")
    ax.set_xlabel("$z_1$")
axes[0].set_ylabel("$z_2$")
fig.suptitle("means of q(z|x) on the test digits, by prior")
fig.tight_layout()
fig.savefig(out / "latents.png", dpi=110)
print(f"run directories: {', '.join(str(r.path) for r in runs.values())}")
print(f"plot: {out / 'latents.png'}")
