"""Runs end to end: train a config into a run directory, and load a finished run back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from pyro_vae.build import build_vae, prepare
from pyro_vae.config import Config, dump, read_yaml, validate
from pyro_vae.data import Dataset, load_data
from pyro_vae.errors import RunDirError, UserError, one_line
from pyro_vae.model import VAE
from pyro_vae.rundir import RunDir
from pyro_vae.runs import plots
from pyro_vae.training import distributed
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


def finish(trainer: Trainer, run: Optional[RunDir], path: Path) -> Run:
    """Summary and plots (rank 0; other ranks get a Run without summary). The VAE comes back on the CPU.

    Under ``torch.distributed`` the other ranks wait for rank 0's files (and share its errors), then every
    rank leaves the process group together (:func:`pyro_vae.training.distributed.shutdown`).
    """
    trainer.close()

    def write() -> dict:
        summary = summarize(trainer)
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
