"""Train a VAE with SVI from a YAML config (no CONFIG: the default model on the bundled digits).

``--nproc N`` trains data-parallel in N local processes (torch.distributed, gloo on CPU, nccl on
CUDA); on a cluster launch ``torchrun --nproc-per-node N [--nnodes ...] -m pyro_vae train CONFIG``
instead. Either way the run directory, its metrics and its checkpoints are those of a one-process run.

``--seeds N`` trains seeds seed, seed+1, ..., seed+N-1, each into its own run directory OUT/seed-<s>, the
run ``pyro-vae train --set seed=<s>`` makes (its own split and streams: resume or evaluate any one of
them). Where the config allows (the fused ELBO with analytic KL and reparameterized z, a mean-field guide,
an mlp or linear decoder, a parameter-free prior and likelihood) the seeds train together as replicas
stacked in one vectorized step, each ending as its own run does up to float rounding; otherwise one after
another, saying why. A table of every seed ends it; a seed stopped by a non-finite step is reported
there, the others go on, and the exit status is then 3.
"""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from pyro_vae.config import load
from pyro_vae.errors import ConfigError
from pyro_vae.runs.run import SEED_DIR, seed_configs, train_run, train_seeds
from pyro_vae.training import distributed
from pyro_vae.training.guards import NonFiniteError


def add_config_arguments(p) -> None:
    p.add_argument("config", nargs="?", help="YAML config file (default: the built-in default config)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set model.prior.name=student_t (repeatable; values parsed as YAML)")


def add_arguments(p) -> None:
    add_config_arguments(p)
    p.add_argument("--out", help="run directory (default: runs/<time>-<data>-<prior>)")
    p.add_argument("--overwrite", action="store_true", help="allow an existing non-empty --out (only pyro_vae's own files are replaced)")
    p.add_argument("--no-progress", action="store_true", help="plain lines instead of a progress bar")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine (train.batch_size stays the global batch)")
    p.add_argument("--seeds", type=int, default=None, metavar="N",
                   help="train N seeds (seed, seed+1, ...) into OUT/seed-<s>, stacked in one vectorized step where "
                        "the config allows")


def run(args) -> int:
    if args.out is not None and not args.out.strip():
        raise ConfigError("--out: empty; give a directory (or leave --out out for the default)")
    cfg = load(args.config, args.overrides)  # a config error surfaces once, before any process starts
    seeds = getattr(args, "seeds", None)
    replaced = [Path(args.out) / "config.yaml"] if args.out else []
    if seeds is not None and args.out:
        replaced = [Path(args.out) / SEED_DIR.format(seed=c.seed) / "config.yaml" for c in seed_configs(cfg, seeds)]
    if args.overwrite and args.config and any(_same_file(args.config, path) for path in replaced):
        raise ConfigError(f"{args.config}: is the config.yaml that --overwrite would replace with the resolved "
                          f"config (comments lost); copy it elsewhere first, or choose another --out")
    if seeds is not None:
        if args.nproc != 1:
            raise ConfigError("--seeds: not with --nproc; the seeds train in one process (stacked where they can)")
        results = train_seeds(cfg, seeds, args.out, overwrite=args.overwrite,
                              progress=False if args.no_progress else None)
        print_seeds(results)
        return NonFiniteError.exit_code if any(r.failure is not None for r in results) else 0
    if args.nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--nproc: this process was already launched by torchrun; drop --nproc")
        if args.out is None:  # every rank must write to (and rank 0 create) the same directory
            from pyro_vae.runs.run import default_out
            args.out = str(default_out(cfg))
        return distributed.launch(run_rank, args.nproc, args)
    if args.nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {args.nproc}")
    result = train_run(cfg, args.out, overwrite=args.overwrite, progress=False if args.no_progress else None)
    print_summary(result.path, result.summary)
    return 0


def _same_file(a, b) -> bool:
    try:
        return Path(b).exists() and Path(a).samefile(b)
    except OSError:
        return False


def run_rank(args) -> int:
    """One rank of ``--nproc N`` (spawned by :func:`pyro_vae.training.distributed.launch`)."""
    args.nproc = 1
    return run(args)


def print_seeds(results) -> None:
    """The table of ``train --seeds``: per seed its epochs, why it stopped, its test ELBO and its run directory,
    then the test ELBO's mean and sd over the seeds that finished."""
    print(f"\n{'seed':>6}  {'epochs':>6}  {'stopped':<22}  {'test ELBO':>10}  run directory")
    elbos = []
    for r in results:
        if r.failure is not None:
            print(f"{r.seed:>6}  {'':>6}  {'FAILED (non-finite)':<22}  {'n/a':>10}  {r.path}\n        {r.failure}")
            continue
        s = r.run.summary
        stopped = f"{s['stopped']['reason']}" + (" (converged)" if s["converged"] else "")
        test = s["test_elbo"]
        if test is not None:
            elbos.append(test)
        print(f"{r.seed:>6}  {s['epochs']:>6}  {stopped:<22}  {'n/a' if test is None else f'{test:.3f}':>10}  {r.path}")
    if len(elbos) > 1:
        print(f"test ELBO over {len(elbos)} seeds: {statistics.mean(elbos):.3f} \u00b1 {statistics.stdev(elbos):.3f} "
              f"(mean \u00b1 sd, nats per data point)")
    failed = [r.seed for r in results if r.failure is not None]
    if failed:
        print(f"{len(failed)} of {len(results)} seeds failed at a non-finite step: {', '.join(map(str, failed))}")


def print_summary(path, s) -> None:
    if s is None:  # a rank other than 0 under torch.distributed: rank 0 reports
        return
    kl = ", ".join(f"{site}: {how}" for site, how in s["kl"].items())
    print(f"\nKL per latent site (requested {s['kl_requested']}): {kl}")
    test = f"{s['test_elbo']:.3f}" if s["test_elbo"] is not None else "n/a"
    print(f"ELBO (nats per data point): train {s['train_elbo']:.3f}  val {s['val_elbo']:.3f}  test {test}")
    print(f"{s['epochs']} epochs in {s['seconds']:.1f} s ({s['examples_per_second']:.0f} examples/s)")
    st = s["stopped"]  # why training ended, and which parameters it kept
    why = {"plateau": f"validation ELBO flat (< {st['min_delta']:g} nats in {st['patience']} epochs) at the floor step "
                      f"size {st['final_lr']:g}",
           "max_epochs": f"reached train.epochs (step size {st['final_lr']:g})"}.get(st["reason"], str(st["reason"]))
    kept = f"kept epoch {st['best_epoch']}'s parameters (best val {st['best_val_elbo']:.3f})" if st["restored_best"] \
        else "kept the last epoch's parameters"
    print(f"stopped: {why}; {kept}; {'converged' if s['converged'] else 'NOT converged'}")
    print(f"run directory: {path}")
    print(f"  summary: {path / 'summary.json'}")
    print(f"  metrics: {path / 'metrics.jsonl'}")
    print(f"  plots:   {', '.join(str(path / p) for p in s['plots'])}")
