"""Stopping rules: after each epoch, from the validation ELBO, whether training stops, the next step size, and the best epoch."""

from __future__ import annotations

import inspect
import math
from typing import Any, Dict, Optional


class EpochLimit:
    r"""Train ``max_epochs`` epochs at the step size ``lr``; keep the bookkeeping every rule shares.

    After epoch :math:`t` the Trainer calls :meth:`update` with the validation ELBO :math:`L_t` (nats per
    data point, higher is better). The rule keeps

    - the best epoch :math:`t^* = \arg\max_{s \le t} L_s` (the earliest of equals) and :math:`L_{t^*}`;
      with ``restore_best`` the Trainer ends with that epoch's parameters;
    - the reference :math:`r`, the ELBO of the last *improving* epoch, and ``wait``, the number of epochs
      since it. Epoch :math:`t` improves when

      .. math:: L_t > r + \delta \qquad (\delta = \texttt{min\_delta}),

      so the first finite :math:`L_t` always does (:math:`r = -\infty` at the start) and a NaN never does.

    ``converged`` is ``wait >= patience``: each of the last ``patience`` epochs stayed at or below
    :math:`r + \delta` while the best before them was at least :math:`r`, so together they raised the best
    ELBO by at most :math:`\delta` nats per point. This rule never changes the step size and stops only at
    its caps: ``max_epochs`` epochs (``reason = "max_epochs"``) or, when ``seconds`` is set, once
    :math:`s_t \ge` ``seconds``, :math:`s_t` being the training time of the first :math:`t` epochs
    (``reason = "seconds"``; checked at epoch ends, so the last epoch may run past it). Every rule shares
    these caps.

    The state (:meth:`state_dict`) is plain numbers, so a checkpoint carries it and a resumed run decides as
    the uninterrupted one would. Every decision is a function of the sequence :math:`L_1, L_2, \dots` alone:
    processes that see the same sequence (the ranks under ``torch.distributed``) decide alike.
    """

    name = "epochs"

    def __init__(self, max_epochs: int, lr: float, patience: int = 10, min_delta: float = 0.0,
                 restore_best: bool = True, seconds: Optional[float] = None):
        if seconds is not None and not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError(f"seconds: expected a non-negative finite number, got {seconds!r}")
        if not (isinstance(max_epochs, int) and max_epochs >= 1):
            raise ValueError(f"max_epochs: expected a positive integer, got {max_epochs!r}")
        if not (isinstance(patience, int) and patience >= 1):
            raise ValueError(f"patience: expected a positive integer, got {patience!r}")
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"lr: expected a positive finite number, got {lr!r}")
        if not (math.isfinite(min_delta) and min_delta >= 0):
            raise ValueError(f"min_delta: expected a non-negative finite number, got {min_delta!r}")
        self.max_epochs, self.patience, self.min_delta, self.restore_best = max_epochs, patience, min_delta, restore_best
        self.seconds = seconds  # a cap on training time, or None
        self.lr = lr  # the step size of the next epoch
        self.epoch = 0  # the last epoch recorded
        self.best, self.best_epoch = -math.inf, 0  # best validation ELBO and its epoch (0: none yet)
        self.reference, self.wait = -math.inf, 0  # ELBO of the last improving epoch; epochs since it
        self.reason: Optional[str] = None  # why training stopped; None while it goes on
        self.score = "validation ELBO"  # what update() is given, for messages (compare's rules: its yardstick)

    @property
    def stopped(self) -> bool:
        return self.reason is not None

    @property
    def converged(self) -> bool:
        """The last ``patience`` epochs raised the best validation ELBO by at most ``min_delta``."""
        return self.wait >= self.patience

    def update(self, epoch: int, val_elbo: float, seconds: float = 0.0) -> bool:
        """Record epoch ``epoch``'s validation ELBO and decide; True when it is the best so far (keep its parameters).

        ``seconds`` is the training time spent so far (the Trainer's clock: its steps, not validation); only a
        rule with a time limit reads it."""
        if self.stopped:
            raise RuntimeError(f"update after the rule stopped training ({self.reason} at epoch {self.epoch})")
        self.epoch = epoch
        is_best = val_elbo > self.best
        if is_best:
            self.best, self.best_epoch = float(val_elbo), epoch
        if val_elbo > self.reference + self.min_delta:
            self.reference, self.wait = float(val_elbo), 0
        else:
            self.wait += 1
        limit = self._limit(epoch, seconds)
        self.reason = self._decide(limit is not None) or limit
        return is_best

    def _limit(self, epoch: int, seconds: float) -> Optional[str]:
        """The cap reached after ``epoch`` epochs and ``seconds`` of training (a reason), or None."""
        if self.max_epochs is not None and epoch >= self.max_epochs:
            return "max_epochs"
        return "seconds" if self.seconds is not None and seconds >= self.seconds else None

    @property
    def capped(self) -> bool:
        """Training ended at a cap (epochs or seconds), not by the rule's own verdict."""
        return self.reason in ("max_epochs", "seconds")

    def _decide(self, last: bool) -> Optional[str]:
        """A rule's own decision after the bookkeeping: a reason to stop, or None (and possibly a new ``lr``,
        never after the ``last`` epoch)."""
        return None

    def describe(self) -> str:
        """Why training stopped, in words (for the line the Trainer prints at the end)."""
        if self.reason == "max_epochs":
            return f"reached the cap of {self.max_epochs} epochs"
        return f"reached the cap of {self.seconds:g} s of training" if self.reason == "seconds" else str(self.reason)

    def state_dict(self) -> Dict[str, Any]:
        return {"rule": self.name, "lr": self.lr, "epoch": self.epoch, "best": self.best, "best_epoch": self.best_epoch,
                "reference": self.reference, "wait": self.wait, "reason": self.reason}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        if state["rule"] != self.name:
            raise ValueError(f"the checkpoint's stopping rule is '{state['rule']}', this run's is '{self.name}'")
        self.lr, self.epoch, self.best, self.best_epoch = state["lr"], state["epoch"], state["best"], state["best_epoch"]
        self.reference, self.wait, self.reason = state["reference"], state["wait"], state["reason"]

    def summary(self) -> Dict[str, Any]:
        """Why and where training stopped, for summary.json."""
        return {"rule": self.name, "reason": self.reason, "epoch": self.epoch, "best_epoch": self.best_epoch,
                "best_val_elbo": self.best if self.best_epoch else None, "final_lr": self.lr,
                "patience": self.patience, "min_delta": self.min_delta, "max_epochs": self.max_epochs,
                "seconds": self.seconds}


