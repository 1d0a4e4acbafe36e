"""Compare inference methods: train each on the same split, seed, architecture and budget, then tabulate and plot.

Built-in methods (--methods, comma-separated): analytic_kl, monte_carlo_kl, iwae_k5, iwae_k50,
score_function, the baselines of pyro_vae.compare.baselines (em, variational_em, svi, gmm_em, ...),
and any method registered in pyro_vae.compare.methods.METHODS. Every SVI method trains on the loop and engine
of pyro-vae train (the fused loss where it covers the method, on train.device), with the budget as its stopping rule.
Define your own from config overrides with --method-set NAME:KEY=VALUE[,KEY=VALUE...]
(repeatable; e.g. --method-set renyi_half:inference.objective=renyi,inference.alpha=0.5,inference.num_particles=5);
a defined set runs even if --methods does not name it.

Writes OUT/comparison.json (one row per method), OUT/comparison.md (a table) and OUT/plots/
(validation ELBO vs wall time and vs epoch, overlaid; a bar chart of the final test bounds).
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from pyro_vae.commands.train import add_config_arguments
from pyro_vae.compare.comparison import compare, resolve_methods
from pyro_vae.compare.methods import METHODS, Budget
from pyro_vae.compare.svi import BUILTIN_SETS
from pyro_vae.config import load

# compare's methods train to a fixed budget (not train.stop's rule): train.epochs is a cap of 1000
# for that rule, far too long as a fixed budget for every method
DEFAULT_EPOCHS = 100


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--methods", default=",".join(BUILTIN_SETS), metavar="NAME[,NAME...]",
                   help=f"methods to compare, from: {', '.join(METHODS.names())} (default: {','.join(BUILTIN_SETS)})")
    p.add_argument("--method-set", dest="method_sets", action="append", default=[], metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
                   help="define a method NAME as the base config with these overrides (repeatable)")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--epochs", type=int, metavar="N",
                        help=f"train every method for N epochs (default: {DEFAULT_EPOCHS}, whatever train.epochs says)")
    budget.add_argument("--seconds", type=float, metavar="S", help="train every method for S seconds of wall-clock time")
    p.add_argument("--samples", type=int, default=1000, metavar="K", help="importance samples K of the test IWAE (default 1000)")
    p.add_argument("--grad-samples", type=int, default=50, metavar="R",
                   help="repeated gradient evaluations behind the gradient variance (default 50)")
    p.add_argument("--out", help="output directory (default: runs/compare-<time>)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")


def run(args) -> int:
    from pyro_vae.errors import ConfigError

    if args.out is not None and not args.out.strip():
        raise ConfigError("--out: empty; give a directory (or leave --out out for the default)")
    cfg = load(args.config, args.overrides)
    for flag, value in (("--epochs", args.epochs), ("--seconds", args.seconds), ("--samples", args.samples),
                        ("--grad-samples", args.grad_samples)):
        if value is not None and not (math.isfinite(value) and value > (1 if flag == "--grad-samples" else 0)):
            raise ConfigError(f"{flag} {value}: must be a finite number > {1 if flag == '--grad-samples' else 0}")
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    methods = resolve_methods(names, args.method_sets)
    epochs = args.epochs if args.epochs is not None or args.seconds is not None else DEFAULT_EPOCHS
    budget = Budget(epochs=epochs, seconds=args.seconds, eval_samples=args.samples, grad_samples=args.grad_samples)
    out = Path(args.out) if args.out else Path("runs") / f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    report = compare(cfg, methods, budget, out, overwrite=args.overwrite)
    print((out / "comparison.md").read_text())
    print(f"comparison: {out / 'comparison.json'}")
    print(f"plots:      {', '.join(str(out / p) for p in report['plots'])}")
    return 0
