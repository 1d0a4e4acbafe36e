"""Compare the KL estimators: analytic (TraceMeanField_ELBO) vs Monte Carlo (Trace_ELBO), curves and gradient noise."""

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import load_config, train_run  # noqa: E402
from pyro_vae.evaluation.gradients import gradient_variance  # noqa: E402
from pyro_vae.inference.objectives import build_elbo  # noqa: E402

CI = os.environ.get("CI") == "true"  # tiny settings in CI
tiny = ["train.epochs=1", "model.decoder.hidden=[16]", "guide.hidden=[16]"] if CI else ["train.epochs=30"]
out = Path("runs/examples/compare_kl_estimators")

runs = {kl: train_run(load_config(None, tiny + [f"inference.kl={kl}"]), out=out / kl, overwrite=True, progress=False)
        for kl in ("analytic", "monte_carlo")}
for kl, run in runs.items():
    print(f"kl {kl:<12} val ELBO {run.summary['val_elbo']:9.2f}  (KL estimator used for z: {run.summary['kl']['z']})")

# Both estimators at the SAME parameters (the analytic run's), on one fixed validation batch: same
# expected gradient, different noise; the Monte Carlo KL adds variance, mostly to the encoder's gradient.
vae, x = runs["analytic"].vae, runs["analytic"].data.val[:64]
noise = {}
for kl in runs:
    torch.manual_seed(0)
    noise[kl] = gradient_variance(vae, build_elbo(runs[kl].config.inference), x, repeats=5 if CI else 50)
    print(f"gradient variance (trace of covariance) with kl={kl:<12} encoder {noise[kl]['encoder']:10.4g}  "
          f"decoder {noise[kl]['decoder']:10.4g}")

fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
for kl, run in runs.items():
    left.plot([m["epoch"] for m in run.metrics], [m["val_elbo"] for m in run.metrics], marker="o", label=f"kl: {kl}")
left.set_xlabel("epoch")
left.set_ylabel("validation ELBO (nats per data point)")
left.legend()
names = ["encoder", "decoder"]
for i, kl in enumerate(noise):
    right.bar([j + 0.4 * i for j in range(2)], [noise[kl][n] for n in names], width=0.4, label=f"kl: {kl}")
right.set_xticks([0.2, 1.2], names)
right.set_yscale("log")
right.set_ylabel("gradient variance at the same parameters")
right.legend()
fig.tight_layout()
fig.savefig(out / "kl_estimators.png", dpi=110)
print(f"run directories: {', '.join(str(r.path) for r in runs.values())}")
print(f"plot: {out / 'kl_estimators.png'}")
