"""Gradient signal-to-noise of the IWAE bound against K, with and without DReG (Rainforth et al. 2018; Tucker et al.
2019).

Usage::

    python examples/gradient_snr.py                     # the default VAE on the digits, trained until converged
    python examples/gradient_snr.py examples/configs/ppca.yaml --epochs 3 --repeats 2000  # pPCA, 3 epochs in
    CI=true python examples/gradient_snr.py             # tiny settings (seconds), as the test suite runs it

Trains the VAE of CONFIG (default: the default config, on the bundled digits) until its plateau rule stops
it, or for exactly ``--epochs N``, then, at those fixed parameters, evaluates the gradient of the IWAE bound
with K importance samples R times on one batch, for several K, with the plain reparameterized estimator and
with DReG, and prints the encoder's and decoder's mean per-coordinate SNR |mean| / sd
(:func:`pyro_vae.evaluation.gradients.gradient_statistics`). Rainforth et al. predict the plain encoder SNR
falls like 1 / sqrt(K) and the decoder's rises like sqrt(K); DReG's encoder SNR should rise (Tucker et al.).
Writes the table to runs/examples/gradient_snr/<config name>/gradient_snr.md and a plot next to it.
"""

import argparse
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import load_config, train_run  # noqa: E402
from pyro_vae.config import InferenceConfig  # noqa: E402
from pyro_vae.evaluation.gradients import gradient_statistics  # noqa: E402
from pyro_vae.inference.objectives import build_elbo  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("config", nargs="?", help="YAML config (default: the built-in default config)")
parser.add_argument("--epochs", type=int, help="train exactly this many epochs (default: until converged)")
parser.add_argument("--repeats", type=int, default=200, help="gradient evaluations R per (K, estimator) (default 200)")
args = parser.parse_args()
CI = os.environ.get("CI", "").lower() == "true"  # tiny settings in CI
epochs = 1 if CI else args.epochs
overrides = [f"train.epochs={epochs}", "train.stop=epochs"] if epochs else []  # default: trained until converged
KS = [1, 10] if CI else [1, 5, 50, 500]
REPEATS, POINTS = (5, 8) if CI else (args.repeats, 64)
ESTIMATORS = ("reparam", "dreg")

name = Path(args.config).stem if args.config else "default"
out = Path("runs/examples/gradient_snr") / name
trained = f"{epochs} epoch{'s' if epochs != 1 else ''}" if epochs else "until converged"
run = train_run(load_config(args.config, overrides), out=out / "run", overwrite=True, progress=False)
vae, x = run.vae.eval(), run.data.train[:POINTS]
rows = []
for k in KS:
    for estimator in ESTIMATORS:
        torch.manual_seed(0)
        loss = build_elbo(InferenceConfig(objective="iwae", estimator=estimator, num_particles=k))
        s = gradient_statistics(vae, loss, x, REPEATS)
        rows.append((k, estimator, s["encoder"]["snr"], s["decoder"]["snr"], s["encoder"]["variance"],
                     s["encoder"]["snr_floor"], s["encoder"]["snr_median"], s["decoder"]["snr_median"]))
        print(f"K = {k:4d} {estimator:8s} encoder SNR {rows[-1][2]:.3f}  decoder SNR {rows[-1][3]:.3f}")

floor = rows[0][5]
lines = [f"# Gradient SNR of the IWAE bound against K ({'tiny CI settings: numbers mean nothing' if CI else 'full'})",
         "", f"The VAE of {args.config or 'the default config (bundled digits)'}, trained by `pyro-vae train` "
         f"({trained}); {REPEATS} gradient evaluations on {POINTS} training points "
         f"at the final parameters. SNR = mean (median) over coordinates of |mean| / sd; no-signal floor of the "
         f"mean {floor:.3f}.", "",
         "| K | estimator | encoder SNR, mean (median) | decoder SNR, mean (median) | encoder grad variance |",
         "|---:|---|---:|---:|---:|"]
lines += [f"| {k} | {e} | {se:.3f} ({sem:.3f}) | {sd:.3f} ({sdm:.3f}) | {v:.4g} |"
          for k, e, se, sd, v, _, sem, sdm in rows]
(out / "gradient_snr.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))

fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharex=True)
for ax, col, title in ((axes[0], 2, "encoder (phi)"), (axes[1], 3, "decoder (theta)")):
    for estimator, marker in zip(ESTIMATORS, "os"):
        ax.plot(KS, [r[col] for r in rows if r[1] == estimator], marker=marker, label=estimator)
    ax.axhline(floor, color="grey", linestyle=":", label="no-signal floor")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("importance samples K")
    ax.set_title(title)
axes[0].set_ylabel("mean per-coordinate SNR")
axes[0].legend()
fig.tight_layout()
(out / "plots").mkdir(parents=True, exist_ok=True)
fig.savefig(out / "plots" / "gradient_snr.png", dpi=110)
print(f"table: {out / 'gradient_snr.md'}")
print(f"plot: {out / 'plots' / 'gradient_snr.png'}")
