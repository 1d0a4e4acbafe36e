"""Swap the guide: mean-field vs full-rank q(z|x) on probabilistic-PCA data (configs/ppca.yaml), where log p(x) is exact."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch.distributions import MultivariateNormal  # noqa: E402

from pyro_vae import load_config, train_run  # noqa: E402

CI = os.environ.get("CI") == "true"  # tiny settings in CI
config = Path(__file__).parent / "configs" / "ppca.yaml"  # linear-Gaussian: the exact log p(x) is known
tiny = ["train.epochs=1"] if CI else []
out = Path("runs/examples/swap_guide")

results = {}
for guide in ("mean_field", "full_rank"):
    run = train_run(load_config(config, tiny + [f"guide.name={guide}"]), out=out / guide,
                    overwrite=True, progress=False)
    with torch.no_grad():  # exact log p(x) of the trained linear-Gaussian model: N(b, W W^T + sigma^2 I)
        W, b, s2 = run.vae.decoder.weight, run.vae.decoder.bias, run.vae.likelihood.scale ** 2
        log_px = MultivariateNormal(b, W @ W.T + s2 * torch.eye(len(b))).log_prob(run.data.val).mean().item()
    results[guide] = (run, log_px)
    print(f"guide {guide:<10} val ELBO {run.summary['val_elbo']:8.3f}  exact val log p(x) {log_px:8.3f}  "
          f"gap KL(q || p(z|x)) {log_px - run.summary['val_elbo']:.3f}")

fig, ax = plt.subplots(figsize=(6, 4))
for guide, (run, log_px) in results.items():
    line, = ax.plot([m["epoch"] for m in run.metrics], [m["val_elbo"] for m in run.metrics], label=f"{guide}: val ELBO")
    ax.axhline(log_px, color=line.get_color(), ls=":", label=f"{guide}: exact log p(x) at the end")
ax.set_xlabel("epoch")
ax.set_ylabel("nats per data point")
ax.legend()
fig.tight_layout()
fig.savefig(out / "elbo_vs_log_px.png", dpi=110)
print(f"plot: {out / 'elbo_vs_log_px.png'}")
