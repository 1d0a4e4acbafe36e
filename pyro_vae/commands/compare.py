"""Compare inference methods: train each until it converges (or hits a cap), with seeds, judged on one yardstick.

Every method trains on the same split and architecture.

Built-in methods (--methods, comma-separated): analytic_kl, monte_carlo_kl, iwae_k5, iwae_k50,
score_function, the baselines of pyro_vae.compare.baselines (em, variational_em, svi, gmm_em, ...),
the EM-style methods for nonlinear decoders of pyro_vae.compare.em_style (rws, wake_sleep, mcem,
semi_amortized), and any method registered in pyro_vae.compare.methods.METHODS. Every SVI method trains
on the loop and engine of pyro-vae train (the fused loss where it covers the method, on train.device).
Define your own from config overrides with --method-set NAME:KEY=VALUE[,KEY=VALUE...]
(repeatable; e.g. --method-set renyi_half:inference.objective=renyi,inference.alpha=0.5,inference.num_particles=5);
a defined set runs even if --methods does not name it.

Budget (--budget converged, the default): each SVI method trains under train's plateau rule on the yardstick
(the step size halves when the validation log p(x) has not improved by train.min_delta nats in train.patience
epochs; training stops at a plateau at train.min_lr; the best validated parameters are kept), each EM-type
method until its log-likelihood changes by less than its tolerance; capped at --epochs (default train.epochs;
EM: 10000 iterations) or --seconds per method and seed (default 300). A row that hits a cap is marked
unconverged. --budget fixed: exactly --epochs or --seconds at the constant optim.lr, last parameters.

The yardstick: while it trains, every method is scored on the same estimator of log p(x) (exact for a
linear-Gaussian model, else IWAE with --yardstick-samples K) on --yardstick-points fixed validation points.
The final table leads with test log p(x): exact where a closed form exists, else IWAE with --samples K
draws from each method's own q, or with --final ais annealed importance sampling (--ais-steps T
temperatures, --ais-chains C chains per point, --hmc-leapfrog L leapfrog steps per HMC move) from each
method's q to p(z|x): the same reference for every method, which IWAE-K is not (a better q gets a
tighter bound). With --seeds N every number is a mean and spread across N seeds, and differences against
--baseline (default: the first method) are paired by seed (mean and standard error). --jobs J trains J runs at a time in worker processes.

Step sizes: every method that takes one trains with optim.lr unless --lr-grid names values to choose from,
per method, by the first seed's validation yardstick (the report says which was used).

Writes OUT/comparison.json (every seed's row, the summary), OUT/comparison.md (the tables),
OUT/report.html (self-contained: tables, plots, config, the command) and OUT/plots/ (the yardstick
against epochs and wall time as nats below the best or exact value; final log p(x) per method and seed).
"""

from __future__ import annotations

import math
import shlex
import time
from pathlib import Path

from pyro_vae.commands.train import add_config_arguments
from pyro_vae.compare.comparison import compare, resolve_methods
from pyro_vae.compare.methods import DEFAULT_SECONDS_CAP, FINALS, METHODS, STOPS, Budget
from pyro_vae.compare.svi import BUILTIN_SETS
from pyro_vae.config import load


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--methods", default=",".join(BUILTIN_SETS), metavar="NAME[,NAME...]",
                   help=f"methods to compare, from: {', '.join(METHODS.names())} (default: {','.join(BUILTIN_SETS)})")
    p.add_argument("--method-set", dest="method_sets", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
                   help="define a method NAME as the base config with these overrides (repeatable)")
    p.add_argument("--budget", choices=STOPS, default="converged",
                   help="converged (default): train each method until it converges, capped by --epochs/--seconds; "
                        "fixed: exactly --epochs or --seconds at the constant optim.lr")
    p.add_argument("--epochs", type=int, metavar="N",
                   help="cap on passes over the data per method and seed (default: train.epochs; EM 10000 "
                        "iterations); with --budget fixed, the number of epochs")
    p.add_argument("--seconds", type=float, metavar="S",
                   help=f"cap on training seconds per method and seed (default {DEFAULT_SECONDS_CAP:g} with "
                        "--budget converged, none with fixed); with --budget fixed, the time every method gets")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every method with N seeds (config seed, +1, ...; the data split stays the config "
                        "seed's); numbers become mean and spread across seeds (default 1)")
    p.add_argument("--jobs", type=int, default=1, metavar="J",
                   help="train up to J (method, seed) runs at once in worker processes, each with cores/J torch "
                        "threads (default 1: one at a time, so seconds and examples/s are single-run speeds)")
    p.add_argument("--baseline", metavar="NAME", help="method the paired differences are taken against "
                                                      "(default: the first method)")
    p.add_argument("--lr-grid", metavar="LR[,LR...]",
                   help="choose optim.lr per method from these values by the validation yardstick of the first "
                        "seed (every method that takes a step size; default: optim.lr for all, no search)")
    p.add_argument("--samples", type=int, default=1000, metavar="K", help="importance samples K of the test IWAE (default 1000)")
    p.add_argument("--final", choices=FINALS, default="iwae",
                   help="estimator of the final test log p(x) where no closed form exists: iwae (default; IWAE with "
                        "--samples K from each method's q) or ais (annealed importance sampling, the same for all)")
    p.add_argument("--ais-steps", type=int, default=100, metavar="T",
                   help="AIS temperatures with --final ais (default 100)")
    p.add_argument("--ais-chains", type=int, default=16, metavar="C", help="AIS chains per test point (default 16)")
    p.add_argument("--hmc-leapfrog", type=int, default=10, metavar="L",
                   help="leapfrog steps of each AIS HMC move (default 10)")
    p.add_argument("--yardstick-samples", type=int, default=100, metavar="K",
                   help="importance samples K of the yardstick, the validation IWAE every method is scored on "
                        "while it trains (default 100; exact log p(x) where it exists)")
    p.add_argument("--yardstick-points", type=int, default=500, metavar="N",
                   help="validation points of the yardstick (default 500; all when there are fewer)")
    p.add_argument("--test-points", type=int, default=None, metavar="N",
                   help="score every method's test numbers on N fixed rows of the test split (default: all of "
                        "it), e.g. for --final ais on a large test split")
    p.add_argument("--grad-samples", type=int, default=50, metavar="R",
                   help="repeated gradient evaluations behind the gradient variance (default 50)")
    p.add_argument("--out", help="output directory (default: runs/compare-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")


