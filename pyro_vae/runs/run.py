"""Runs end to end: train a config into a run directory (or several seeds into one each), and load a finished run
back."""

from __future__ import annotations

import os
import re
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from pyro_vae.build import build_vae, prepare
from pyro_vae.config import MAX_SEED, Config, dump, read_yaml, validate
from pyro_vae.data import Dataset, load_data
from pyro_vae.errors import ConfigError, RunDirError, UserError, one_line
from pyro_vae.model import VAE
from pyro_vae.rundir import RunDir, check_writable_dir
from pyro_vae.runs import plots
from pyro_vae.training import distributed
from pyro_vae.training.guards import Interrupted, NonFiniteError
from pyro_vae.training.replicas import ReplicaTrainer, unsupported_reason
from pyro_vae.training.summary import summarize
from pyro_vae.training.trainer import Trainer


@dataclass
class Run:
    """A finished (or interrupted) run: its config, trained VAE, data splits and metrics."""

    path: Path
    config: Config
    vae: VAE
    data: Dataset
    metrics: List[Dict[str, Any]] = field(default_factory=list)
    summary: Optional[Dict[str, Any]] = None


def default_out(cfg: Config) -> Path:
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.data.name}-{cfg.model.prior.name}"


def train_run(cfg: Config, out: Optional[str | Path] = None, overwrite: bool = False,
              progress: Optional[bool] = None) -> Run:
    """Validate everything, create the run directory, train, then write summary and plots.

    Under ``torch.distributed`` (see :func:`pyro_vae.training.distributed.init`) every rank calls this; only rank 0
    creates and writes the run directory, and only rank 0's :class:`Run` carries a summary.
    """
    ctx = distributed.init(cfg.train.device)
    data, vae = prepare(cfg, ctx.device)
    out = out or (ctx.gather(str(default_out(cfg)))[0] if ctx.distributed else default_out(cfg))  # rank 0's clock names it
    trainer = Trainer.from_config(cfg, data, vae, None, progress=progress, ctx=ctx)  # its checks (engine, ...) before any file
    trainer.run = run = ctx.on_main(lambda: RunDir.create(out, overwrite=overwrite))
    try:
        # the step-0 checkpoint comes before config.yaml, so every run directory has a checkpoint to resume from
        trainer.save()
        if run is not None:
            run.write_config(dump(cfg))
    except BaseException:
        if run is not None:  # nothing half-written: an old run stays whole, a new folder goes
            run.abandon()
        raise
    ctx.on_main(lambda: run.commit())  # only now does an --overwrite replace the old run's files (a collective)
    trainer.fit()
    return finish(trainer, run, Path(out))


SEED_DIR = "seed-{seed}"  # the run directory of one seed of `pyro-vae train --seeds N`, under --out
_SEED_DIR = re.compile(r"seed-\d+")


@dataclass
class SeedRun:
    """One seed of :func:`train_seeds`: its run directory, and its :class:`Run` or (a non-finite step stopped it)
    the message saying where."""

    seed: int
    path: Path
    run: Optional[Run] = None
    failure: Optional[str] = None
    stacked: bool = False


def seed_configs(cfg: Config, seeds: int) -> List[Config]:
    """``cfg`` with seeds ``cfg.seed, ..., cfg.seed + seeds - 1``, as ``compare --seeds`` counts them."""
    if not (isinstance(seeds, int) and seeds >= 1):
        raise ConfigError(f"--seeds {seeds}: must be a whole number >= 1")
    if cfg.seed + seeds - 1 > MAX_SEED:
        raise ConfigError(f"--seeds {seeds}: seeds {cfg.seed}..{cfg.seed + seeds - 1} pass the largest seed, "
                          f"{MAX_SEED}")
    return [cfg if i == 0 else validate({**cfg.to_dict(), "seed": cfg.seed + i}) for i in range(seeds)]


def seed_dirs(out: Path, configs: Sequence[Config], overwrite: bool) -> List[Path]:
    """Each seed's run directory ``out/seed-<s>``, after every check that can refuse (nothing is written): an
    ``out`` that is not empty is refused unless ``overwrite``, and then it may hold seeds' run directories
    only (each replaced as ``train --overwrite`` replaces a run; the other seeds' are left as they are)."""
    out = Path(out)
    check_writable_dir(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"--out {out}: directory exists and is not empty; pass --overwrite or choose another "
                              "--out")
        foreign = sorted(p.name for p in out.iterdir() if not (p.is_dir() and _SEED_DIR.fullmatch(p.name)))
        if foreign:
            raise RunDirError(f"--out {out}: holds {foreign[0]}, which is not a seed's run directory "
                              f"({SEED_DIR.format(seed='<s>')}); refusing to overwrite")
    dirs = [out / SEED_DIR.format(seed=c.seed) for c in configs]
    for d in dirs:
        check_writable_dir(d)
    return dirs


