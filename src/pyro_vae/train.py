"""The SVI training loop: seeded minibatches, Adam on the ELBO, per-epoch metrics and checkpoints."""

from __future__ import annotations

import math
import random
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import pyro
import torch
from tqdm.auto import tqdm

from .build import build_vae
from .config import Config, dump
from .data import Dataset, binarize_batch, load_data
from .model import VAE
from .objectives import build_elbo, kl_report
from .rundir import RunDir

EVAL_BATCH = 1024


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (Pyro draws from torch's global generator)."""
    pyro.set_rng_seed(seed)


def rng_state(generators: Dict[str, torch.Generator]) -> Dict[str, Any]:
    return {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
            **{k: g.get_state() for k, g in generators.items()}}


def set_rng_state(state: Dict[str, Any], generators: Dict[str, torch.Generator]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    for k, g in generators.items():
        g.set_state(state[k])


@torch.no_grad()
def elbo_per_point(vae: VAE, elbo, x: torch.Tensor, batch_size: int = EVAL_BATCH) -> float:
    """Mean ELBO over the rows of ``x`` (nats per data point) with beta = 1."""
    weight, vae.kl_weight = vae.kl_weight, 1.0
    try:
        total = sum(-elbo.differentiable_loss(vae.model, vae.guide, xb) for xb in x.split(batch_size))
    finally:
        vae.kl_weight = weight
    return float(total) / len(x)


class Trainer:
    """Trains ``vae`` on ``data`` with the objective and optimizer that ``cfg`` names, writing to ``run``."""

    def __init__(self, cfg: Config, data: Dataset, vae: VAE, run: Optional[RunDir] = None, progress: Optional[bool] = None):
        self.cfg, self.data, self.vae, self.run = cfg, data, vae, run
        self.elbo = build_elbo(cfg.inference)
        self.optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.optim.lr)
        self.order = torch.Generator().manual_seed(cfg.seed + 1)  # data order
        self.binarizer = torch.Generator().manual_seed(cfg.seed + 2)  # dynamic binarization
        self.epoch, self.step, self.metrics, self.seconds = 0, 0, [], 0.0
        self.progress = sys.stderr.isatty() if progress is None else progress
        self.steps_per_epoch = math.ceil(len(data.train) / cfg.train.batch_size)

    # -- state -------------------------------------------------------------------------------
    def state(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this trainer is."""
        return {"config": self.cfg.to_dict(), "config_hash": self.cfg.hash(), "x_dim": self.data.x_dim,
                "vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "seconds": self.seconds, "metrics": self.metrics,
                "rng": rng_state({"order": self.order, "binarizer": self.binarizer})}

    def load_state(self, state: Dict[str, Any]) -> None:
        self.vae.load_state_dict(state["vae"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
        self.metrics = list(state["metrics"])
        set_rng_state(state["rng"], {"order": self.order, "binarizer": self.binarizer})

    # -- the loop ----------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over ``kl_warmup_epochs`` (per step)."""
        inf = self.cfg.inference
        if inf.kl_warmup_epochs == 0:
            return inf.beta
        return inf.beta * min(1.0, (self.step + 1) / (inf.kl_warmup_epochs * self.steps_per_epoch))

    def train_epoch(self, bar) -> float:
        """One pass over the training split; returns the mean objective per data point."""
        cfg, vae = self.cfg, self.vae
        x = self.data.train
        if self.data.binarize == "dynamic":
            x = binarize_batch(x, self.binarizer)
        perm = torch.randperm(len(x), generator=self.order)
        total = torch.zeros(())
        vae.train()
        for idx in perm.split(cfg.train.batch_size):
            xb = x[idx]
            vae.kl_weight = self.kl_weight()
            loss = self.elbo.differentiable_loss(vae.model, vae.guide, xb) / len(xb)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.optim.clip_norm)
            self.optimizer.step()
            total += loss.detach() * len(xb)
            self.step += 1
            if bar is not None:
                bar.update(1)
        vae.kl_weight = 1.0
        return -float(total) / len(x)

    def fit(self) -> List[Dict[str, Any]]:
        cfg = self.cfg
        pyro.enable_validation(cfg.train.validate_args)
        total_steps = cfg.train.epochs * self.steps_per_epoch
        bar = tqdm(total=total_steps, initial=self.epoch * self.steps_per_epoch, unit="step",
                   dynamic_ncols=True, disable=not self.progress, file=sys.stderr)
        try:
            while self.epoch < cfg.train.epochs:
                bar.set_description(f"epoch {self.epoch + 1}/{cfg.train.epochs}")
                start = time.perf_counter()
                train_elbo = self.train_epoch(bar if self.progress else None)
                seconds = time.perf_counter() - start
                val = self.data.val if len(self.data.val) else self.data.train
                val_elbo = elbo_per_point(self.vae, self.elbo, val)
                self.epoch += 1
                self.seconds += seconds
                row = {"epoch": self.epoch, "step": self.step, "train_elbo": train_elbo, "val_elbo": val_elbo,
                       "seconds": seconds, "wall_time": self.seconds,
                       "examples_per_second": len(self.data.train) / seconds, "kl_weight": self.kl_weight()}
                self.metrics.append(row)
                if self.progress:
                    bar.set_postfix(train_elbo=f"{train_elbo:.2f}", val_elbo=f"{val_elbo:.2f}",
                                    ex_s=f"{row['examples_per_second']:.0f}")
                else:
                    print(f"epoch {self.epoch:>4}/{cfg.train.epochs}  train_elbo {train_elbo:10.3f}  "
                          f"val_elbo {val_elbo:10.3f}  {row['examples_per_second']:8.0f} ex/s", flush=True)
                if self.run is not None:
                    self.run.write_metrics(self.metrics)
                    self.run.save_checkpoint(self.state())
        finally:
            bar.close()
        return self.metrics


def prepare(cfg: Config):
    """Load and check the data, then build the VAE: every user error surfaces here, before any file is written."""
    data = load_data(cfg.data.model_dump(), cfg.seed)
    seed_everything(cfg.seed)
    vae = build_vae(cfg, data.x_dim)
    if cfg.data.binarize == "none":
        vae.likelihood.check_data(data.train, where=f"data '{cfg.data.name}'")
    return data, vae


def summarize(trainer: Trainer) -> Dict[str, Any]:
    """Final numbers of a finished run (nats per data point) and the per-site KL report."""
    vae, data, cfg = trainer.vae, trainer.data, trainer.cfg
    probe = data.train[: min(len(data.train), 16)]
    last = trainer.metrics[-1]
    return {
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "train_elbo": last["train_elbo"],
        "val_elbo": last["val_elbo"],
        "test_elbo": elbo_per_point(vae, trainer.elbo, data.test) if len(data.test) else None,
        "kl": kl_report(vae.model, vae.guide, probe, cfg.inference.kl),
        "kl_requested": cfg.inference.kl,
        "seconds": trainer.seconds,
        "examples_per_second": trainer.epoch * len(data.train) / max(trainer.seconds, 1e-9),
        "num_parameters": sum(p.numel() for p in vae.parameters()),
        "x_dim": data.x_dim,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
    }
