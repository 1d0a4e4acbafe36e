"""Build a VAE from a config and train it with your own pyro.infer.SVI loop (no pyro_vae trainer)."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pyro  # noqa: E402
from pyro.infer import SVI, Trace_ELBO  # noqa: E402

from pyro_vae import build_vae, load_config, load_data  # noqa: E402

CI = os.environ.get("CI") == "true"  # tiny settings in CI
epochs = 1 if CI else 30
out = Path("runs/examples/plain_pyro_svi")
out.mkdir(parents=True, exist_ok=True)

cfg = load_config(None, ["model.latent_dim=2"] + (["model.decoder.hidden=[16]", "guide.hidden=[16]"] if CI else []))
data = load_data(cfg.data, cfg.seed)
pyro.set_rng_seed(cfg.seed)
vae = build_vae(cfg, data.x_dim)  # an nn.Module; vae.model and vae.guide are plain Pyro programs

svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
history = []
for epoch in range(epochs):
    loss = sum(svi.step(xb) for xb in data.train.split(64))
    val = svi.evaluate_loss(data.val)
    history.append((-loss / len(data.train), -val / len(data.val)))  # ELBO, nats per data point
    print(f"epoch {epoch + 1:3d}  train ELBO {history[-1][0]:9.2f}  val ELBO {history[-1][1]:9.2f}")

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(range(1, epochs + 1), [h[0] for h in history], label="train (running)")
ax.plot(range(1, epochs + 1), [h[1] for h in history], label="validation")
ax.set_xlabel("epoch")
ax.set_ylabel("ELBO (nats per data point)")
ax.legend()
fig.tight_layout()
fig.savefig(out / "elbo.png", dpi=110)
print(f"plot: {out / 'elbo.png'}")
