"""Continue an interrupted run (SIGKILL, Ctrl-C, pre-emption) exactly from its newest intact checkpoint.

The resumed run takes the very steps the uninterrupted run would have taken: on CPU with the same
seed it ends with bitwise identical parameters, and metrics.jsonl holds each epoch once. config.yaml
must be the one the checkpoint was trained with (its hash is checked).

``--nproc N`` resumes data-parallel in N local processes (as ``train --nproc N``); a run trained on W
processes continues exactly on W, and on any other number with the same global batches.
"""

from __future__ import annotations

import os

from pyro_vae.commands.train import print_summary
from pyro_vae.errors import ConfigError
from pyro_vae.rundir import RunDir
from pyro_vae.runs.run import resume_run
from pyro_vae.training import distributed


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="DIR", help="the run directory of an interrupted 'pyro-vae train'")
    p.add_argument("--no-progress", action="store_true", help="plain lines instead of a progress bar")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="data-parallel processes on this machine (the run's train.batch_size stays the global batch)")


def run(args) -> int:
    if args.nproc < 1:
        raise ConfigError(f"--nproc: must be at least 1, got {args.nproc}")
    if args.nproc > 1:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError("--nproc: this process was already launched by torchrun; drop --nproc")
        RunDir.existing(args.run_dir)  # a missing directory is said once, before any process starts
        return distributed.launch(run_rank, args.nproc, args)
    result = resume_run(args.run_dir, progress=False if args.no_progress else None)
    if result is None:
        if os.environ.get("RANK", "0") == "0":  # every rank finds it finished; one says so
            print(f"{RunDir(args.run_dir).path}: already finished; nothing to do")
        return 0
    print_summary(result.path, result.summary)
    return 0


def run_rank(args) -> int:
    """One rank of ``--nproc N`` (spawned by :func:`pyro_vae.training.distributed.launch`)."""
    args.nproc = 1
    return run(args)
