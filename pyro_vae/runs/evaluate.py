"""Evaluate a finished run directory: every number of :func:`pyro_vae.evaluation.evaluate.evaluate_points`
for one split, written to the run's ``evaluation.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict

import pyro

from pyro_vae.errors import RunDirError
from pyro_vae.evaluation.evaluate import evaluate_points
from pyro_vae.rundir import RunDir, atomic_write_json
from pyro_vae.runs.run import load_run


def evaluate_run(path: str | Path, split: str = "test", samples: int = 1000, batch_size: int = 256,
                 gaps: bool = False, gap_steps: int = 300, progress: bool = False, seed: int = 0) -> Dict[str, Any]:
    """Evaluate the run in ``path`` on ``split`` and write ``path/evaluation.json`` atomically.

    Each estimate carries ``se`` (over the split's points: test-set sampling) and ``mc_se`` (Monte Carlo
    error of the estimate on these points, the one ``seed`` moves); ``paired`` holds per-point differences
    (``iwae_minus_elbo``; ``exact_minus_iwae``, ``exact_minus_elbo`` when log p(x) is exact) and
    ``error_bars`` says what each error means.
    """
    RunDir.existing(path).check_writable("evaluate writes evaluation.json into the run directory")
    run = load_run(path)
    x = run.data.split(split)
    if len(x) == 0:
        raise RunDirError(f"{run.path}: the {split} split is empty (see data.{split}_fraction in config.yaml)")
    pyro.set_rng_seed(seed)
    result = {"run": str(run.path), "split": split, "seed": seed,
              **evaluate_points(run.vae, x, samples, batch_size, gaps, gap_steps, progress)}
    atomic_write_json(Path(run.path) / "evaluation.json", result)
    return result
