"""Train the default VAE (digits, 2-D latent) into a run directory, as `pyro-vae train` does."""

import os

from pyro_vae import load_config, train_run

CI = os.environ.get("CI") == "true"  # tiny settings in CI
overrides = ["train.epochs=1", "model.decoder.hidden=[16]", "guide.hidden=[16]"] if CI else []
run = train_run(load_config(None, overrides), out="runs/examples/train_default", overwrite=True, progress=False)
s = run.summary
print(f"ELBO (nats per data point): val {s['val_elbo']:.2f}  test {s['test_elbo']:.2f}; KL per site: {s['kl']}")
print(f"run directory: {run.path}")
for plot in s["plots"]:
    print(f"plot: {run.path / plot}")