class Plateau(EpochLimit):
    r"""Reduce the step size on a plateau of the validation ELBO, and stop on a plateau at the floor.

    With the bookkeeping of :class:`EpochLimit` (an improvement is :math:`L_t > r + \delta`), when
    ``wait`` reaches ``patience``:

    - if :math:`\eta > \eta_{min}` (``lr > min_lr``), cut it,

      .. math:: \eta \leftarrow \max(\gamma \eta, \eta_{min}) \qquad (\gamma = \texttt{factor} \in (0, 1)),

      and start ``wait`` again from 0: every step size gets ``patience`` epochs to improve;
    - if :math:`\eta \le \eta_{min}` already, stop (``reason = "plateau"``; then ``converged`` holds).

    So training ends ``patience`` epochs without improvement after the step size reached ``min_lr``, after
    at most :math:`\lceil \log(\eta_{min}/\eta_0) / \log\gamma \rceil` cuts, or at a cap of
    :class:`EpochLimit` (``max_epochs``, ``seconds``), whichever comes first. ``min_lr >= lr`` means no cuts: the first plateau
    stops training (plain early stopping). The reference :math:`r` is kept across a cut, so a cut that
    merely holds the ELBO level does not count as an improvement.

    References: the reduce-on-plateau schedule of ``torch.optim.lr_scheduler.ReduceLROnPlateau``; early
    stopping with restored best weights as in Prechelt, "Early Stopping - But When?" (1998).
    """

    name = "plateau"

    def __init__(self, max_epochs: int, lr: float, patience: int = 10, min_delta: float = 0.0,
                 factor: float = 0.5, min_lr: float = 0.0, restore_best: bool = True, seconds: Optional[float] = None):
        super().__init__(max_epochs, lr, patience, min_delta, restore_best, seconds)
        if not (0.0 < factor < 1.0):
            raise ValueError(f"factor: expected a number in (0, 1), got {factor!r}")
        if not (math.isfinite(min_lr) and min_lr >= 0):
            raise ValueError(f"min_lr: expected a non-negative finite number, got {min_lr!r}")
        self.factor, self.min_lr = factor, min_lr

    def _decide(self, last: bool) -> Optional[str]:
        if self.wait < self.patience:
            return None
        if self.lr <= self.min_lr:
            return "plateau"
        if not last:
            self.lr, self.wait = max(self.lr * self.factor, self.min_lr), 0
        return None

    def describe(self) -> str:
        if self.reason == "plateau":
            return (f"no {self.score} improvement > {self.min_delta:g} nats in {self.patience} epochs "
                    f"at the floor step size {self.lr:g}")
        return super().describe()

    def summary(self) -> Dict[str, Any]:
        return {**super().summary(), "factor": self.factor, "min_lr": self.min_lr}


class BudgetLimit(EpochLimit):
    r"""Train at the fixed step size ``lr`` until a budget is spent: ``max_epochs`` epochs or ``seconds`` of
    training time, whichever comes first (at least one must be set; the caps of :class:`EpochLimit`).

    The validation score is bookkept as by :class:`EpochLimit` (best epoch, ``converged``) but never stops
    training or changes the step size. ``restore_best`` defaults to False: a budgeted method is judged by
    the parameters its budget bought, not by the best epoch on the validation split.
    """

    name = "budget"

    def __init__(self, lr: float, max_epochs: Optional[int] = None, seconds: Optional[float] = None,
                 patience: int = 10, min_delta: float = 0.0, restore_best: bool = False):
        if max_epochs is None and seconds is None:
            raise ValueError("budget: set max_epochs or seconds")
        # EpochLimit checks max_epochs, lr, patience and min_delta; a seconds-only budget has no epoch cap
        super().__init__(1 if max_epochs is None else max_epochs, lr, patience, min_delta, restore_best, seconds)
        self.max_epochs = max_epochs

    def describe(self) -> str:
        if self.reason == "max_epochs":
            return f"spent the budget of {self.max_epochs} epochs"
        return f"spent the budget of {self.seconds:g} s of training" if self.reason == "seconds" else str(self.reason)


RULES = {"epochs": EpochLimit, "plateau": Plateau}  # train.stop -> rule


def build_stopping(train, lr: float) -> EpochLimit:
    """The rule ``train.stop`` names, from the ``train`` config section; ``lr`` is the first step size.
    Each rule takes the keys its constructor names (``lr_factor`` is the plateau rule's ``factor``)."""
    keys = dict(max_epochs=train.epochs, lr=lr, patience=train.patience, min_delta=train.min_delta,
                factor=train.lr_factor, min_lr=train.min_lr, restore_best=train.restore_best)
    rule = RULES[train.stop]
    return rule(**{k: v for k, v in keys.items() if k in inspect.signature(rule).parameters})