def train_seeds(cfg: Config, seeds: int, out: Optional[str | Path] = None, overwrite: bool = False,
                progress: Optional[bool] = None, stack: bool = True) -> List[SeedRun]:
    """``pyro-vae train --seeds N``: the run of ``cfg`` with each of :func:`seed_configs`' seeds, each in its own
    run directory ``out/seed-<s>`` (:func:`seed_dirs`), each the run ``pyro-vae train --set seed=<s>`` makes
    (its own data split, initialisation and random streams), so ``pyro-vae resume``, ``evaluate`` and
    ``load_run`` take any one of them.

    Where the replicas cover the config (:func:`~pyro_vae.training.replicas.unsupported_reason`) the seeds
    train together, stacked in one vectorized step (:class:`~pyro_vae.training.replicas.ReplicaTrainer`):
    each ends as its single run does up to float rounding, with its own stopping rule, and each one's test
    ELBO is drawn from where its single run leaves torch's stream. Its epoch times are the stacked epoch's.
    A seed whose step is not finite is reported (``failure``) and the others go on. Otherwise (or with
    ``stack=False``) the seeds train one after another, saying why. Every check that can refuse (each
    seed's config and data, ``out``) runs before anything is written."""
    configs = seed_configs(cfg, seeds)
    if distributed.current().distributed or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("--seeds: not under torch.distributed (torchrun or --nproc); train the seeds in one process")
    prepared = [prepare(c) for c in configs]  # every seed's data and model: the user errors surface here
    out = Path(out or default_out(cfg))
    dirs = seed_dirs(out, configs, overwrite)
    reason = unsupported_reason(configs, prepared[0][1]) if stack else "stacking turned off"
    if reason is not None or len(configs) < 2:
        if len(configs) > 1:
            print(f"pyro-vae: --seeds {seeds}: training the seeds one after another ({reason})", flush=True)
        return [_train_one(c, d, overwrite, progress) for c, d in zip(configs, dirs)]
    datasets = [data for data, _ in prepared]
    del prepared
    runs: List[RunDir] = []
    try:
        for d in dirs:
            runs.append(RunDir.create(d, overwrite=overwrite))
        rt = ReplicaTrainer.from_configs(configs, datasets, runs=runs)
        print(f"training seeds {', '.join(str(c.seed) for c in configs)} as {len(configs)} replicas stacked in one "
              f"vectorized step", flush=True)
        rt.save()  # each seed's step-0 checkpoint, before its config.yaml, as a single run's
        for run, c in zip(runs, configs):
            run.write_config(dump(c))
    except BaseException:
        for run in reversed(runs):  # nothing half-written: old runs stay whole, new folders go
            run.abandon()
        raise
    for run in runs:
        run.commit()
    try:
        rt.fit()
    except Interrupted as err:
        paths = " ".join(shlex.quote(str(run.path)) for r, run in enumerate(runs) if r not in rt.failures)
        raise Interrupted(err.exit_code - 128, f"{err}; checkpoints written; continue each seed with "
                                               f"pyro-vae resume: {paths}") from None
    results = []
    for r, (c, run, trainer) in enumerate(zip(configs, runs, rt.replicas)):
        if r in rt.failures:
            results.append(SeedRun(c.seed, run.path, failure=rt.failures[r], stacked=True))
            continue
        rt.single_run_streams(r)  # the test ELBO draws as after the seed's single run
        # the seconds of a stacked run are the stacked epochs': say so in its summary
        results.append(SeedRun(c.seed, run.path, finish(trainer, run, run.path, {"replicas": len(configs)}),
                               stacked=True))
    return results


def _train_one(cfg: Config, path: Path, overwrite: bool, progress: Optional[bool]) -> SeedRun:
    """One seed of :func:`train_seeds` on its own: :func:`train_run`, a non-finite step reported, not raised."""
    try:
        return SeedRun(cfg.seed, path, train_run(cfg, path, overwrite=overwrite, progress=progress))
    except NonFiniteError as err:
        return SeedRun(cfg.seed, path, failure=str(err))


def _trained_hash(state: Dict[str, Any]) -> Optional[str]:
    """The hash of the config the checkpoint was trained with, as this version reads it: its stored config
    re-validated, so a key added since (at its default) does not make an older run unresumable; the stored
    hash when the stored config no longer validates (then it differs, and resume refuses)."""
    try:
        return validate(state["config"]).hash() if state.get("config") is not None else state.get("config_hash")
    except UserError:
        return state.get("config_hash")


