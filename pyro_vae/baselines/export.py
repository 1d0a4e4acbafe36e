"""Write a fitted linear-Gaussian model as an ordinary run directory, so ``load_run``/``evaluate`` treat it like SVI's.

The run's config is the user's with the model made linear-Gaussian (``decoder: linear``,
``prior: normal``, ``likelihood: normal`` with the fitted noise) and the guide made
``mean_field`` with ``hidden: []``: an affine map of x, which can represent the exact posterior
p(z|x) once W is rotated so that its covariance is diagonal (:func:`ppca.diagonalize`). So the
guide is set in closed form, never trained, and the run's ELBO equals its exact log-likelihood
up to Monte Carlo noise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Optional

import torch

from pyro_vae.baselines import ppca
from pyro_vae.baselines.history import Fit
from pyro_vae.build import build_vae
from pyro_vae.components.guides import GUIDES
from pyro_vae.components.networks import MIN_SCALE
from pyro_vae.config import Config, ModelConfig, dump
from pyro_vae.data import Dataset
from pyro_vae.inference.engine import adam
from pyro_vae.model import VAE
from pyro_vae.rundir import RunDir
from pyro_vae.runs.run import Run, write_plots
from pyro_vae.training.state import checkpoint_state, generators
from pyro_vae.training.stopping import build_stopping
from pyro_vae.training.summary import run_summary


def linear_gaussian_config(cfg: Config, latent_dim: int, noise_var: torch.Tensor) -> Config:
    """``cfg`` with the model that ``ppca``/``factor_analysis`` fit and the linear guide that holds the exact posterior."""
    per_feature = noise_var.dim() > 0
    model = ModelConfig(latent_dim=latent_dim, prior="normal", decoder="linear",
                        likelihood={"name": "normal", "scale": float(noise_var.mean().sqrt()),
                                    "learn_scale": "per_feature" if per_feature else "global"})
    guide = GUIDES.resolve({"name": "mean_field", "hidden": [], "shared_trunk": True}, where="guide")
    return cfg.model_copy(update={"model": model, "guide": guide})  # the other sections are cfg's, already valid


def _softplus_inverse(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


@torch.no_grad()
def set_exact(vae: VAE, W: torch.Tensor, b: torch.Tensor, noise_var: torch.Tensor) -> None:
    """Load (W, b, noise) into the linear decoder and likelihood, and p(z|x) into the linear mean-field guide.

    The guide's loc head is x -> A (x - b) and its scale head is constant, sqrt(diag G) (see
    :func:`ppca.posterior`), after rotating W so that G is diagonal.
    """
    W = ppca.diagonalize(W, noise_var)
    A, b, G = ppca.posterior(W, b, noise_var)
    vae.decoder.linear.weight.copy_(W)
    vae.decoder.linear.bias.copy_(b)
    vae.likelihood.log_scale.copy_(0.5 * noise_var.log().expand(vae.likelihood.log_scale.shape))
    enc = vae.encoder
    enc.loc_head.weight.copy_(A)
    enc.loc_head.bias.copy_(-A @ b)
    enc.scale_head.weight.zero_()
    sd = G.diagonal().sqrt().clamp_min(2 * MIN_SCALE)
    enc.scale_head.bias.copy_(_softplus_inverse(sd - MIN_SCALE))


def build_exact_vae(cfg: Config, fit: Fit, x_dim: int) -> tuple[Config, VAE]:
    """The run config and VAE holding ``fit`` (a linear-Gaussian :class:`Fit`) exactly."""
    p = fit.params
    run_cfg = linear_gaussian_config(cfg, p["W"].shape[1], p["noise_var"])
    vae = build_vae(run_cfg, x_dim)
    set_exact(vae, p["W"], p["b"], p["noise_var"])
    return run_cfg, vae


def metrics_rows(fit: Fit, n_train: int) -> list[Dict[str, Any]]:
    """One ``metrics.jsonl`` row per EM iteration; with the exact posterior as guide, ELBO = log-likelihood."""
    rows, previous = [], 0.0
    for r in fit.history.rows:
        seconds = r["seconds"] - previous
        previous = r["seconds"]
        rows.append({"epoch": int(r["iteration"]), "step": int(r["iteration"]),
                     "train_elbo": r["log_likelihood"], "val_elbo": r.get("val_log_likelihood", r["log_likelihood"]),
                     "log_likelihood": r["log_likelihood"], "seconds": seconds, "wall_time": r["seconds"],
                     "examples_per_second": n_train / max(seconds, 1e-9), "kl_weight": 1.0})
    return rows


def write_run(cfg: Config, data: Dataset, fit: Fit, out: str | Path, overwrite: bool = False,
              method: Optional[str] = None) -> Run:
    """Write ``fit`` as a run directory at ``out`` (config.yaml, metrics.jsonl, checkpoint.pt, summary.json, plots)."""
    run_cfg, vae = build_exact_vae(cfg, fit, data.x_dim)
    run = RunDir.create(out, overwrite=overwrite)
    run.write_config(dump(run_cfg))
    metrics = metrics_rows(fit, len(data.train))
    run.write_metrics(metrics)
    # the checkpoint `pyro-vae train` would hold for this config, at the fit's counters: a fresh Adam and
    # stopping rule (what resume_run loads into its Trainer); finished, as an EM fit is final and
    # `pyro-vae resume` must not train it on
    rule = build_stopping(run_cfg.train, run_cfg.optim.lr)
    seconds = fit.history.seconds
    run.save_checkpoint(checkpoint_state(
        config=run_cfg, x_dim=data.x_dim, vae=vae, optimizer=adam(vae.parameters(), lr=rule.lr), stopping=rule,
        streams=generators(run_cfg.seed), epoch=fit.iterations, step=fit.iterations, seconds=seconds,
        metrics=metrics, finished=True))
    summary = run_summary(vae, data, metrics, rule, kl=run_cfg.inference.kl, epochs=fit.iterations,
                          steps=fit.iterations, seconds=seconds)
    p = fit.params
    summary.update({
        "method": method or f"{fit.kind}_em",
        "iterations": fit.iterations,
        "converged": fit.converged,
        "log_likelihood": {s: ppca.log_likelihood(data.split(s), p["W"], p["b"], p["noise_var"])
                           for s in ("train", "val", "test") if len(data.split(s))},
        "guide": "exact posterior (linear mean-field guide set in closed form)",
    })
    summary["plots"] = [str(q.relative_to(run.path)) for q in write_plots(run, vae, data, metrics)]
    run.write_summary(summary)
    run.commit()  # an --overwrite of an earlier run: its files are replaced only now, the new run complete
    return Run(run.path, run_cfg, vae, data, metrics, summary)
