"""A comparison as a Markdown table and figures."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence

import matplotlib
import matplotlib.pyplot as plt  # noqa: E402

from pyro_vae.compare.methods import Budget, MethodResult  # noqa: E402

matplotlib.use("Agg")  # files only: runs on machines with no display


def fmt(v: Optional[float], digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(rows: Sequence[MethodResult], budget: Budget) -> str:
    """The comparison as a Markdown table (bounds in nats per test point, higher is better)."""
    limit = " and ".join(s for s in (f"{budget.epochs} epochs" if budget.epochs else "",
                                      f"{budget.seconds:g} s" if budget.seconds else "") if s)
    lines = [f"# Comparison (budget: {limit}; test log-likelihood: exact where it exists, else IWAE with "
             f"K = {budget.eval_samples})", "",
             "| method | train ELBO | val ELBO | test ELBO | test log-lik | exact log p(x) | seconds | examples/s | "
             "iterations | grad var (encoder) | grad var (decoder) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {fmt(r.train_elbo)} | {fmt(r.val_elbo)} | {fmt(r.test_elbo)} | "
                     f"{fmt(r.test_log_likelihood)} | {fmt(r.exact_log_likelihood)} | {r.seconds:.1f} | "
                     f"{r.examples_per_second:.0f} | {r.iterations} | {r.extra.get('grad_variance_encoder', float('nan')):.4g} | "
                     f"{r.extra.get('grad_variance_decoder', float('nan')):.4g} |")
    lines += ["", "Train ELBO is each method's own objective averaged over the last epoch (an IWAE or Renyi bound "
              "for those methods); val and test ELBO are the standard ELBO for all. Gradient variance: trace of the "
              "covariance of the per-point stochastic gradient at the final parameters on one fixed batch."]
    return "\n".join(lines) + "\n"


def write_plots(rows: Sequence[MethodResult], directory: Path) -> List[Path]:
    """Validation ELBO against wall time and against epoch (overlaid), and a bar chart of final bounds."""
    paths = []
    for key, label, name in (("wall_time", "training wall time (s)", "learning_curves_wall_time.png"),
                             ("epoch", "epoch", "learning_curves_epoch.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in rows:
            ax.plot([c[key] for c in r.curve], [c["val_elbo"] for c in r.curve], marker=".", label=r.name)
        ax.set_xlabel(label)
        ax.set_ylabel("validation ELBO (nats per point)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        paths.append(_save(fig, directory / name))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 4))
    xs = range(len(rows))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [r.test_elbo for r in rows], width, label="test ELBO")
    ax.bar([x + width / 2 for x in xs], [r.test_log_likelihood if r.test_log_likelihood is not None else float("nan")
                                         for r in rows], width, label="test log-likelihood (exact or IWAE)")
    ax.set_xticks(list(xs), [r.name for r in rows], rotation=20, ha="right")
    ax.set_ylabel("nats per test point (higher is better)")
    values = [v for r in rows for v in (r.test_elbo, r.test_log_likelihood) if v is not None]
    if values:  # bars of large negative numbers differ at the top: zoom there
        lo, hi = min(values), max(values)
        pad = 0.1 * (hi - lo) + 1e-3 * abs(hi) + 1e-6
        ax.set_ylim(lo - 3 * pad, hi + pad)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    paths.append(_save(fig, directory / "final_bounds.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