def resume_run(path: str | Path, progress: Optional[bool] = None) -> Optional[Run]:
    """Continue an interrupted run from its newest intact checkpoint, exactly as if it had never stopped,
    then write summary and plots; ``None`` if the run had already finished (nothing is touched).

    Everything is checked (config.yaml, its hash against the checkpoint's, the data, the checkpoint's
    fit to the model) before any file is written.
    """
    run = RunDir.existing(path)
    cfg = read_config(run)
    ctx = distributed.init(cfg.train.device)
    state = run.load_checkpoint(quiet=not ctx.is_main)
    if _trained_hash(state) != cfg.hash():
        raise RunDirError(f"{run.config}: differs from the config the checkpoint was trained with (hash "
                          f"{cfg.hash()} != {state.get('config_hash')}); restore it or start a new run with 'pyro-vae train'")
    finished = state.get("finished", False)
    if finished and run.summary.is_file():
        return None
    ctx.on_main(lambda: run.check_writable("resume writes checkpoints, metrics and plots there"))
    data, vae = prepare(cfg, ctx.device)
    # every rank has read the checkpoint before rank 0 can write the next one: that takes collectives
    trainer = Trainer.from_config(cfg, data, vae, run if ctx.is_main else None, progress=progress, ctx=ctx)
    trainer.load_state(state)
    if ctx.is_main:
        run.remove_stale_temporaries()
        run.write_metrics(trainer.metrics)  # drop rows of epochs after the checkpoint: they will be redone
    trainer.fit()
    return finish(trainer, trainer.run, run.path)


def finish(trainer: Trainer, run: Optional[RunDir], path: Path, extra: Optional[Dict[str, Any]] = None) -> Run:
    """Summary (with ``extra``'s keys) and plots (rank 0; other ranks get a Run without summary). The VAE comes
    back on the CPU.

    Under ``torch.distributed`` the other ranks wait for rank 0's files (and share its errors), then every
    rank leaves the process group together (:func:`pyro_vae.training.distributed.shutdown`).
    """
    trainer.close()

    def write() -> dict:
        summary = {**summarize(trainer), **(extra or {})}
        trainer.vae.cpu()  # plots and the returned Run work on CPU tensors
        summary["plots"] = [str(p.relative_to(run.path)) for p in write_plots(run, trainer.vae, trainer.data, trainer.metrics)]
        run.write_summary(summary)
        return summary

    summary = trainer.ctx.on_main(write)
    trainer.vae.cpu()
    if trainer.ctx.distributed:
        distributed.shutdown()
    return Run(path if run is None else run.path, trainer.config, trainer.vae, trainer.data, trainer.metrics, summary)


def write_plots(run: RunDir, vae: VAE, data: Dataset, metrics: List[Dict[str, Any]]) -> List[Path]:
    """Learning curves; for image data, reconstructions and samples; the latent space (any latent_dim).

    Reconstructions and the latent picture use one summary of q(z|x) (:meth:`VAE.latent_summary`); its draws
    and the samples' come from seeded streams of their own, so the plots neither disturb nor depend on the
    training RNG stream.
    """
    run.plots.mkdir(exist_ok=True)
    out = [plots.learning_curves(metrics, run.plots / "learning_curves.png")]
    vae.eval()
    split = "test" if len(data.test) else "train"
    x = data.split(split)
    z, what = vae.latent_summary(x)  # (n, latent_dim)
    if data.image_shape is not None:
        recon = vae.decode_mean(z[:10])  # (10, x_dim)
        out.append(plots.reconstructions(x[:10], recon, data.image_shape, run.plots / "reconstructions.png", what))
        out.append(plots.image_grid(vae.sample(50, seed=0), data.image_shape, run.plots / "samples.png",
                                    "samples: mean of p(x|z), z ~ p(z)"))
    out.append(plots.latent(z, data.labels.get(split), run.plots / "latent.png", what, split))
    return out


def load_run(path: str | Path) -> Run:
    """Load a run directory: ``.vae`` carries the trained parameters (eval mode), ``.data`` the same splits."""
    run = RunDir.existing(path)
    cfg = read_config(run)
    state = run.load_checkpoint()
    data = load_data(cfg.data, cfg.seed)
    vae = build_vae(cfg, state.get("x_dim", data.x_dim), data.image_shape)
    try:
        vae.load_state_dict(state["vae"])
    except (RuntimeError, KeyError) as err:
        raise RunDirError(f"{state['_path']}: parameters do not match config.yaml ({one_line(err)})") from None
    vae.eval()
    summary = run.read_json("summary.json") if run.summary.is_file() else None
    return Run(run.path, cfg, vae, data, run.read_metrics(), summary)


def read_config(run: RunDir) -> Config:
    """The validated config of a run directory; a broken config.yaml is a RunDirError naming it."""
    raw = read_yaml(run.config, RunDirError) or {}
    try:
        return validate(raw)
    except UserError as err:
        raise RunDirError(f"{run.config}: {err}") from None
