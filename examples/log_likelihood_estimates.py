"""How good is a log-likelihood estimate? ELBO, IWAE-K, AIS and a BDMC sandwich on the same trained VAE.

Usage::

    python examples/log_likelihood_estimates.py            # full settings (a few minutes on 2 CPU cores)
    CI=true python examples/log_likelihood_estimates.py    # tiny settings (seconds), as the test suite runs it

Trains the default VAE on the bundled digits, then on N test points prints the mean over points
+- its standard error over points (test-point sampling, not Monte Carlo error) of the ELBO, the
IWAE bound for several K, and AIS for several numbers of annealing steps T; the paired per-point
difference AIS - IWAE (the check "AIS >= IWAE up to Monte Carlo error"); and a BDMC table on data
simulated from the model: T against the forward (lower) and reverse (upper) bounds and their gap.
Writes the tables to runs/examples/log_likelihood_estimates/log_likelihood_estimates.md and a plot
next to it. This uses the Python API (`pyro_vae.evaluation.ais`); from the command line,
`pyro-vae evaluate DIR --ais --bdmc 32` gives the same estimates for a trained run.
"""

import os
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from pyro_vae import load_config, train_run  # noqa: E402
from pyro_vae.evaluation.ais import ais, bdmc  # noqa: E402
from pyro_vae.evaluation.evaluate import evaluate_points  # noqa: E402
from pyro_vae.evaluation.iwae import iwae  # noqa: E402

CI = os.environ.get("CI", "").lower() == "true"  # tiny settings in CI
overrides = ["train.epochs=2", "train.stop=epochs"] if CI else ["train.epochs=30", "train.stop=epochs"]
N = 8 if CI else 64  # test points
KS = [1, 10] if CI else [1, 10, 100, 1000]  # IWAE importance samples (K = 1: a one-sample Monte Carlo ELBO)
TS = [3] if CI else [10, 100, 500]  # AIS annealing steps
BDMC_TS, BDMC_POINTS = ([3], 4) if CI else ([10, 100, 500], 32)
CHAINS, LEAPFROG = (4, 2) if CI else (16, 10)  # AIS chains per point, leapfrog steps per HMC transition
BDMC_CHAINS = 4
out = Path("runs/examples/log_likelihood_estimates")

start = time.perf_counter()
run = train_run(load_config(None, overrides), out=out, overwrite=True, progress=False)
vae = run.vae.eval()
x = run.data.test[:N]


def mean_se(v: torch.Tensor) -> tuple:
    v = v.double()
    return v.mean().item(), (v.std() / len(v) ** 0.5).item()


rows = []  # (estimator, mean, se, seconds)
ests = {}
t0 = time.perf_counter()
torch.manual_seed(0)
ev = evaluate_points(vae, x, samples=KS[-1])
rows.append(("ELBO (analytic KL)", ev["elbo"]["mean"], ev["elbo"]["se"], time.perf_counter() - t0))
for k in KS:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.no_grad():
        ests[f"IWAE-{k}"] = iwae(run.vae.model, run.vae.guide, x, num_samples=k)  # (N,)
    rows.append((f"IWAE-{k}", *mean_se(ests[f"IWAE-{k}"]), time.perf_counter() - t0))
for t in TS:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    result = ais(vae, x, num_steps=t, num_chains=CHAINS, leapfrog_steps=LEAPFROG, initial="encoder")
    ests[f"AIS-{t}"] = result.log_px
    rows.append((f"AIS, T = {t} (accept {result.accept.mean():.2f})", *mean_se(result.log_px),
                 time.perf_counter() - t0))
k_max, t_max = KS[-1], TS[-1]
diff = mean_se(ests[f"AIS-{t_max}"] - ests[f"IWAE-{k_max}"])

bdmc_rows = []
for t in BDMC_TS:
    t0 = time.perf_counter()
    b = bdmc(vae, num_points=BDMC_POINTS, num_steps=t, num_chains=BDMC_CHAINS, leapfrog_steps=LEAPFROG, seed=0)
    s = b.summary()
    bdmc_rows.append((t, s["lower"], s["upper"], s["gap"], mean_se(b.gap)[1], time.perf_counter() - t0))

lines = [f"# Log-likelihood estimates ({'CI' if CI else 'full'} settings)", "",
         f"{N} test points of the bundled digits; mean over the points +- standard error over the points",
         f"(nats per point). AIS: {CHAINS} chains per point, {LEAPFROG} leapfrog steps, start at q(z|x).", "",
         "| estimator | mean log p(x) | SE over points | seconds |", "|---|---:|---:|---:|"]
lines += [f"| {name} | {m:.3f} | {se:.3f} | {sec:.1f} |" for name, m, se, sec in rows]
lines += ["", (f"Paired per point, AIS (T = {t_max}) - IWAE-{k_max}: {diff[0]:+.3f} +- {diff[1]:.3f} nats "
               "(mean +- SE over points)"), "",
          f"BDMC on {BDMC_POINTS} points simulated from the model ({BDMC_CHAINS} chains, forward from the prior):", "",
          "| T | lower (forward AIS) | upper (reverse AIS) | gap | SE of gap | seconds |",
          "|---:|---:|---:|---:|---:|---:|"]
lines += [f"| {t} | {lo:.3f} | {up:.3f} | {gap:.3f} | {se:.3f} | {sec:.1f} |" for t, lo, up, gap, se, sec in bdmc_rows]
lines += ["", f"total time: {time.perf_counter() - start:.0f} s"]
table = "\n".join(lines) + "\n"
(out / "log_likelihood_estimates.md").write_text(table)
print(table)

fig, ax = plt.subplots(figsize=(6, 4))
ax.errorbar(KS, [ests[f"IWAE-{k}"].mean().item() for k in KS], yerr=[mean_se(ests[f"IWAE-{k}"])[1] for k in KS],
            marker="o", capsize=3, label="IWAE-K (x: K)")
ax.errorbar(TS, [ests[f"AIS-{t}"].mean().item() for t in TS], yerr=[mean_se(ests[f"AIS-{t}"])[1] for t in TS],
            marker="s", capsize=3, label="AIS (x: steps T)")
ax.axhline(ev["elbo"]["mean"], color="gray", ls="--", label="ELBO")
ax.set_xscale("log")
ax.set_xlabel("K (IWAE) or T (AIS)")
ax.set_ylabel("log p(x) estimate, nats per test point")
ax.legend()
fig.tight_layout()
fig.savefig(out / "plots" / "log_likelihood_estimates.png", dpi=110)
print(f"table: {out / 'log_likelihood_estimates.md'}")
print(f"plot: {out / 'plots' / 'log_likelihood_estimates.png'}")
