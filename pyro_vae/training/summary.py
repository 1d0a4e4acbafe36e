"""The final numbers of a training run, for ``summary.json``."""

from __future__ import annotations

from typing import Any, Dict, List

from torch import nn

from pyro_vae.data import Dataset
from pyro_vae.evaluation.bounds import elbo_per_point
from pyro_vae.inference.elbo import evaluation_elbo
from pyro_vae.inference.kl import kl_report
from pyro_vae.training.stopping import EpochLimit


def run_summary(vae: nn.Module, data: Dataset, metrics: List[Dict[str, Any]], stopping: EpochLimit, *, kl: str,
                epochs: int, steps: int, seconds: float, restored: bool = False) -> Dict[str, Any]:
    """Final numbers of a run (nats per data point) and the per-site KL report.

    ``train_elbo`` and ``val_elbo`` are those of the metrics row whose parameters the run ends with (the
    best epoch's when they were ``restored``, else the last), ``test_elbo`` is the ELBO of the test split
    under those parameters; ``stopped`` says which rule ended training, why, where, and whether the best
    parameters were restored; ``converged`` is the rule's verdict (the last ``patience`` epochs raised the
    best validation ELBO by at most ``min_delta``). ``kl`` is the KL estimator the config asked for
    (``inference.kl``), reported beside what each site actually used on a probe of 16 training rows.
    ``examples_per_second`` is ``epochs * n_train / seconds``, ``seconds`` being the training time alone.
    """
    device = next(vae.parameters()).device
    probe = data.train[: min(len(data.train), 16)].to(device)
    last = next(r for r in metrics if r["epoch"] == stopping.best_epoch) if restored else metrics[-1]
    return {
        "epochs": epochs,
        "steps": steps,
        "stopped": {**stopping.summary(), "restored_best": restored},
        "converged": stopping.converged,
        "train_elbo": last["train_elbo"],
        "val_elbo": last["val_elbo"],
        "test_elbo": elbo_per_point(vae, evaluation_elbo(), data.test) if len(data.test) else None,
        "kl": kl_report(vae.model, vae.guide, probe, kl),
        "kl_requested": kl,
        "seconds": seconds,
        "examples_per_second": epochs * len(data.train) / max(seconds, 1e-9),
        "num_parameters": sum(p.numel() for p in vae.parameters()),
        "x_dim": data.x_dim,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
    }


def summarize(trainer) -> Dict[str, Any]:
    """:func:`run_summary` of a finished :class:`~pyro_vae.training.trainer.Trainer` built from a config."""
    if trainer.config is None:
        raise ValueError("summarize: the Trainer was built without a config (use Trainer.from_config)")
    return run_summary(trainer.vae, trainer.data, trainer.metrics, trainer.stop_rule,
                       kl=trainer.config.inference.kl, epochs=trainer.epoch, steps=trainer.step,
                       seconds=trainer.seconds, restored=trainer.restored)
