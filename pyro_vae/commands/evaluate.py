"""Evaluate a trained run: ELBOs, IWAE, exact log p(x) when linear-Gaussian, KL to the posterior, gaps, AIS, BDMC.

Prints a table and writes DIR/evaluation.json. All numbers are nats per data point: the mean over the
split +- se, the standard error over the points (test-set sampling), and [mc +- mc_se], the Monte Carlo
error of the estimate on these points (another --seed; 0 for closed forms). "paired differences" are
per-point differences on the same points (iwae - elbo; log p(x) - iwae and log p(x) - elbo when exact),
whose se is what tells two estimates apart: unpaired +- intervals overlap when the difference is clear.
log_likelihood is exact only for a linear decoder with a Normal prior and
Normal likelihood (x ~ N(b, W W^T + sigma^2 I)); otherwise the IWAE bound with K samples is the
best estimate, and kl_to_true_posterior is the estimate iwae - elbo. --gaps adds Cremer et al.'s
(2018) approximation and amortization gaps from a per-point guide refined by Adam.

Gold-standard references (each on a random stream of its own, so the numbers above do not change):

--ais: annealed importance sampling on every point, from q(z|x) (--ais-start prior: from p(z)) to the
posterior through --ais-steps T temperatures, --ais-chains C chains per point and an HMC move of
--hmc-leapfrog L leapfrog steps at each temperature. "ais" is the log of the chains' mean weight, a
stochastic lower bound on log p(x) that tightens with T; its mc_se comes from the spread of the C
weights. "ais - iwae" (paired) is how much tighter it is than IWAE (positive up to its se), and
"log p(x) - ais" its remaining error when log p(x) is exact. Without an exact log p(x), AIS replaces
IWAE in kl_to_true_posterior (ais - elbo) and in the approximation gap of --gaps.

--bdmc N: bidirectional Monte Carlo on N points simulated from the model (z ~ p(z), x ~ p(x|z)), one
row per T in --bdmc-steps (default 10, 100 and --ais-steps), --bdmc-chains chains from the prior.
"lower" is forward AIS, "upper" reverse AIS started at the z that generated x (an exact posterior
sample), and the true log p(x) lies between them in expectation: "gap" = upper - lower (+- its se
over the points) bounds how far forward AIS with T steps can be from log p(x) on data like the
model's.

--posterior hmc: NUTS samples of p(z|x) for the first --posterior-points points (--posterior-samples
after --posterior-warmup), and q(z|x) against them: "mean error" is the distance between q's mean
and the samples' (the "MC floor" is its Monte Carlo error: an error near it is noise), "cov rel
error" the relative Frobenius error of q's covariance, "KL to Gaussian fit" KL(q || N(sample mean,
sample covariance)), and "PSIS k-hat" Pareto k of q as an importance proposal for p(z|x) (Yao et al.
2018: below 0.5 good, 0.5 to 0.7 ok, above 0.7 unreliable). Trust them only with r_hat_max near 1, a
large n_eff_min and no divergences. For a linear-Gaussian model it also prints the exact KL(q ||
p(z|x)) and the HMC samples' errors against the closed-form posterior.
"""

from __future__ import annotations

import sys

from pyro_vae.config import MAX_SEED
from pyro_vae.errors import ConfigError


