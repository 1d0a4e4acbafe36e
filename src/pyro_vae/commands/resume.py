"""Continue an interrupted run (SIGKILL, Ctrl-C, pre-emption) exactly from its newest intact checkpoint.

The resumed run takes the very steps the uninterrupted run would have taken: on CPU with the same
seed it ends with bitwise identical parameters, and metrics.jsonl holds each epoch once. config.yaml
must be the one the checkpoint was trained with (its hash is checked).
"""

from __future__ import annotations

from ..rundir import RunDir
from ..runs import resume_run
from .train import print_summary


def add_arguments(p) -> None:
    p.add_argument("run_dir", metavar="DIR", help="the run directory of an interrupted 'pyro-vae train'")
    p.add_argument("--no-progress", action="store_true", help="plain lines instead of a progress bar")


def run(args) -> int:
    result = resume_run(args.run_dir, progress=False if args.no_progress else None)
    if result is None:
        print(f"{RunDir(args.run_dir).path}: already finished; nothing to do")
        return 0
    print_summary(result.path, result.summary)
    return 0
