"""Evaluate a trained run: ELBOs, IWAE log-likelihood, exact log p(x) when linear-Gaussian, KL to the posterior, gaps.

Prints a table and writes DIR/evaluation.json. All numbers are nats per data point: the mean over the
split +- se, the standard error over the points (test-set sampling), and [mc +- mc_se], the Monte Carlo
error of the estimate on these points (another --seed; 0 for closed forms). "paired differences" are
per-point differences on the same points (iwae - elbo; log p(x) - iwae and log p(x) - elbo when exact),
whose se is what tells two estimates apart: unpaired +- intervals overlap when the difference is clear.
log_likelihood is exact only for a linear decoder with a Normal prior and
Normal likelihood (x ~ N(b, W W^T + sigma^2 I)); otherwise the IWAE bound with K samples is the
best estimate, and kl_to_true_posterior is the estimate iwae - elbo. --gaps adds Cremer et al.'s
(2018) approximation and amortization gaps from a per-point guide refined by Adam.
"""

from __future__ import annotations

import sys

from pyro_vae.config import MAX_SEED
from pyro_vae.errors import ConfigError


def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="run directory written by pyro-vae train")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="data split (default: test)")
    p.add_argument("--samples", type=int, default=1000, metavar="K", help="importance samples per point for IWAE (default 1000)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="data points per pass (default 256)")
    p.add_argument("--gaps", action="store_true", help="also compute the approximation and amortization gaps")
    p.add_argument("--gap-steps", type=int, default=300, metavar="N", help="Adam steps refining each per-point guide (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from pyro_vae.runs.evaluate import evaluate_run

    for flag, value in (("--samples", args.samples), ("--batch-size", args.batch_size), ("--gap-steps", args.gap_steps)):
        if value < 1:
            raise ConfigError(f"{flag} {value}: must be >= 1")
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed {args.seed}: must be in [0, {MAX_SEED}] (NumPy's legacy seeding takes 32 bits)")
    progress = not args.no_progress and sys.stderr.isatty()
    result = evaluate_run(args.dir, args.split, args.samples, args.batch_size, args.gaps, args.gap_steps,
                          progress=progress, seed=args.seed)
    print(table(result))
    print(f"\nevaluation: {result['run']}/evaluation.json")
    return 0


def _row(name: str, s, note: str = "") -> str:
    if s is None:
        return f"  {name:<24} {'n/a':>12}"
    mc = f"  [mc +- {s['mc_se']:.4f}]" if "mc_se" in s else ""
    return f"  {name:<24} {s['mean']:12.4f} +- {s['se']:.4f}{mc}  {note}".rstrip()


PAIRED = (("iwae_minus_elbo", "iwae - elbo"), ("exact_minus_iwae", "log p(x) - iwae"),
          ("exact_minus_elbo", "log p(x) - elbo"))


def table(r) -> str:
    kl_note = "exact" if r["kl_to_true_posterior"]["exact"] else r["kl_to_true_posterior"].get("what", "estimate")
    lines = [f"{r['run']}: {r['split']} split, {r['n']} points, nats per point",
             "  mean +- se over the test points (test-set sampling) [mc +- Monte Carlo error on these points]",
             _row("elbo", r["elbo"], f"(KL {r['elbo']['kl']})"),
             _row("elbo_monte_carlo", r["elbo_monte_carlo"], "(KL monte_carlo)"),
             _row("iwae", r["iwae"], f"(K = {r['samples']})"),
             _row("log_likelihood", r["log_likelihood"], "(exact: linear-Gaussian)" if r["log_likelihood"] else ""),
             _row("kl_to_true_posterior", r["kl_to_true_posterior"], f"({kl_note})")]
    if r["identity_residual"] is not None:
        lines.append(_row("identity_residual", r["identity_residual"], "(log p(x) - ELBO - KL; ~0 within its SE)"))
    paired = r.get("paired") or {}
    if paired:
        lines += ["  paired differences (same points): mean +- se of the per-point difference [mc +- Monte Carlo]"]
        lines += [_row(label, paired[key]) for key, label in PAIRED if key in paired]
    if r["gaps"] is not None:
        g = r["gaps"]
        lines += [_row("optimal per-point elbo", g["optimal_elbo"], f"({g['steps']} Adam steps)"),
                  _row("approximation_gap", g["approximation_gap"], f"(log p(x) from {g['approximation_gap']['log_p']})"),
                  _row("amortization_gap", g["amortization_gap"])]
    kl = r["kl_per_dimension"]
    kl_text = ", ".join(f"{v:.3f}" for v in kl) if kl is not None else "n/a (q or p not factorized)"
    lines += [f"  KL(q || prior) per dim   {kl_text}",
              f"  active units             {r['active_units']} of {r['latent_dim']} (Cov_x E_q[z_d] > {r['active_unit_threshold']:g})",
              f"  {r['seconds']:.1f} s"]
    return "\n".join(lines)
