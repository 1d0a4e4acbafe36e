"""The SVI training loop: seeded minibatches, Adam on the ELBO, a stopping rule, per-epoch metrics and exact checkpoints."""

from __future__ import annotations

import math
import shlex
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from typing import Any, Dict, List, Optional

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.config import Config
from pyro_vae.data import Dataset, binarize_batch
from pyro_vae.errors import RunDirError
from pyro_vae.errors import one_line as _first_line
from pyro_vae.evaluation.bounds import elbo_per_point
from pyro_vae.inference.elbo import evaluation_elbo
from pyro_vae.inference.engine import adam, select_engine
from pyro_vae.inference.kl import kl_report
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.model import VAE
from pyro_vae.runs.rundir import RunDir
from pyro_vae.training import distributed
from pyro_vae.training.guards import Interrupted, NonFiniteError, diagnose, grads_finite
from pyro_vae.training.state import rng_state, set_rng_state
from pyro_vae.training.stopping import EpochLimit, build_stopping

TIMING_FIELDS = ("seconds", "wall_time", "examples_per_second")  # the only metrics that differ run to run


class Trainer:
    """Trains ``vae`` on ``data`` with the objective and optimizer that ``cfg`` names, writing to ``run``.

    Its whole state (see :meth:`state`) is a checkpoint: parameters, Adam's moments, every random
    generator, the counters and, mid-epoch, the epoch's permutation and position, so a run continued
    from a checkpoint takes exactly the steps the uninterrupted run would have taken.

    Under ``torch.distributed`` (``ctx.world_size > 1``) every rank runs a Trainer: each takes its shard
    ``batch[rank::W]`` of every global batch, the loss is scaled by ``W / B`` and DDP averages the
    gradients, so each step follows the single-process full-batch gradient (``distributed.py`` derives
    it). Ranks agree on NaN and signal stops through one small all-reduce per step; only rank 0 (the one
    given ``run``) prints and writes, and its checkpoint holds every rank's sampling state.

    ``stopping`` (default: the rule ``cfg.train`` names, :func:`pyro_vae.stopping.build_stopping`) sees the
    validation ELBO after every epoch and says when training ends and which step size Adam takes next; the
    Trainer keeps a copy of the best epoch's parameters and, when the rule's ``restore_best`` is set, ends
    with them. The rule's state, the step size (in Adam's state) and the best parameters are in every
    checkpoint. The validation ELBO depends on the parameters alone (:meth:`validate`), and under
    torch.distributed every rank takes rank 0's number, so every rank's rule decides alike.
    """

    def __init__(self, cfg: Config, data: Dataset, vae: VAE, run: Optional[RunDir] = None, progress: Optional[bool] = None,
                 ctx: Optional[distributed.Context] = None, stopping: Optional[EpochLimit] = None):
        self.cfg, self.data, self.vae, self.run = cfg, data, vae, run
        self.ctx = ctx or distributed.current()
        self.device = next(vae.parameters()).device
        self.elbo = build_elbo(cfg.inference)
        self.eval_elbo = evaluation_elbo()  # val/test report the ELBO, not the training bound
        # engine "fused": the same ELBO without Pyro's tracing (fused.py; Pyro's ELBO is its test oracle)
        self.engine, self.loss_fn = select_engine(cfg, vae, self.elbo, data.train[:1].to(self.device))
        self.module = None  # the DDP-wrapped loss under torch.distributed
        self.stop_agreed: Optional[int] = None  # a signal any rank saw, agreed at the last step's all-reduce
        if self.ctx.distributed:
            self.module = distributed.wrap(vae, self.loss_fn, self.ctx, bool(self.unused_parameters()))
            # rank r > 0 samples z from its own stream; rank 0's is the single-process one
            torch.manual_seed(distributed.rank_seed(cfg.seed, self.ctx.rank))
        self.stop_rule = stopping if stopping is not None else build_stopping(cfg.train, cfg.optim.lr)
        self.optimizer = adam(vae.parameters(), lr=self.stop_rule.lr)
        self.best: Optional[Dict[str, torch.Tensor]] = None  # the best validated epoch's state dict (restore_best)
        self.restored = False  # whether the VAE now holds self.best, training being over
        self.order = torch.Generator().manual_seed(cfg.seed + 1)  # data order
        self.binarizer = torch.Generator().manual_seed(cfg.seed + 2)  # dynamic binarization
        self.epoch, self.step, self.metrics, self.seconds = 0, 0, [], 0.0
        self.current: Optional[Dict[str, Any]] = None  # the epoch in progress; None between epochs
        self._x: Optional[torch.Tensor] = None  # the current epoch's (binarized) training data
        self.stop_signal: Optional[int] = None
        self.progress = (sys.stderr.isatty() if progress is None else progress) and self.ctx.is_main
        self.steps_per_epoch = math.ceil(len(data.train) / cfg.train.batch_size)

    # -- state -------------------------------------------------------------------------------
    def generators(self) -> Dict[str, torch.Generator]:
        return {"order": self.order, "binarizer": self.binarizer}

    def state(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this trainer is (never a non-finite parameter)."""
        bad = [n for n, p in self.vae.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteError(f"step {self.step}: parameter {bad[0]} is not finite; refusing to overwrite the last "
                                 f"good checkpoint (lower optim.lr or set optim.clip_norm)")
        return {"config": self.cfg.to_dict(), "config_hash": self.cfg.hash(), "x_dim": self.data.x_dim,
                "vae": self.vae.state_dict(), "optimizer": self.optimizer.state_dict(),
                "epoch": self.epoch, "step": self.step, "seconds": self.seconds, "metrics": self.metrics,
                "current": None if self.current is None else dict(self.current),
                "rng": rng_state(self.generators()),
                "stopping": self.stop_rule.state_dict(), "best": self.best, "restored": self.restored,
                "finished": self.finished}

    def load_state(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` (a checkpoint); a checkpoint that does not fit this run is a RunDirError."""
        where = state.get("_path", "checkpoint")
        try:
            if state["x_dim"] != self.data.x_dim:
                raise ValueError(f"x_dim {state['x_dim']} but the data has {self.data.x_dim} features")
            current = state["current"]
            if current is not None and len(current["perm"]) != len(self.data.train):
                raise ValueError(f"its permutation has {len(current['perm'])} rows but the data has {len(self.data.train)}")
            self.vae.load_state_dict(state["vae"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.epoch, self.step, self.seconds = state["epoch"], state["step"], state["seconds"]
            self.metrics = list(state["metrics"])
            self.stop_rule.load_state_dict(state["stopping"])
            self.best, self.restored = state["best"], state["restored"]
            set_rng_state(state["rng"], self.generators())
            if self.ctx.distributed:
                ranks = state["rng"].get("torch_ranks")
                if ranks is not None and len(ranks) == self.ctx.world_size:
                    torch.set_rng_state(ranks[self.ctx.rank])
                elif self.ctx.rank > 0:  # a checkpoint of another world size: fresh streams for the new ranks
                    torch.manual_seed(distributed.rank_seed(self.cfg.seed + self.step, self.ctx.rank))
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise RunDirError(f"{where}: does not fit this run ({_first_line(err)})") from None
        self.current = None if current is None else dict(current)
        ranks = None if self.current is None else self.current.pop("ranks", None)
        if self.ctx.distributed and self.current is not None:
            if ranks is not None and len(ranks) == self.ctx.world_size:
                total, points = ranks[self.ctx.rank]
                self.current.update(total=torch.tensor(total, dtype=torch.float32), points=points)
            elif not self.ctx.is_main:  # another world size: rank 0 carries the epoch's sums so far
                self.current.update(total=torch.zeros(()), points=0)
        if self.current is not None:
            self._x = self.epoch_data(torch.Generator().set_state(current["binarizer"])
                                      if current["binarizer"] is not None else None)

    def save(self) -> None:
        """Checkpoint (collective under torch.distributed: every rank calls it, rank 0 writes)."""
        if self.run is None and not self.ctx.distributed:
            return
        state = self.state()
        if self.ctx.distributed:
            state["rng"]["torch_ranks"] = self.ctx.gather(torch.get_rng_state())
            if state["current"] is not None:  # the epoch's running sums: over all ranks (any world size resumes
                # it) and per rank (the same world size resumes it bitwise)
                ranks = self.ctx.gather([float(state["current"]["total"]), int(state["current"]["points"])])
                state["current"].update(total=torch.tensor(sum(t for t, _ in ranks), dtype=torch.float32),
                                        points=sum(n for _, n in ranks), ranks=ranks)
        if self.run is not None:
            self.run.save_checkpoint(state)

    def unused_parameters(self) -> List[str]:
        """Parameters that get no gradient from the loss (DDP must then look for them each step)."""
        with torch.random.fork_rng(devices=[]):
            self.loss_fn(self.data.train[:2].to(self.device), 1.0).backward()
        unused = [n for n, p in self.vae.named_parameters() if p.requires_grad and p.grad is None]
        self.vae.zero_grad(set_to_none=True)
        return unused

    def stopping(self) -> Optional[int]:
        """The signal to stop on: this process's, or under torch.distributed the one the ranks agreed on."""
        return self.stop_agreed if self.ctx.distributed else self.stop_signal

    @property
    def finished(self) -> bool:
        """Training is over: the stopping rule ended it at an epoch's end (what ``resume`` checks)."""
        return self.current is None and self.stop_rule.stopped

    # -- the loop ----------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over ``kl_warmup_epochs`` (per step)."""
        inf = self.cfg.inference
        if inf.kl_warmup_epochs == 0:
            return inf.beta
        return inf.beta * min(1.0, (self.step + 1) / (inf.kl_warmup_epochs * self.steps_per_epoch))

    def epoch_data(self, binarizer: Optional[torch.Generator]) -> torch.Tensor:
        """The training split, freshly binarized from ``binarizer`` under dynamic binarization, on the
        training device (binarized on the CPU, so a run draws the same pixels on any device; then one
        copy an epoch instead of one a batch)."""
        x = self.data.train
        return (binarize_batch(x, binarizer) if binarizer is not None else x).to(self.device)

    def begin_epoch(self) -> None:
        """Draw the epoch's binarization and order, remembering what a mid-epoch resume needs to redraw them."""
        dynamic = self.data.binarize == "dynamic"
        self.current = {"batch": 0, "binarizer": self.binarizer.get_state() if dynamic else None,
                        "total": torch.zeros(()), "points": 0, "skipped": 0, "seconds": 0.0}
        self._x = self.epoch_data(self.binarizer if dynamic else None)
        self.current["perm"] = torch.randperm(len(self._x), generator=self.order)

    def train_step(self, xb: torch.Tensor, rows: Optional[torch.Tensor] = None,
                   batch_size: Optional[int] = None) -> Optional[torch.Tensor]:
        """One SVI step on ``xb`` ``(batch, x_dim)``; returns the loss per point, or None if it was skipped.

        Under torch.distributed ``xb`` is this rank's shard of a global batch of ``batch_size`` rows.
        """
        vae = self.vae
        vae.kl_weight = self.kl_weight()
        # the parameters Adam steps (a list it keeps: walking the module tree each step costs more);
        # dropping their gradients is zero_grad(set_to_none=True) without its profiler scope
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for p in params:
            p.grad = None
        loss, error = None, None
        try:
            if self.module is None:
                loss = self.loss_fn(xb, vae.kl_weight) / len(xb)
            else:  # W/B times the shard's sum: DDP's average over ranks is then the full-batch gradient
                W = self.ctx.world_size
                loss = self.module(xb, vae.kl_weight, W / (batch_size or len(xb) * W))
        except ValueError as err:  # with validate_args, Pyro rejects a NaN parameter before the loss sees it
            error = err
        bad = error is not None or not math.isfinite(loss.item())  # one scalar read, not isfinite's four ops
        if self.ctx.distributed:  # one all-reduce: a rank must not enter backward's all-reduce alone
            any_bad, signum = self.ctx.all_max(bad, self.stop_signal or 0)
            self.stop_agreed = self.stop_agreed or (int(signum) or None)
            if any_bad and not bad:
                return self.nonfinite(xb, rows, "another rank's loss is not finite")
        if error is not None:
            return self.nonfinite(xb, rows, f"computing the loss raised {_first_line(error)}", error)
        if bad:
            return self.nonfinite(xb, rows, f"the loss is {float(loss.detach())}")
        loss.backward()
        params = [p for p in params if p.grad is not None]
        if not grads_finite(params):
            names = [n for n, p in vae.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
            return self.nonfinite(xb, rows, f"the gradient of {names[0]} is not finite")
        if self.cfg.optim.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.cfg.optim.clip_norm)
        self.optimizer.step()
        if self.module is not None:  # back to the shard's mean, for the epoch's train_elbo
            loss = loss * (batch_size or len(xb) * self.ctx.world_size) / max(len(xb) * self.ctx.world_size, 1)
        return loss.detach()

    def nonfinite(self, xb: torch.Tensor, rows: Optional[torch.Tensor], what: str,
                  err: Optional[Exception] = None) -> None:
        """Stop with a message naming the offending sites, or (``on_nonfinite: skip``) warn and skip the step."""
        self.optimizer.zero_grad(set_to_none=True)
        found = diagnose(self.vae, xb, rows)
        if err is not None and not found:
            raise err  # a ValueError that no NaN explains is a bug, not a divergence
        where = "; ".join(found) or "every site's log_prob is finite on re-tracing (the non-finite value arose in the ELBO's arithmetic)"
        msg = f"step {self.step + 1} (epoch {self.epoch + 1}): {what}; {where}"
        if self.cfg.train.on_nonfinite == "skip":
            if self.ctx.is_main:  # every rank skips the same step; one of them says so
                print(f"pyro-vae: warning: skipped non-finite {msg}", file=sys.stderr, flush=True)
            return None
        kept = f"; kept the last good checkpoint {self.run.checkpoint}" if self.run is not None else ""
        raise NonFiniteError(f"non-finite {msg}{kept} (lower optim.lr, set optim.clip_norm, or set train.on_nonfinite=skip)")

    def train_epoch(self, bar) -> float:
        """Finish the current epoch (starting one if none is in progress); returns the mean objective per data point."""
        if self.current is None:
            self.begin_epoch()
        cur, every = self.current, self.cfg.train.checkpoint_every_steps
        batches = cur["perm"].split(self.cfg.train.batch_size)
        start, seconds0 = time.perf_counter(), cur["seconds"]
        self.vae.train()
        for batch in batches[cur["batch"]:]:
            idx = self.ctx.shard(batch)
            xb = self._x[idx]
            loss = self.train_step(xb, idx, len(batch)) if self.ctx.distributed else self.train_step(xb, idx)
            cur["batch"] += 1
            if loss is None:
                cur["skipped"] += 1
            else:
                cur["total"] = cur["total"] + loss * len(idx)
                cur["points"] += len(idx)
            self.step += 1
            cur["seconds"] = seconds0 + time.perf_counter() - start
            if bar is not None:
                bar.update(1)
            if self.stopping() is not None or (every and self.step % every == 0 and cur["batch"] < len(batches)):
                self.save()
                if self.stopping() is not None:
                    self.interrupt()
        self.vae.kl_weight = 1.0
        total, points = self.ctx.all_sum(cur["total"], cur["points"]) if self.ctx.distributed else (cur["total"], cur["points"])
        if points == 0:
            raise NonFiniteError(f"epoch {self.epoch + 1}: every step was non-finite and skipped; nothing to train on")
        return -float(total) / points

    def interrupt(self) -> None:
        name = signal.Signals(self.stopping()).name
        where = f"step {self.step} (epoch {self.epoch + 1}, batch {self.current['batch']}/{self.steps_per_epoch})" \
            if self.current is not None else f"step {self.step} (end of epoch {self.epoch})"
        hint = f"; checkpoint written; continue with: pyro-vae resume {shlex.quote(str(self.run.path))}" \
            if self.run is not None else ""
        raise Interrupted(self.stopping(), f"interrupted by {name} at {where}{hint}")

    @contextmanager
    def catch_signals(self):
        """On SIGINT/SIGTERM, finish the current step and stop at a checkpoint; a second signal stops at once."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handler(signum, frame):
            if self.stop_signal is not None:
                raise KeyboardInterrupt
            self.stop_signal = signum
            print(f"\npyro-vae: {signal.Signals(signum).name}: finishing the current step and writing a checkpoint "
                  f"(send again to stop at once)", file=sys.stderr, flush=True)

        for s in previous:
            signal.signal(s, handler)
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def close(self) -> None:
        """Release the DDP wrapper (and its gradient hooks) once training is over; the VAE stays."""
        self.module = None

    def fit(self) -> List[Dict[str, Any]]:
        cfg = self.cfg
        if self.ctx.distributed and self.module is None:
            raise RuntimeError("Trainer.fit after close(): the DDP wrapper is gone; build a new Trainer")
        total_steps = cfg.train.epochs * self.steps_per_epoch
        bar = tqdm(total=total_steps, initial=self.step, unit="step",
                   dynamic_ncols=True, disable=not self.progress, file=sys.stderr)
        try:
            # validation as the config says while training, restored after (it is process-wide state)
            with self.catch_signals(), warnings.catch_warnings(), pyro.validation_enabled(cfg.train.validate_args):
                # the guard below reports a NaN loss itself, naming the site; Pyro's multi-line warning would not
                warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                while not self.stop_rule.stopped:
                    bar.set_description(f"epoch {self.epoch + 1} (at most {cfg.train.epochs})")
                    self.end_epoch(self.train_epoch(bar if self.progress else None), bar)
                    if self.stopping() is not None:
                        self.interrupt()
                bar.total = bar.n  # stopped by the rule before the cap: the bar ends full, not part-way
                bar.refresh()
        finally:
            bar.close()
        self.conclude()
        return self.metrics

    def say(self, message: str, bar=None) -> None:
        """One line for the user from rank 0: above the progress bar, or on stdout beside the epoch lines."""
        if self.progress and bar is not None:
            bar.write(message, file=sys.stderr)
        elif self.ctx.is_main:
            print(message, flush=True)

    @torch.no_grad()
    def validate(self) -> float:
        """The validation ELBO (nats per point; the training split when there is no validation split) of the
        current parameters, its z drawn from a stream seeded by ``cfg.seed`` alone and the training stream left
        untouched: equal parameters score equally, so epochs differ by their parameters and not their draws,
        and restored best parameters score their recorded value. Under torch.distributed every rank returns
        rank 0's number (one small collective), so the stopping rule decides alike on every rank."""
        val = self.data.val if len(self.data.val) else self.data.train
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.cfg.seed + 3)
            elbo = elbo_per_point(self.vae, self.eval_elbo, val)
        return self.ctx.gather(elbo)[0] if self.ctx.distributed else elbo

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def restore(self) -> None:
        """Training is over: end with the best epoch's parameters (called before the last checkpoint, which then
        holds them, so no moment exists at which a stopped run lacks them)."""
        self.vae.load_state_dict(self.best)
        self.restored = True

    def conclude(self) -> None:
        """Say why training stopped and which parameters it kept."""
        rule = self.stop_rule
        why = {"plateau": f"no validation ELBO improvement > {rule.min_delta:g} nats in {rule.patience} epochs "
                          f"at the floor step size {rule.lr:g}",
               "max_epochs": f"reached train.epochs = {rule.max_epochs}"}.get(rule.reason, rule.reason)
        kept = f"; restored the parameters of epoch {rule.best_epoch} (best validation ELBO {rule.best:.3f})" \
            if self.restored else ""
        self.say(f"stopped after epoch {self.epoch}: {why}{kept}")

    def end_epoch(self, train_elbo: float, bar) -> None:
        """Validate, let the stopping rule decide (a new step size; once it stops, the best parameters restored),
        record the epoch's metrics, then checkpoint (before metrics.jsonl, which never runs ahead)."""
        cfg, cur, rule = self.cfg, self.current, self.stop_rule
        val_elbo = self.validate()
        self.epoch += 1
        self.seconds += cur["seconds"]
        lr = rule.lr  # the step size this epoch took
        if rule.update(self.epoch, val_elbo) and rule.restore_best:
            self.best = {k: v.detach().clone() for k, v in self.vae.state_dict().items()}
        row = {"epoch": self.epoch, "step": self.step, "train_elbo": train_elbo, "val_elbo": val_elbo, "lr": lr,
               "seconds": cur["seconds"], "wall_time": self.seconds,
               "examples_per_second": len(self.data.train) / max(cur["seconds"], 1e-9), "kl_weight": self.kl_weight(),
               "skipped_steps": cur["skipped"]}
        self.metrics.append(row)
        self.current, self._x = None, None
        if self.progress:
            bar.set_postfix(train_elbo=f"{train_elbo:.2f}", val_elbo=f"{val_elbo:.2f}",
                            ex_s=f"{row['examples_per_second']:.0f}")
        elif self.ctx.is_main:
            print(f"epoch {self.epoch:>4}/{cfg.train.epochs}  train_elbo {train_elbo:10.3f}  "
                  f"val_elbo {val_elbo:10.3f}  {row['examples_per_second']:8.0f} ex/s", flush=True)
        if rule.lr != lr:
            self.set_lr(rule.lr)
            self.say(f"step size {lr:g} -> {rule.lr:g}: no validation ELBO improvement > {rule.min_delta:g} nats "
                     f"in {rule.patience} epochs", bar)
        if rule.stopped and rule.restore_best and self.best is not None:
            self.restore()
        self.save()
        if self.run is not None:
            self.run.write_metrics(self.metrics)


def summarize(trainer: Trainer) -> Dict[str, Any]:
    """Final numbers of a finished run (nats per data point) and the per-site KL report.

    ``train_elbo`` and ``val_elbo`` are those of the epoch whose parameters the run ends with (the best
    epoch's when they were restored), ``test_elbo`` is computed from them; ``stopped`` says which rule
    ended training, why, where, and whether the best parameters were restored; ``converged`` is the
    rule's verdict (the last ``patience`` epochs raised the best validation ELBO by at most ``min_delta``).
    """
    vae, data, cfg, rule = trainer.vae, trainer.data, trainer.cfg, trainer.stop_rule
    probe = data.train[: min(len(data.train), 16)].to(trainer.device)
    last = next(r for r in trainer.metrics if r["epoch"] == rule.best_epoch) if trainer.restored else trainer.metrics[-1]
    return {
        "epochs": trainer.epoch,
        "steps": trainer.step,
        "stopped": {**rule.summary(), "restored_best": trainer.restored},
        "converged": rule.converged,
        "train_elbo": last["train_elbo"],
        "val_elbo": last["val_elbo"],
        "test_elbo": elbo_per_point(vae, trainer.eval_elbo, data.test) if len(data.test) else None,
        "kl": kl_report(vae.model, vae.guide, probe, cfg.inference.kl),
        "kl_requested": cfg.inference.kl,
        "seconds": trainer.seconds,
        "examples_per_second": trainer.epoch * len(data.train) / max(trainer.seconds, 1e-9),
        "num_parameters": sum(p.numel() for p in vae.parameters()),
        "x_dim": data.x_dim,
        "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
    }
