r"""Train R replicas of one config (seeds, and per replica beta, step size or stopping rule) in one vectorized step.

Replica :math:`r` is the single run of its own config :math:`c_r` (seed :math:`s_r`) on the shared data, and
:class:`ReplicaTrainer` keeps every part of that run but the arithmetic of the step. Each replica *is* a
:class:`~pyro_vae.training.trainer.Trainer` built by :meth:`Trainer.from_config` for :math:`c_r`: its own stopping
rule, data order and binarization streams (``begin_epoch``), beta warm-up, validation, best-epoch copy and
restore, metrics rows and checkpoint state. Its VAE's parameters and Adam moments are views into tensors stacked
along a leading replica dimension :math:`(R, \dots)`, one step of :math:`R` replicas being

.. math:: \theta_r \leftarrow \mathrm{Adam}_r\Big(\nabla_{\theta_r} \textstyle\sum_{r'} \ell_{r'}(x_{r'}, \beta_{r'})
          / B\Big) = \mathrm{Adam}_r\big(\nabla_{\theta_r} \ell_r(x_r, \beta_r) / B\big),

the replicas sharing no arithmetic (every product is one replica's slice of a batched one), so the sum's
gradient is each replica's own and a NaN stays in its replica.

**Equal to the single run, up to float rounding**: the initial parameters are
:func:`~pyro_vae.build.build_seeded`'s for :math:`s_r`; the minibatches are the ones the replica's own Trainer
draws; the standard variates of :math:`z` come from a generator per replica that starts where the single
run's global stream stands after its build and is read in the same order and shapes, given to the loss as
``eps`` (:func:`~pyro_vae.inference.elbo.rsample_normal`); Adam is torch's fused kernel with each element's
arithmetic the single run's (:mod:`pyro_vae.training.stacked`). What differs is the kernels: a batched
product (``baddbmm``/``bmm``) in place of ``addmm``/``mm``, and elementwise functions over a stacked tensor in
which a replica's slice may start inside a SIMD vector (where ``tanh``, ``log``, ``softplus`` round apart
from their scalar tail loops). Observed on one MKL thread (AVX-512): full batches of 32, 64 or 128 rows at
6-8-2, 64-64-2 and 784-400-50 give bit-for-bit the single run's gradients and steps; another batch size
(an epoch's short last batch) differs by ~1e-7 relative, so whole runs agree to ~1e-6 (the tests check
1e-4 relative). A stopping rule then sees validation scores that differ at that level, which changes a
decision only if a score lands within rounding of its threshold.

Scope: the fused engine's stock ELBO (``objective: elbo``, ``estimator: reparam``, ``kl: analytic``, any
``num_particles``), the ``mean_field`` guide, the ``mlp`` or ``linear`` decoder, a parameter-free prior that
declares ``kl_from_normal`` (its hook vmapped) and a likelihood without learned parameters that has a closed
``log_prob``. :func:`unsupported_reason` names what else a config asks for, for callers to train those runs
one after another and say so. Validation runs replica by replica (each replica's own Trainer), as in
:math:`R` single runs.

A stopped replica leaves the stack (its parameters are then its own, frozen); one whose loss or gradient is
not finite is reported by index and seed (:attr:`ReplicaTrainer.failures`) and leaves it too (or, with
``on_nonfinite: skip``, skips that step alone). Each replica writes the checkpoint its single run would
(its z stream as the ``torch`` state), so :meth:`ReplicaTrainer.resume` continues exactly, and so does
``pyro-vae resume`` of that one run on the CPU.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import pyro
import torch

from pyro_vae.build import build_seeded
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.model import VAE
from pyro_vae.training.guards import NonFiniteError, SignalCatcher, grads_finite, interrupted, nonfinite_step
from pyro_vae.training.stacked import Stack, StackedELBO, architecture_reason
from pyro_vae.training.state import RunFiles, rng_state, set_rng_state
from pyro_vae.training.stopping import EpochLimit
from pyro_vae.training.trainer import Trainer

# config keys replicas may differ in (the rest is one architecture, objective, data and batch size)
REPLICA_KEYS = ("seed", "inference.beta", "inference.kl_warmup_epochs", "optim.lr", "optim.clip_norm",
                "train.epochs", "train.stop", "train.patience", "train.min_delta", "train.lr_factor", "train.min_lr",
                "train.restore_best", "train.on_nonfinite")


def unsupported_reason(configs: Sequence[Config], vae: Optional[VAE] = None) -> Optional[str]:
    """Why these configs cannot train as stacked replicas (``None``: they can); with ``vae`` (one replica's model)
    the architecture is checked too. The caller then trains them one after another, and should say so."""
    if not configs:
        return "no replicas"
    first = _flat(configs[0].to_dict())
    for r, cfg in enumerate(configs[1:], 1):
        other = _flat(cfg.to_dict())
        keys = sorted(k for k in first.keys() | other.keys() if first.get(k) != other.get(k) and k not in REPLICA_KEYS)
        if keys:
            return (f"replica {r} differs from replica 0 in {', '.join(keys)} "
                    f"(replicas may differ in {', '.join(REPLICA_KEYS)})")
    train, inf = configs[0].train, configs[0].inference
    if train.engine == "pyro":
        return "train.engine=pyro (replicas stack the fused loss)"
    if train.compile:
        return "train.compile=true (the replica step is not compiled)"
    if train.validate_args:
        return "train.validate_args=true (Pyro's argument checks do not run on stacked replicas)"
    if (inf.objective, inf.estimator, inf.kl) != ("elbo", "reparam", "analytic"):
        return (f"inference.objective={inf.objective}, estimator={inf.estimator}, kl={inf.kl} "
                f"(replicas cover elbo, reparam, analytic)")
    return None if vae is None else architecture_reason(vae)


def build_replica(cfg: Config, data: Dataset, device: Optional[torch.device] = None) -> Tuple[VAE, torch.Generator]:
    """The VAE of ``cfg`` as its single run builds it (:func:`build_seeded`), and a generator in the state the
    global stream (the device's: the CPU's or CUDA's) has after that build: the single run's z stream."""
    vae = build_seeded(cfg, data, device)
    dev = vae.device
    stream = torch.Generator(device=dev)
    stream.set_state(torch.cuda.get_rng_state(dev) if dev.type == "cuda" else torch.get_rng_state())
    return vae, stream


class ReplicaTrainer:
    """Trains ``replicas`` (one :class:`Trainer` each, as :meth:`from_configs` builds them) in stacked steps; the
    module docstring says how each equals its single run. ``noise[r]`` is replica r's z stream, ``runs[r]`` where
    it checkpoints (None: nowhere). :attr:`failures` maps a replica that hit a non-finite step to the message."""

    def __init__(self, replicas: Sequence[Trainer], noise: Sequence[torch.Generator],
                 runs: Optional[Sequence[Optional[RunFiles]]] = None, quiet: bool = False,
                 cpu_streams: Optional[Sequence[torch.Tensor]] = None):
        self.replicas, self.noise = list(replicas), list(noise)
        self.cpu_streams = list(cpu_streams) if cpu_streams is not None else None  # the CPU stream after each build
        self.runs = list(runs) if runs is not None else [None] * len(self.replicas)
        template = self.replicas[0]
        self.device, self.batch_size = template.device, template.batch_size
        self.latent_dim = template.vae.latent_dim
        self.model = StackedELBO(template.vae, template.config.inference.num_particles)
        self.failures: Dict[int, str] = {}
        self.quiet = quiet
        self.signals = SignalCatcher(checkpoints=any(run is not None for run in self.runs))
        self.rows: List[int] = []  # the replicas in the stack (still training), in stack order
        self.stack: Optional[Stack] = None
        self.restack()

    @classmethod
    def from_configs(cls, configs: Sequence[Config], data: Union[Dataset, Sequence[Dataset]], *,
                     runs: Optional[Sequence[Optional[RunFiles]]] = None,
                     stopping: Optional[Sequence[EpochLimit]] = None,
                     validation: Optional[Sequence[Callable[[VAE], float]]] = None,
                     device: Optional[torch.device] = None, quiet: bool = False) -> "ReplicaTrainer":
        """One replica per config, each the Trainer of :meth:`Trainer.from_config` on :func:`build_replica`'s VAE,
        with ``stopping[r]`` (default: its config's rule) and ``validation[r](vae)`` as its validation score
        (default: the validation ELBO). ``data`` is every replica's, or one per replica (``pyro-vae train
        --seeds``: each seed's own split; equal ones share one copy). A config the replicas cannot cover is a
        ConfigError naming why."""
        reason = unsupported_reason(configs)
        datasets = [data] * len(configs) if isinstance(data, Dataset) else list(data)
        if len(datasets) != len(configs):
            raise ValueError(f"replicas: {len(datasets)} datasets for {len(configs)} configs")
        datasets = [d if r == 0 or d is datasets[0] or not _same_data(d, datasets[0]) else datasets[0]
                    for r, d in enumerate(datasets)]
        replicas, noise, cpu_streams = [], [], []
        for r, (cfg, ds) in enumerate(zip(configs, datasets)):
            if reason is not None:
                break
            vae, stream = build_replica(cfg, ds, device)
            cpu_streams.append(torch.get_rng_state())
            reason = architecture_reason(vae) if r == 0 else None
            score = (lambda f, v: lambda: f(v))(validation[r], vae) if validation is not None else None
            t = Trainer.from_config(cfg, ds, vae, progress=False, quiet=True, validation=score,
                                    stopping=stopping[r] if stopping is not None else None)
            if t.ctx.distributed or not t.optimizer.defaults.get("fused"):
                reason = "torch.distributed" if t.ctx.distributed else f"no fused Adam on {t.device}"
            replicas.append(t)
            noise.append(stream)
        if reason is not None:
            raise ConfigError(f"replicas: cannot stack {reason}; train these runs one after another")
        return cls(replicas, noise, runs, quiet, cpu_streams)

    # -- the stack ---------------------------------------------------------------------------
    def restack(self) -> None:
        """Stack the parameters and Adam state of the replicas still training (:class:`Stack`); a replica leaving
        the stack keeps copies of its own, frozen from then on."""
        rows = [r for r, t in enumerate(self.replicas) if not t.stop_rule.stopped and r not in self.failures]
        for r in set(self.rows) - set(rows):
            Stack.release(self.replicas[r].vae, self.replicas[r].optimizer)
        self.rows = rows
        self.stack = Stack([(self.replicas[r].vae, self.replicas[r].optimizer) for r in rows]) if rows else None

    def step(self, x: torch.Tensor, rows: torch.Tensor) -> Tuple[torch.Tensor, List[bool]]:
        """One step of the stacked replicas on ``x`` ``(R, B, x_dim)`` (``rows``: their rows of ``data.train``);
        returns the loss per point ``(R,)`` and, per replica, whether its step was taken."""
        stack = self.stack
        # replicas share no arithmetic: the sum's gradient (in stack.P[i].grad) is each one's own
        losses = self.model.loss_and_grad(stack.P, x, self.draw(x.shape[1]), self.kl_weights())
        values = losses.tolist()  # the one host read of the step, as the Trainer's loss.item()
        bad = {j: f"the loss is {v}" for j, v in enumerate(values) if not math.isfinite(v)}
        if len(bad) < len(values) and not grads_finite(stack.P):
            for j, name in stack.bad_gradients(self.model.names).items():
                bad.setdefault(j, f"the gradient of {name} is not finite")
        for j, what in bad.items():
            self.nonfinite(j, x[j], rows[j], what)
        ok = [j not in bad for j in range(len(values))]
        for j, r in enumerate(self.rows):
            clip = self.replicas[r].clip_norm
            if clip is not None and ok[j]:  # the Trainer's clip_grad_norm_, on this replica's slices of the gradients
                params = list(self.replicas[r].vae.parameters())
                for p, stacked in zip(params, stack.P):
                    p.grad = stacked.grad[j]
                torch.nn.utils.clip_grad_norm_(params, clip)
                for p in params:
                    p.grad = None
        stack.adam_step(ok, [self.replicas[r].optimizer.param_groups[0]["lr"] for r in self.rows])
        return losses, ok

    def draw(self, batch: int) -> torch.Tensor:
        """Each replica's standard variates of z, ``(R, [K,] B, latent_dim)``, from its own stream."""
        K = self.model.num_particles
        shape = (K, batch, self.latent_dim) if K > 1 else (batch, self.latent_dim)
        eps = torch.empty((len(self.rows), *shape), device=self.device)
        for j, r in enumerate(self.rows):
            eps[j].normal_(generator=self.noise[r])
        return eps

    def kl_weights(self) -> Optional[torch.Tensor]:
        """Each replica's beta this step, ``(R,)``, or None when every one is 1 (no product, as the fused loss)."""
        weights = [self.replicas[r].kl_weight() for r in self.rows]
        return None if all(w == 1.0 for w in weights) else torch.tensor(weights, device=self.device)

    def nonfinite(self, j: int, x: torch.Tensor, rows: torch.Tensor, what: str) -> None:
        """Replica ``rows[j]``'s step is not finite: diagnose it on its own VAE, then skip that step or (``stop``)
        record the failure, naming the replica by index and seed; the others go on."""
        r = self.rows[j]
        t, run = self.replicas[r], self.runs[r]
        where = f"replica {r} (seed {t.seed}) step {t.step + 1} (epoch {t.epoch + 1})"
        try:
            nonfinite_step(t.vae, x, rows, what, where, skip=t.on_nonfinite == "skip", announce=not self.quiet,
                           checkpoint=run.checkpoint if run is not None else None)
        except NonFiniteError as err:
            self.fail(r, str(err))

    def fail(self, r: int, message: str) -> None:
        self.failures[r] = message
        if not self.quiet:
            print(f"pyro-vae: {message}; the other replicas go on", file=sys.stderr, flush=True)

    # -- the loop ----------------------------------------------------------------------------
    def fit(self) -> List[List[Dict[str, Any]]]:
        """Train until every replica has stopped (or failed); returns each replica's metrics rows."""
        with self.signals.catching(), warnings.catch_warnings(), pyro.validation_enabled(False):
            warnings.filterwarnings("ignore", "Encountered NaN", UserWarning)
            while self.rows:
                while self.rows and not self.run_batches():
                    pass  # a replica failed mid-epoch and left the stack: go on with the others
                if self.rows:
                    self.end_epoch()
                if self.signals.received is not None:
                    raise interrupted(self.signals.received, f"the end of epoch {self.replicas[0].epoch}")
        for r, t in enumerate(self.replicas):
            rule = t.stop_rule
            kept = f"; restored the parameters of epoch {rule.best_epoch}" if t.restored else ""
            self.say(f"replica {r} (seed {t.seed}): " + ("failed at a non-finite step" if r in self.failures else
                                                          f"stopped after epoch {t.epoch}: {rule.describe()}{kept}"))
        return [t.metrics for t in self.replicas]

    def run_batches(self) -> bool:
        """The rest of the current epoch of every replica in the stack (starting one where none is in progress);
        False if a replica failed and the stack changed before the epoch's end."""
        reps = [self.replicas[r] for r in self.rows]
        for t in reps:
            if t.current is None:
                t.begin_epoch()
        one = reps[0].data.binarize != "dynamic" and all(t.data is reps[0].data for t in reps)
        if one:
            for t in reps[1:]:
                t._x = reps[0]._x  # one copy of the training data on the device, not one per replica
        shared = reps[0]._x if one else None
        batches = torch.stack([t.current["perm"] for t in reps]).split(self.batch_size, dim=1)  # each (R, B)
        totals = torch.stack([t.current["total"].to(self.device) for t in reps])  # (R,) sums of minus the objective
        start, seconds0 = time.perf_counter(), [t.current["seconds"] for t in reps]
        every = reps[0].checkpoint_every_steps
        for b in range(reps[0].current["batch"], len(batches)):
            idx = batches[b]
            x = shared.index_select(0, idx.flatten()).view(*idx.shape, -1) if shared is not None else \
                torch.stack([t._x[i] for t, i in zip(reps, idx)])
            losses, ok = self.step(x, idx)
            n = idx.shape[1]
            added = totals + losses * n  # per replica the Trainer's total + loss * len(batch)
            totals = added if all(ok) else torch.where(torch.tensor(ok, device=self.device), added, totals)
            for t, good in zip(reps, ok):
                t.current["batch"] += 1
                t.step += 1
                if good:
                    t.current["points"] += n
                else:
                    t.current["skipped"] += 1
            failed = any(r in self.failures for r in self.rows)
            signal = self.signals.received is not None
            if failed or signal or (every and reps[0].step % every == 0 and b + 1 < len(batches)):
                for t, total, s0 in zip(reps, totals, seconds0):
                    t.current.update(total=total.clone(), seconds=s0 + time.perf_counter() - start)
                if failed:
                    self.restack()
                    return False
                self.save()
                if signal:
                    raise interrupted(self.signals.received, f"step {reps[0].step} (epoch {reps[0].epoch + 1})")
        for t, total, s0 in zip(reps, totals, seconds0):
            t.current.update(total=total.clone(), seconds=s0 + time.perf_counter() - start)
        return True

    def end_epoch(self) -> None:
        """Each replica's own end of epoch (validation, its rule, metrics, best epoch), its checkpoint, one line."""
        epoch_rows = list(self.rows)
        for r in epoch_rows:
            t = self.replicas[r]
            if t.current["points"] == 0:
                self.fail(r, f"replica {r} (seed {t.seed}): epoch {t.epoch + 1}: every step was non-finite and skipped")
                continue
            t.vae.kl_weight = 1.0
            pyro.clear_param_store()  # the replicas' Pyro modules share names; the store is only their registry
            t.end_epoch(-float(t.current["total"]) / t.current["points"], None)
            self.save(r)
            if self.runs[r] is not None:
                self.runs[r].write_metrics(t.metrics)
        rows = [self.replicas[r].metrics[-1] for r in epoch_rows if r not in self.failures]
        if rows:
            vals = [row["val_elbo"] for row in rows]
            rate = sum(row["examples_per_second"] for row in rows)
            self.say(f"epoch {rows[0]['epoch']:>4}  {len(rows)} replicas  val_elbo {min(vals):.3f} .. {max(vals):.3f}  "
                     f"{rate:8.0f} ex/s (all replicas)")
        self.restack()

    def say(self, message: str) -> None:
        if not self.quiet:
            print(message, flush=True)

    def single_run_streams(self, r: int) -> None:
        """Set torch's global streams where replica ``r``'s single run leaves them after training (for what draws
        next: a test ELBO, IWAE bounds): the device's is its z stream; on CUDA the CPU's is where its build left it."""
        if self.device.type == "cpu":
            torch.set_rng_state(self.noise[r].get_state())
            return
        torch.cuda.set_rng_state(self.noise[r].get_state(), self.device)
        if self.cpu_streams is not None:
            torch.set_rng_state(self.cpu_streams[r])

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, r: Optional[int] = None) -> None:
        """Replica ``r``'s checkpoint (default: every training replica's): its single run's, the z stream as its
        ``torch`` state (on the CPU, where the single run draws z from torch's global stream) and as ``noise``."""
        for k in self.rows if r is None else [r]:
            if self.runs[k] is None or k in self.failures:
                continue
            state = self.replicas[k].state()
            state["rng"]["noise"] = self.noise[k].get_state()
            if self.device.type == "cpu":
                state["rng"]["torch"] = state["rng"]["noise"]
            self.runs[k].save_checkpoint(_compact(state))

    def load_states(self, states: Sequence[Optional[Dict[str, Any]]]) -> None:
        """Continue each replica from its checkpoint ``states[r]`` (None: from the start); torch's global stream is
        left as it was."""
        global_state = rng_state({})
        for r, state in enumerate(states):
            if state is not None:
                self.replicas[r].load_state(state)
                self.noise[r].set_state(state["rng"].get("noise", state["rng"]["torch"]))
        set_rng_state(global_state, {})
        self.restack()

    def resume(self) -> None:
        """:meth:`load_states` from each replica's run directory (``runs[r].load_checkpoint``)."""
        self.load_states([run.load_checkpoint(quiet=True) if run is not None else None for run in self.runs])

    def bytes_per_replica(self) -> Dict[str, int]:
        """Memory one replica holds in the stack: parameters, gradients and Adam's two moments, in bytes."""
        n = sum(p.numel() * p.element_size() for p in self.replicas[0].vae.parameters())
        return {"parameters": n, "gradients": n, "adam": 2 * n, "total": 4 * n}


def _compact(obj: Any) -> Any:
    """``obj`` with every tensor that views a larger storage (a replica's slice of the stack) copied out, so a
    replica's checkpoint holds its own numbers and not the whole stack."""
    if isinstance(obj, torch.Tensor):
        return obj.clone() if obj.untyped_storage().nbytes() != obj.numel() * obj.element_size() else obj
    if isinstance(obj, dict):
        out = type(obj)((k, _compact(v)) for k, v in obj.items())
        if hasattr(obj, "_metadata"):  # a state dict's module versions
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_compact(v) for v in obj)
    return obj


def _same_data(a: Dataset, b: Dataset) -> bool:
    """Whether two datasets hold the same splits and labels (then the replicas share one copy)."""
    pairs = [*zip(a.splits().values(), b.splits().values()), *((a.labels.get(k), b.labels.get(k)) for k in
                                                                {*a.labels, *b.labels})]
    return a.binarize == b.binarize and all(u is v or (u is not None and v is not None and u.shape == v.shape
                                                       and torch.equal(u, v)) for u, v in pairs)


def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out