def _lr_grid(text):
    """``--lr-grid 1e-3,3e-3`` -> ``[0.001, 0.003]``; a one-line ConfigError on anything but positive numbers."""
    from pyro_vae.errors import ConfigError

    if text is None:
        return []
    try:
        grid = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--lr-grid {text}: expected comma-separated step sizes, e.g. 1e-3,3e-3,1e-2") from None
    if not grid or any(not (math.isfinite(v) and v > 0) for v in grid):
        raise ConfigError(f"--lr-grid {text}: every step size must be a finite number > 0")
    return list(dict.fromkeys(grid))


def run(args) -> int:
    from pyro_vae.compare.comparison import check_seeds
    from pyro_vae.errors import ConfigError

    if args.out is not None and not args.out.strip():
        raise ConfigError("--out: empty; give a directory (or leave --out out for the default)")
    cfg = load(args.config, args.overrides)
    for flag, value, least in (("--epochs", args.epochs, 0), ("--seconds", args.seconds, 0),
                               ("--samples", args.samples, 0), ("--grad-samples", args.grad_samples, 1),
                               ("--yardstick-samples", args.yardstick_samples, 0),
                               ("--yardstick-points", args.yardstick_points, 0), ("--seeds", args.seeds, 0),
                               ("--jobs", args.jobs, 0), ("--ais-steps", args.ais_steps, 0),
                               ("--ais-chains", args.ais_chains, 0), ("--hmc-leapfrog", args.hmc_leapfrog, 0),
                               ("--test-points", args.test_points, 0)):
        if value is not None and not (math.isfinite(value) and value > least):
            raise ConfigError(f"{flag} {value}: must be a finite number > {least}")
    grid = _lr_grid(args.lr_grid)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    methods = resolve_methods(names, args.method_sets)
    check_seeds(args.seeds, args.baseline, methods)
    seconds = args.seconds if args.seconds is not None or args.budget == "fixed" else DEFAULT_SECONDS_CAP
    budget = Budget(stop=args.budget, epochs=args.epochs, seconds=seconds, eval_samples=args.samples,
                    grad_samples=args.grad_samples, yardstick_samples=args.yardstick_samples,
                    yardstick_points=args.yardstick_points, final=args.final, ais_steps=args.ais_steps,
                    ais_chains=args.ais_chains, ais_leapfrog=args.hmc_leapfrog, test_points=args.test_points)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    command = "pyro-vae " + shlex.join(getattr(args, "_argv", ["compare"]))
    report = compare(cfg, methods, budget, out, overwrite=args.overwrite, seeds=args.seeds, baseline=args.baseline,
                     command=command, lr_grid=grid, jobs=args.jobs)
    print((out / "comparison.md").read_text())
    print(f"comparison: {out / 'comparison.json'}")
    print(f"report:     {out / 'report.html'}")
    print(f"plots:      {', '.join(str(out / p) for p in report['plots'])}")
    return 0
