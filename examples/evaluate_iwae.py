"""Evaluate a trained VAE with IWAE: the bound tightens toward log p(x) as the number of importance samples K grows."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import load_config, train_run  # noqa: E402
from pyro_vae.evaluation.iwae import iwae  # noqa: E402

CI = os.environ.get("CI") == "true"  # tiny settings in CI
tiny = ["train.epochs=1", "model.decoder.hidden=[16]", "guide.hidden=[16]"] if CI else ["train.epochs=30"]
out = Path("runs/examples/evaluate_iwae")
run = train_run(load_config(None, tiny), out=out, overwrite=True, progress=False)

x = run.data.test
ks = [1, 10, 100] if CI else [1, 10, 100, 1000]
bounds = []
for k in ks:
    torch.manual_seed(0)
    with torch.no_grad():
        per_point = iwae(run.vae.model, run.vae.guide, x, num_samples=k)  # (n_test,); K = 1 is the ELBO
    se = per_point.std() / len(per_point) ** 0.5
    bounds.append((per_point.mean().item(), se.item()))
    print(f"IWAE bound, K = {k:5d}: {bounds[-1][0]:9.3f} +- {bounds[-1][1]:.3f} nats per test point")

fig, ax = plt.subplots(figsize=(6, 4))
ax.errorbar(ks, [b[0] for b in bounds], yerr=[b[1] for b in bounds], marker="o", capsize=3)
ax.set_xscale("log")
ax.set_xlabel("importance samples K (K = 1: the ELBO)")
ax.set_ylabel("IWAE bound on log p(x), nats per test point")
fig.tight_layout()
fig.savefig(out / "plots" / "iwae_vs_k.png", dpi=110)
print(f"run directory: {run.path}")
print(f"plot: {out / 'plots' / 'iwae_vs_k.png'}")
