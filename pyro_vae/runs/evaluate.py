"""Evaluate a finished run directory: every number of :func:`pyro_vae.evaluation.evaluate.evaluate_points`
for one split, optionally with the AIS, BDMC and reference-posterior sections of
:mod:`pyro_vae.evaluation.references`, written to the run's ``evaluation.json``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Dict, Optional, Union

import pyro
from tqdm.auto import tqdm

from pyro_vae.errors import ConfigError, RunDirError
from pyro_vae.evaluation.evaluate import evaluate_points
from pyro_vae.evaluation.references import (
    AISSettings,
    BDMCSettings,
    PosteriorSettings,
    ais_section,
    bdmc_section,
    posterior_section,
)
from pyro_vae.model import own_rng
from pyro_vae.rundir import RunDir, atomic_write_json
from pyro_vae.runs.run import load_run


def _settings(cls, value, name: str):
    """``value`` as a ``cls`` (None stays None; a dict gives its fields), checked."""
    if value is None or isinstance(value, cls):
        settings = value
    elif isinstance(value, dict):
        try:
            settings = cls(**value)
        except TypeError as err:
            raise ConfigError(f"evaluate {name}: {err}") from None
    else:
        raise ConfigError(f"evaluate {name}: expected None, a dict or {cls.__name__}, got {type(value).__name__}")
    if settings is not None:
        settings.check()
    return settings


def evaluate_run(path: str | Path, split: str = "test", samples: int = 1000, batch_size: int = 256,
                 gaps: bool = False, gap_steps: int = 300, progress: bool = False, seed: int = 0,
                 ais: Union[None, AISSettings, dict] = None, bdmc: Union[None, BDMCSettings, dict] = None,
                 posterior: Union[None, PosteriorSettings, dict] = None) -> Dict[str, Any]:
    """Evaluate the run in ``path`` on ``split`` and write ``path/evaluation.json`` atomically.

    Each estimate carries ``se`` (over the split's points: test-set sampling) and ``mc_se`` (Monte Carlo
    error of the estimate on these points, the one ``seed`` moves); ``paired`` holds per-point differences
    (``iwae_minus_elbo``; ``exact_minus_iwae``, ``exact_minus_elbo`` when log p(x) is exact; ``ais_minus_iwae``
    and ``exact_minus_ais`` with AIS) and ``error_bars`` says what each error means.

    ``ais``, ``bdmc``, ``posterior`` (settings, a dict of their fields, or None: the key is null) add the
    sections of :func:`ais_section` (every point of the split), :func:`bdmc_section` (points simulated
    from the model) and :func:`posterior_section` (NUTS on the first points). Each runs on a stream of its
    own seeded ``seed``, so the other numbers are the same with or without them. Every setting is checked
    before anything is loaded, computed or written.
    """
    ais, bdmc, posterior = (_settings(AISSettings, ais, "ais"), _settings(BDMCSettings, bdmc, "bdmc"),
                            _settings(PosteriorSettings, posterior, "posterior"))
    RunDir.existing(path).check_writable("evaluate writes evaluation.json into the run directory")
    run = load_run(path)
    x = run.data.split(split)
    if len(x) == 0:
        raise RunDirError(f"{run.path}: the {split} split is empty (see data.{split}_fraction in config.yaml)")
    vae = run.vae
    sections: Dict[str, Optional[Dict[str, Any]]] = {"ais": None, "bdmc": None, "posterior": None}
    ais_result = None
    if ais is not None:
        bar = tqdm(total=len(x) * ais.steps, unit="point-step", unit_scale=True, dynamic_ncols=True,
                   disable=not progress, file=sys.stderr, desc="ais")
        try:
            with own_rng(seed, vae.device):
                sections["ais"], ais_result = ais_section(vae, x, ais.steps, ais.chains, ais.leapfrog_steps,
                                                          batch_size, ais.initial, bar=bar)
        finally:
            bar.close()
    pyro.set_rng_seed(seed)
    result = {"run": str(run.path), "split": split, "seed": seed,
              **evaluate_points(vae, x, samples, batch_size, gaps, gap_steps, progress, ais=ais_result)}
    if bdmc is not None:
        sections["bdmc"] = bdmc_section(vae, bdmc.points, bdmc.steps, bdmc.chains, bdmc.leapfrog_steps, seed)
    if posterior is not None:
        sections["posterior"] = posterior_section(vae, x, posterior.points, posterior.samples, posterior.warmup, seed)
    result.update(sections)
    atomic_write_json(Path(run.path) / "evaluation.json", result)
    return result
