"""The training loop: seeded minibatches, an optimizer step on a loss, a stopping rule, per-epoch metrics.

The loop is all this module does. The checkpoint it writes is :mod:`pyro_vae.training.state`'s, the
signal and non-finite guards are :mod:`pyro_vae.training.guards`', the final numbers are
:mod:`pyro_vae.training.summary`'s; :meth:`Trainer.from_config` makes every part from a config.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae.config import Config
from pyro_vae.data import Dataset, binarize_batch
from pyro_vae.errors import one_line as _first_line
from pyro_vae.evaluation.bounds import elbo_per_point
from pyro_vae.inference.elbo import evaluation_elbo
from pyro_vae.inference.engine import LossFn, adam, select_engine
from pyro_vae.inference.objectives import build_elbo, has_pyro_loss
from pyro_vae.model import VAE
from pyro_vae.training import distributed
from pyro_vae.training.guards import NonFiniteError, SignalCatcher, grads_finite, interrupted, nonfinite_step
from pyro_vae.training.state import RunFiles, checkpoint_state, gather_ranks, generators, load_checkpoint_state
from pyro_vae.training.stopping import EpochLimit, build_stopping

TIMING_FIELDS = ("seconds", "wall_time", "examples_per_second")  # the only metrics that differ run to run


class Trainer:
    r"""Trains ``vae`` on ``data.train`` by ``optimizer`` steps on ``loss_fn`` until the ``stopping`` rule ends it.

    Each epoch takes a permutation of the training rows from a stream seeded by ``seed`` (and, under
    ``data.binarize: dynamic``, a fresh binarization from another), cuts it into minibatches of
    ``batch_size`` rows and takes one step per minibatch ``x_b`` ``(B, x_dim)``:

    .. math:: \theta \leftarrow \mathrm{step}\big(\nabla_\theta\, \ell(x_b, \beta_t) / B\big),

    :math:`\ell` = ``loss_fn(x_b, beta)`` being minus the objective summed over the batch (with ``indexed_loss``,
    ``loss_fn(x_b, beta, rows)`` also gets the batch's row indices into ``data.train``, for a loss with
    per-point parameters) and :math:`\beta_t = \beta \min(1, (t+1) / (W S))` at step :math:`t`, ramped over
    :math:`W` = ``kl_warmup_epochs`` epochs of :math:`S` steps (``beta`` when there is no warm-up). Gradients are
    clipped to norm ``clip_norm`` when set. A non-finite loss or gradient stops the run naming the site
    (or, with ``on_nonfinite="skip"``, drops the step).

    After every epoch the validation score (``validation()``; default: the ELBO of the validation split,
    :meth:`validate`) goes to ``stopping``, which says when training ends and which step size comes next;
    the Trainer keeps a copy of the best epoch's parameters and, when the rule's ``restore_best`` is set,
    ends with them. ``self.seconds`` is the time of the steps alone (no validation, no checkpoints): it is
    the clock of the rule's time budgets and of ``examples_per_second``.

    With a ``run`` directory its whole state (:meth:`state`) is a checkpoint, written at epoch ends, every
    ``checkpoint_every_steps`` steps and on SIGINT/SIGTERM: a run continued from it takes exactly the steps
    the uninterrupted run would have taken. ``config`` is what the checkpoint records as the run's config.

    Under ``torch.distributed`` (``ctx.world_size > 1``) every rank runs a Trainer: each takes its shard
    ``batch[rank::W]`` of every global batch, the loss is scaled by ``W / B`` and DDP averages the
    gradients, so each step follows the single-process full-batch gradient (``distributed.py`` derives
    it). Ranks agree on NaN and signal stops through one small all-reduce per step; only rank 0 (the one
    given ``run``) prints and writes, and its checkpoint holds every rank's sampling state. The validation
    score depends on the parameters alone and every rank takes rank 0's, so every rank's rule decides alike.

    ``progress``: a progress bar (default: when stderr is a terminal), else one line per epoch on stdout;
    ``quiet`` prints neither. Build one from a config with :meth:`from_config`.
    """

    def __init__(self, vae: VAE, loss_fn: LossFn, optimizer: torch.optim.Optimizer, data: Dataset,
                 stopping: EpochLimit, *, seed: int, batch_size: int, beta: float = 1.0, kl_warmup_epochs: int = 0,
                 clip_norm: Optional[float] = None, on_nonfinite: str = "stop", validate_args: bool = False,
                 checkpoint_every_steps: Optional[int] = None, indexed_loss: bool = False,
                 validation: Optional[Callable[[], float]] = None, run: Optional[RunFiles] = None,
                 progress: Optional[bool] = None, quiet: bool = False, ctx: Optional[distributed.Context] = None,
                 config: Optional[Config] = None, engine: str = "custom"):
        self.vae, self.loss_fn, self.optimizer, self.data, self.stop_rule = vae, loss_fn, optimizer, data, stopping
        self.seed, self.batch_size, self.beta, self.kl_warmup_epochs = seed, batch_size, beta, kl_warmup_epochs
        self.clip_norm, self.on_nonfinite, self.validate_args = clip_norm, on_nonfinite, validate_args
        self.checkpoint_every_steps, self.indexed_loss, self.validation = checkpoint_every_steps, indexed_loss, validation
        self.run, self.config, self.engine = run, config, engine
        self.ctx = ctx or distributed.current()
        if indexed_loss and self.ctx.distributed:  # DDP's module calls the loss as loss(x, beta, scale)
            raise ValueError("indexed_loss: not under torch.distributed")
        self.device = next(vae.parameters()).device
        self.eval_elbo = evaluation_elbo()  # val/test report the ELBO, not the training bound
        self.module = None  # the DDP-wrapped loss under torch.distributed
        self.stop_agreed: Optional[int] = None  # a signal any rank saw, agreed at the last step's all-reduce
        if self.ctx.distributed:
            self.module = distributed.wrap(vae, self.loss_fn, self.ctx, bool(self.unused_parameters()))
            # rank r > 0 samples z from its own stream; rank 0's is the single-process one
            torch.manual_seed(distributed.rank_seed(seed, self.ctx.rank))
        self.set_lr(stopping.lr)  # the rule owns the step size
        self.best: Optional[Dict[str, torch.Tensor]] = None  # the best validated epoch's state dict (restore_best)
        self.restored = False  # whether the VAE now holds self.best, training being over
        self.streams = generators(seed)  # data order and dynamic binarization
        self.order, self.binarizer = self.streams["order"], self.streams["binarizer"]
        self.epoch, self.step, self.metrics, self.seconds = 0, 0, [], 0.0
        self.current: Optional[Dict[str, Any]] = None  # the epoch in progress; None between epochs
        self._x: Optional[torch.Tensor] = None  # the current epoch's (binarized) training data
        self.signals = SignalCatcher(checkpoints=run is not None or self.ctx.distributed)
        self.quiet = quiet or not self.ctx.is_main
        self.progress = (sys.stderr.isatty() if progress is None else progress) and not self.quiet
        self.steps_per_epoch = math.ceil(len(data.train) / batch_size)

    @classmethod
    def from_config(cls, cfg: Config, data: Dataset, vae: VAE, run: Optional[RunFiles] = None,
                    progress: Optional[bool] = None, ctx: Optional[distributed.Context] = None,
                    stopping: Optional[EpochLimit] = None, **options) -> "Trainer":
        """The Trainer of ``pyro-vae train``/``resume`` for ``cfg``: the loss of ``cfg.inference`` on the engine
        ``cfg.train.engine`` selects (the fused loss where it covers the config, else Pyro's ELBO), the fused
        Adam at the rule's step size, ``stopping`` (default: the rule ``cfg.train`` names) and the config's
        seed, batch size, beta warm-up, clipping and guards. ``options`` are further Trainer keywords
        (``quiet``, ``validation``...). The engine's checks (a ConfigError) come before anything is trained."""
        device = next(vae.parameters()).device
        elbo = build_elbo(cfg.inference) if has_pyro_loss(cfg.inference) else None
        engine, loss_fn = select_engine(cfg, vae, elbo, data.train[:1].to(device))
        rule = stopping if stopping is not None else build_stopping(cfg.train, cfg.optim.lr)
        train, inf = cfg.train, cfg.inference
        return cls(vae, loss_fn, adam(vae.parameters(), lr=rule.lr), data, rule, seed=cfg.seed,
                   batch_size=train.batch_size, beta=inf.beta, kl_warmup_epochs=inf.kl_warmup_epochs,
                   clip_norm=cfg.optim.clip_norm, on_nonfinite=train.on_nonfinite, validate_args=train.validate_args,
                   checkpoint_every_steps=train.checkpoint_every_steps, run=run, progress=progress, ctx=ctx,
                   config=cfg, engine=engine, **options)

    # -- state: the checkpoint (pyro_vae.training.state) -------------------------------------
    def state(self) -> Dict[str, Any]:
        """Everything needed to continue exactly where this trainer is (never a non-finite parameter): the config
        and its hash, ``x_dim``, the parameters, the optimizer's state (moments, step size), the counters and
        metrics rows, the epoch in progress (permutation, position, binarization state, running sums), every
        random state, the stopping rule's state, the best epoch's parameters and whether training is finished
        (:func:`pyro_vae.training.state.checkpoint_state`)."""
        return checkpoint_state(config=self.config, x_dim=self.data.x_dim, vae=self.vae, optimizer=self.optimizer,
                                stopping=self.stop_rule, streams=self.streams, epoch=self.epoch, step=self.step,
                                seconds=self.seconds, metrics=self.metrics, current=self.current, best=self.best,
                                restored=self.restored, finished=self.finished)

    def load_state(self, state: Dict[str, Any]) -> None:
        """Continue from ``state`` (a checkpoint); a checkpoint that does not fit this run is a RunDirError."""
        counters = load_checkpoint_state(state, x_dim=self.data.x_dim, n_train=len(self.data.train), vae=self.vae,
                                         optimizer=self.optimizer, stopping=self.stop_rule, streams=self.streams,
                                         seed=self.seed, ctx=self.ctx)
        self.epoch, self.step, self.seconds, self.metrics = (counters[k] for k in ("epoch", "step", "seconds", "metrics"))
        self.best, self.restored, self.current = counters["best"], counters["restored"], counters["current"]
        if self.current is not None:  # redraw the epoch's binarization from its saved starting state
            binarizer = self.current["binarizer"]
            self._x = self.epoch_data(torch.Generator().set_state(binarizer) if binarizer is not None else None)

    def save(self) -> None:
        """Checkpoint (collective under torch.distributed: every rank calls it, rank 0 writes)."""
        if self.run is None and not self.ctx.distributed:
            return
        state = gather_ranks(self.state(), self.ctx) if self.ctx.distributed else self.state()
        if self.run is not None:
            self.run.save_checkpoint(state)

    @property
    def finished(self) -> bool:
        """Training is over: the stopping rule ended it at an epoch's end (what ``resume`` checks)."""
        return self.current is None and self.stop_rule.stopped

    # -- guards: signals and non-finite steps (pyro_vae.training.guards) ---------------------
    @property
    def stop_signal(self) -> Optional[int]:
        """The signal this process received (SIGINT/SIGTERM), if any."""
        return self.signals.received

    @stop_signal.setter
    def stop_signal(self, signum: Optional[int]) -> None:
        self.signals.received = signum

    def stopping(self) -> Optional[int]:
        """The signal to stop on: this process's, or under torch.distributed the one the ranks agreed on."""
        return self.stop_agreed if self.ctx.distributed else self.stop_signal

    def interrupt(self) -> None:
        where = f"step {self.step} (epoch {self.epoch + 1}, batch {self.current['batch']}/{self.steps_per_epoch})" \
            if self.current is not None else f"step {self.step} (end of epoch {self.epoch})"
        raise interrupted(self.stopping(), where, self.run.path if self.run is not None else None)

    def nonfinite(self, xb: torch.Tensor, rows: Optional[torch.Tensor], what: str,
                  err: Optional[Exception] = None) -> None:
        """Stop with a message naming the offending sites, or (``on_nonfinite: skip``) warn and skip the step."""
        self.optimizer.zero_grad(set_to_none=True)
        return nonfinite_step(self.vae, xb, rows, what, f"step {self.step + 1} (epoch {self.epoch + 1})",
                              skip=self.on_nonfinite == "skip", err=err, announce=self.ctx.is_main,
                              checkpoint=self.run.checkpoint if self.run is not None else None)

    def unused_parameters(self) -> List[str]:
        """Parameters that get no gradient from the loss (DDP must then look for them each step)."""
        with torch.random.fork_rng(devices=[]):
            self.loss_fn(self.data.train[:2].to(self.device), 1.0).backward()
        unused = [n for n, p in self.vae.named_parameters() if p.requires_grad and p.grad is None]
        self.vae.zero_grad(set_to_none=True)
        return unused

    # -- the loop ----------------------------------------------------------------------------
    def kl_weight(self) -> float:
        """beta, ramped linearly from 0 over ``kl_warmup_epochs`` (per step)."""
        if self.kl_warmup_epochs == 0:
            return self.beta
        return self.beta * min(1.0, (self.step + 1) / (self.kl_warmup_epochs * self.steps_per_epoch))

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
        """One step on ``xb`` ``(batch, x_dim)`` (``rows``: its rows of ``data.train``); returns the loss per
        point, or None if it was skipped.

        Under torch.distributed ``xb`` is this rank's shard of a global batch of ``batch_size`` rows.
        """
        vae = self.vae
        vae.kl_weight = self.kl_weight()
        # the parameters the optimizer steps (a list it keeps: walking the module tree each step costs more);
        # dropping their gradients is zero_grad(set_to_none=True) without its profiler scope
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        for p in params:
            p.grad = None
        loss, error = None, None
        args = (xb, vae.kl_weight, rows) if self.indexed_loss else (xb, vae.kl_weight)
        try:
            if self.module is None:
                loss = self.loss_fn(*args) / len(xb)
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
        if self.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, self.clip_norm)
        self.optimizer.step()
        if self.module is not None:  # back to the shard's mean, for the epoch's train_elbo
            loss = loss * (batch_size or len(xb) * self.ctx.world_size) / max(len(xb) * self.ctx.world_size, 1)
        return loss.detach()

    def train_epoch(self, bar) -> float:
        """Finish the current epoch (starting one if none is in progress); returns the mean objective per data point."""
        if self.current is None:
            self.begin_epoch()
        cur, every = self.current, self.checkpoint_every_steps
        batches = cur["perm"].split(self.batch_size)
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

    def close(self) -> None:
        """Release the DDP wrapper (and its gradient hooks) once training is over; the VAE stays."""
        self.module = None

    def fit(self) -> List[Dict[str, Any]]:
        """Train until the stopping rule ends it (or a signal stops it at a checkpoint); returns the metrics rows."""
        if self.ctx.distributed and self.module is None:
            raise RuntimeError("Trainer.fit after close(): the DDP wrapper is gone; build a new Trainer")
        cap = self.stop_rule.max_epochs  # None: a time budget alone
        bar = tqdm(total=cap * self.steps_per_epoch if cap else None, initial=self.step, unit="step",
                   dynamic_ncols=True, disable=not self.progress, file=sys.stderr)
        try:
            # validation as configured while training, restored after (it is process-wide state)
            with self.signals.catching(), warnings.catch_warnings(), pyro.validation_enabled(self.validate_args):
                # the guard below reports a NaN loss itself, naming the site; Pyro's multi-line warning would not
                warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
                while not self.stop_rule.stopped:
                    bar.set_description(f"epoch {self.epoch + 1}" + (f" (at most {cap})" if cap else ""))
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
        elif not self.quiet:
            print(message, flush=True)

    @torch.no_grad()
    def validate(self) -> float:
        """The validation score of the current parameters (``validation()``; by default the ELBO in nats per
        point of the validation split, the training split when there is none), its draws from a stream seeded
        by ``seed`` alone and the training stream left untouched: equal parameters score equally, so epochs
        differ by their parameters and not their draws, and restored best parameters score their recorded
        value. Under torch.distributed every rank returns rank 0's number (one small collective), so the
        stopping rule decides alike on every rank."""
        val = self.data.val if len(self.data.val) else self.data.train
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(self.seed + 3)
            score = self.validation() if self.validation is not None else elbo_per_point(self.vae, self.eval_elbo, val)
        return self.ctx.gather(score)[0] if self.ctx.distributed else score

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
        kept = f"; restored the parameters of epoch {rule.best_epoch} (best {rule.score} {rule.best:.3f})" \
            if self.restored else ""
        self.say(f"stopped after epoch {self.epoch}: {rule.describe()}{kept}")

    def end_epoch(self, train_elbo: float, bar) -> None:
        """Validate, let the stopping rule decide (a new step size; once it stops, the best parameters restored),
        record the epoch's metrics, then checkpoint (before metrics.jsonl, which never runs ahead)."""
        cur, rule = self.current, self.stop_rule
        val_elbo = self.validate()
        self.epoch += 1
        self.seconds += cur["seconds"]
        lr = rule.lr  # the step size this epoch took
        if rule.update(self.epoch, val_elbo, self.seconds) and rule.restore_best:
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
        elif not self.quiet:
            cap = f"/{rule.max_epochs}" if rule.max_epochs else ""
            print(f"epoch {self.epoch:>4}{cap}  train_elbo {train_elbo:10.3f}  "
                  f"val_elbo {val_elbo:10.3f}  {row['examples_per_second']:8.0f} ex/s", flush=True)
        if rule.lr != lr:
            self.set_lr(rule.lr)
            self.say(f"step size {lr:g} -> {rule.lr:g}: no {rule.score} improvement > {rule.min_delta:g} nats "
                     f"in {rule.patience} epochs", bar)
        if rule.stopped and rule.restore_best and self.best is not None:
            self.restore()
        self.save()
        if self.run is not None:
            self.run.write_metrics(self.metrics)
