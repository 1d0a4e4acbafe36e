"""Train a VAE with SVI from a YAML config (no CONFIG: the default model on the bundled digits)."""

from __future__ import annotations

import json

from ..config import load
from ..runs import train_run


def add_config_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (default: the built-in default config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.prior.name=student_t (repeatable; values parsed as YAML)")


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--out", help="run directory (default: runs/<time>-<data>-<prior>)")
    p.add_argument("--overwrite", action="store_true", help="allow an existing non-empty --out (only pyro_vae's own files are replaced)")
    p.add_argument("--no-progress", action="store_true", help="plain lines instead of a progress bar")


def run(args) -> int:
    cfg = load(args.config, args.overrides)
    result = train_run(cfg, args.out, overwrite=args.overwrite, progress=False if args.no_progress else None)
    print_summary(result.path, result.summary)
    return 0


def print_summary(path, s) -> None:
    kl = ", ".join(f"{site}: {how}" for site, how in s["kl"].items())
    print(f"\nKL per latent site (requested {s['kl_requested']}): {kl}")
    test = f"{s['test_elbo']:.3f}" if s["test_elbo"] is not None else "n/a"
    print(f"ELBO (nats per data point): train {s['train_elbo']:.3f}  val {s['val_elbo']:.3f}  test {test}")
    print(f"{s['epochs']} epochs in {s['seconds']:.1f} s ({s['examples_per_second']:.0f} examples/s)")
    print(f"run directory: {path}")
    print(f"  summary: {path / 'summary.json'}")
    print(f"  metrics: {path / 'metrics.jsonl'}")
    print(f"  plots:   {', '.join(str(path / p) for p in s['plots'])}")
