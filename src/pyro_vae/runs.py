"""Runs end to end: train a config into a run directory, and load a finished run back."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from . import plots
from .build import build_vae
from .config import Config, dump, validate
from .data import Dataset, load_data
from .errors import RunDirError, UserError
from .model import VAE
from .rundir import RunDir
from .train import Trainer, prepare, summarize


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
    return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.data.name}-{cfg.model.prior['name']}"


def train_run(cfg: Config, out: Optional[str | Path] = None, overwrite: bool = False,
              progress: Optional[bool] = None) -> Run:
    """Validate everything, create the run directory, train, then write summary and plots."""
    data, vae = prepare(cfg)
    run = RunDir.create(out or default_out(cfg), overwrite=overwrite)
    run.write_config(dump(cfg))
    trainer = Trainer(cfg, data, vae, run, progress=progress)
    trainer.fit()
    return finish(trainer, run)


def finish(trainer: Trainer, run: RunDir) -> Run:
    summary = summarize(trainer)
    summary["plots"] = [str(p.relative_to(run.path)) for p in write_plots(run, trainer.vae, trainer.data, trainer.metrics)]
    run.write_summary(summary)
    return Run(run.path, trainer.cfg, trainer.vae, trainer.data, trainer.metrics, summary)


def write_plots(run: RunDir, vae: VAE, data: Dataset, metrics: List[Dict[str, Any]]) -> List[Path]:
    """Learning curves always; image grids for image data; a latent scatter when latent_dim is 2."""
    run.plots.mkdir(exist_ok=True)
    out = [plots.learning_curves(metrics, run.plots / "learning_curves.png")]
    vae.eval()
    x = data.test if len(data.test) else data.train
    if data.image_shape is not None:
        torch.manual_seed(0)  # plots must not disturb (or depend on) the training RNG stream
        out.append(plots.reconstructions(x[:10], vae.reconstruct(x[:10]), data.image_shape, run.plots / "reconstructions.png"))
        out.append(plots.image_grid(vae.sample(50), data.image_shape, run.plots / "samples.png", "samples: mean of p(x|z), z ~ p(z)"))
    if vae.latent_dim == 2:
        with torch.no_grad():
            z = vae.encoder(x).mean
        labels = data.labels.get("test" if len(data.test) else "train")
        out.append(plots.latent_scatter(z, labels, run.plots / "latent.png"))
    return out


def load_run(path: str | Path) -> Run:
    """Load a run directory: ``.vae`` carries the trained parameters (eval mode), ``.data`` the same splits."""
    run = RunDir.existing(path)
    try:
        cfg = validate(_read_yaml(run.config))
    except UserError as err:
        raise RunDirError(f"{run.config}: {err}") from None
    state = run.load_checkpoint()
    data = load_data(cfg.data.model_dump(), cfg.seed)
    vae = build_vae(cfg, state.get("x_dim", data.x_dim))
    try:
        vae.load_state_dict(state["vae"])
    except (RuntimeError, KeyError) as err:
        raise RunDirError(f"{state['_path']}: parameters do not match config.yaml ({str(err).splitlines()[0]})") from None
    vae.eval()
    summary = run.read_json("summary.json") if run.summary.is_file() else None
    return Run(run.path, cfg, vae, data, run.read_metrics(), summary)


def _read_yaml(path: Path) -> Dict[str, Any]:
    import yaml

    try:
        return yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError:
        raise RunDirError(f"{path}: not valid YAML") from None