def add_arguments(p) -> None:
    p.add_argument("dir", metavar="DIR", help="run directory written by pyro-vae train")
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="data split (default: test)")
    p.add_argument("--samples", type=int, default=1000, metavar="K",
                   help="importance samples per point for IWAE (default 1000)")
    p.add_argument("--batch-size", type=int, default=256, metavar="B", help="data points per pass (default 256)")
    p.add_argument("--gaps", action="store_true", help="also compute the approximation and amortization gaps")
    p.add_argument("--gap-steps", type=int, default=300, metavar="N",
                   help="Adam steps refining each per-point guide (default 300)")
    p.add_argument("--ais", action="store_true", help="also estimate log p(x) by annealed importance sampling")
    p.add_argument("--ais-steps", type=int, default=100, metavar="T", help="AIS temperatures (default 100)")
    p.add_argument("--ais-chains", type=int, default=16, metavar="C", help="AIS chains per point (default 16)")
    p.add_argument("--hmc-leapfrog", type=int, default=10, metavar="L",
                   help="leapfrog steps of each AIS and BDMC HMC move (default 10)")
    p.add_argument("--ais-start", default="encoder", choices=("encoder", "prior"),
                   help="AIS start density: q(z|x) or p(z) (default encoder)")
    p.add_argument("--bdmc", type=int, default=0, metavar="N",
                   help="BDMC on N points simulated from the model (default 0: off)")
    p.add_argument("--bdmc-steps", default=None, metavar="LIST",
                   help="comma-separated BDMC temperatures, one row each (default 10,100,<--ais-steps>)")
    p.add_argument("--bdmc-chains", type=int, default=4, metavar="C", help="BDMC chains per point (default 4)")
    p.add_argument("--posterior", default=None, choices=("hmc",),
                   help="compare q(z|x) with a NUTS reference posterior on a few points")
    p.add_argument("--posterior-points", type=int, default=5, metavar="N",
                   help="points of the split for --posterior (default 5)")
    p.add_argument("--posterior-samples", type=int, default=500, metavar="S",
                   help="NUTS samples per point after warmup (default 500)")
    p.add_argument("--posterior-warmup", type=int, default=300, metavar="W", help="NUTS warmup steps (default 300)")
    p.add_argument("--seed", type=int, default=0, help="seed of the Monte Carlo draws (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _bdmc_steps(text, ais_steps: int):
    """``--bdmc-steps 10,100`` -> ``(10, 100)``, sorted, each once; default 10, 100 and ``--ais-steps``."""
    if text is None:
        return tuple(sorted({10, 100, ais_steps}))
    try:
        steps = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--bdmc-steps {text}: expected comma-separated integers, e.g. 10,100,500") from None
    if not steps or min(steps) < 1:
        raise ConfigError(f"--bdmc-steps {text}: every number of temperatures must be >= 1")
    return tuple(sorted(set(steps)))


def run(args) -> int:
    from pyro_vae.evaluation.references import AISSettings, BDMCSettings, PosteriorSettings
    from pyro_vae.runs.evaluate import evaluate_run

    for flag, value, least in (("--samples", args.samples, 1), ("--batch-size", args.batch_size, 1),
                               ("--gap-steps", args.gap_steps, 1), ("--ais-steps", args.ais_steps, 1),
                               ("--ais-chains", args.ais_chains, 1), ("--hmc-leapfrog", args.hmc_leapfrog, 1),
                               ("--bdmc", args.bdmc, 0), ("--bdmc-chains", args.bdmc_chains, 1),
                               ("--posterior-points", args.posterior_points, 1),
                               ("--posterior-samples", args.posterior_samples, 4),
                               ("--posterior-warmup", args.posterior_warmup, 0)):
        if value < least:
            raise ConfigError(f"{flag} {value}: must be >= {least}")
    if not 0 <= args.seed <= MAX_SEED:
        raise ConfigError(f"--seed {args.seed}: must be in [0, {MAX_SEED}] (NumPy's legacy seeding takes 32 bits)")
    steps = _bdmc_steps(args.bdmc_steps, args.ais_steps)
    ais = AISSettings(args.ais_steps, args.ais_chains, args.hmc_leapfrog, args.ais_start) if args.ais else None
    bdmc = BDMCSettings(args.bdmc, steps, args.bdmc_chains, args.hmc_leapfrog) if args.bdmc else None
    posterior = (PosteriorSettings(args.posterior, args.posterior_points, args.posterior_samples,
                                   args.posterior_warmup) if args.posterior else None)
    progress = not args.no_progress and sys.stderr.isatty()
    result = evaluate_run(args.dir, args.split, args.samples, args.batch_size, args.gaps, args.gap_steps,
                          progress=progress, seed=args.seed, ais=ais, bdmc=bdmc, posterior=posterior)
    print(table(result))
    print(f"\nevaluation: {result['run']}/evaluation.json")
    return 0


def _row(name: str, s, note: str = "") -> str:
    if s is None:
        return f"  {name:<24} {'n/a':>12}"
    mc = f"  [mc +- {s['mc_se']:.4f}]" if "mc_se" in s else ""
    return f"  {name:<24} {s['mean']:12.4f} +- {s['se']:.4f}{mc}  {note}".rstrip()


PAIRED = (("iwae_minus_elbo", "iwae - elbo"), ("ais_minus_iwae", "ais - iwae"),
          ("exact_minus_iwae", "log p(x) - iwae"), ("exact_minus_elbo", "log p(x) - elbo"),
          ("exact_minus_ais", "log p(x) - ais"))


def _ais_note(a) -> str:
    return (f"(T = {a['steps']}, {a['chains']} chains, L = {a['leapfrog_steps']}, from {a['initial']}; "
            f"accept {a['accept']:.2f}, ess {a['ess']:.1f})")


def _bdmc_lines(b) -> list:
    exact = "" if b["log_likelihood"] is None else f"; exact log p(x) {b['log_likelihood']:.4f}"
    lines = [f"  BDMC on {b['num_points']} points simulated from the model ({b['chains']} chains, "
             f"L = {b['leapfrog_steps']}, forward from the {b['initial']}){exact}",
             "  lower <= log p(x) <= upper in expectation; gap +- se over the points",
             f"  {'T':>8} {'lower':>12} {'upper':>12} {'gap':>10} {'+- se':<11}{'seconds':>9}"]
    lines += [f"  {row['steps']:>8} {row['lower']:12.4f} {row['upper']:12.4f} {row['gap']:10.4f} +- "
              f"{row['gap_se']:<8.4f} {row['seconds']:8.1f}" for row in b["rows"]]
    return lines


def _posterior_lines(p) -> list:
    nuts, counts = p["nuts"], p["khat_counts"]
    lines = [f"  q(z|x) against NUTS on the first {p['points']} points ({p['samples']} samples after "
             f"{p['warmup']} warmup)",
             f"  {'NUTS diagnostics':<24} r_hat_max {nuts['r_hat_max']:.3f}, n_eff_min {nuts['n_eff_min']:.0f}, "
             f"{nuts['divergences']:.0f} divergences",
             f"  {'mean error':<24} {p['mean_error']:12.4f}  (MC floor {p['mean_mc_se']:.4f})",
             f"  {'cov rel error':<24} {p['cov_rel_error']:12.4f}",
             f"  {'KL to Gaussian fit':<24} {p['kl_gauss']:12.4f}  (KL(q || N(sample mean, sample cov)))",
             f"  {'PSIS k-hat':<24} {p['khat']:12.4f}  (max {p['khat_max']:.2f}: {counts['good']} good < 0.5, "
             f"{counts['ok']} ok, {counts['unreliable']} unreliable > 0.7)"]
    if p.get("stuck_points"):
        lines.append(f"  {p['stuck_points']} of {p['points']} points: the chain hardly moved (singular sample "
                     "covariance; NaN above): raise --posterior-warmup and --posterior-samples")
    e = p.get("exact")
    if e is not None:
        lines += [f"  {'exact KL(q || p(z|x))':<24} {e['kl']:12.4f}  ({e['kl_method']}: linear-Gaussian)",
                  f"  {'HMC vs closed form':<24} mean error {e['hmc_mean_error']:.4f} (MC floor "
                  f"{e['hmc_mean_mc_se']:.4f}), cov rel error {e['hmc_cov_rel_error']:.4f}"]
    return lines


def table(r) -> str:
    kl_note = "exact" if r["kl_to_true_posterior"]["exact"] else r["kl_to_true_posterior"].get("what", "estimate")
    lines = [f"{r['run']}: {r['split']} split, {r['n']} points, nats per point",
             "  mean +- se over the test points (test-set sampling) [mc +- Monte Carlo error on these points]",
             _row("elbo", r["elbo"], f"(KL {r['elbo']['kl']})"),
             _row("elbo_monte_carlo", r["elbo_monte_carlo"], "(KL monte_carlo)"),
             _row("iwae", r["iwae"], f"(K = {r['samples']})")]
    if r.get("ais"):
        lines.append(_row("ais", r["ais"], _ais_note(r["ais"])))
    lines += [_row("log_likelihood", r["log_likelihood"], "(exact: linear-Gaussian)" if r["log_likelihood"] else ""),
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
                  _row("approximation_gap", g["approximation_gap"],
                       f"(log p(x) from {g['approximation_gap']['log_p']})"),
                  _row("amortization_gap", g["amortization_gap"])]
    kl = r["kl_per_dimension"]
    kl_text = ", ".join(f"{v:.3f}" for v in kl) if kl is not None else "n/a (q or p not factorized)"
    lines += [f"  KL(q || prior) per dim   {kl_text}",
              f"  active units             {r['active_units']} of {r['latent_dim']} "
              f"(Cov_x E_q[z_d] > {r['active_unit_threshold']:g})"]
    if r.get("bdmc"):
        lines += _bdmc_lines(r["bdmc"])
    if r.get("posterior"):
        lines += _posterior_lines(r["posterior"])
    seconds = r["seconds"] + sum(r[k]["seconds"] for k in ("ais", "bdmc", "posterior") if r.get(k))
    lines.append(f"  {seconds:.1f} s")
    return "\n".join(lines)
