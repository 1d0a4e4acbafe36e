"""Stopping rules: hand-computed decisions on synthetic ELBO sequences, their state, and the Trainer ending on the best epoch."""

import copy
import io
import json
import math

import pytest
import torch

from pyro_vae import load_config, train_run
from pyro_vae.errors import ConfigError
from pyro_vae.rundir import RunDir
from pyro_vae.training.stopping import BudgetLimit, EpochLimit, Plateau, build_stopping
from pyro_vae.training.summary import summarize
from pyro_vae.training.trainer import Trainer
from pyro_vae.build import prepare

TINY = ["data.name=synthetic", "data.n=300", "data.x_dim=6", "model.decoder.hidden=[8]", "guide.hidden=[8]",
        "train.batch_size=32", "train.engine=fused"]


def run(rule, sequence):
    """Feed ``sequence`` to ``rule`` until it stops; the step size each epoch took, and the epochs it recorded."""
    lrs = []
    for epoch, value in enumerate(sequence, start=1):
        lrs.append(rule.lr)
        rule.update(epoch, value)
        if rule.stopped:
            break
    return lrs


def test_plateau_cuts_and_stops_where_hand_computed():
    """patience 3, min_delta 0.5, lr 1 -> 0.5 -> 0.25 (the floor). An improvement must beat the last improving
    epoch's ELBO by more than 0.5: epochs 3-5 (1.2, 1.4, 1.5 against 1 + 0.5) do not, so after epoch 5 the step
    size is cut; 1.6 (epoch 6) does; epochs 7-9 do not: the second cut; epochs 10-12 creep to a new best (2.1)
    but never above 1.6 + 0.5, so at the floor the third plateau stops training after epoch 12."""
    rule = Plateau(max_epochs=100, lr=1.0, patience=3, min_delta=0.5, factor=0.5, min_lr=0.25)
    sequence = [0.0, 1.0, 1.2, 1.4, 1.5, 1.6, 1.0, 1.0, 1.0, 2.0, 2.1, 2.0, 9.0, 9.0]
    lrs = run(rule, sequence)
    assert lrs == [1.0] * 5 + [0.5] * 4 + [0.25] * 3
    assert rule.reason == "plateau" and rule.epoch == 12 and rule.converged
    assert (rule.best_epoch, rule.best) == (11, 2.1)
    assert rule.lr == 0.25 and rule.summary()["final_lr"] == 0.25


def test_the_last_cut_is_clamped_to_the_floor():
    rule = Plateau(max_epochs=100, lr=1.0, patience=1, min_delta=0.0, factor=0.3, min_lr=0.05)
    lrs = run(rule, [5.0] * 10)  # epoch 1 improves (on -inf); every later one is a plateau of patience 1
    assert lrs == pytest.approx([1.0, 1.0, 0.3, 0.09, 0.05])  # 0.09 * 0.3 = 0.027 is clamped to 0.05
    assert rule.reason == "plateau" and rule.epoch == 5 and rule.best_epoch == 1


def test_min_lr_at_or_above_lr_is_plain_early_stopping():
    rule = Plateau(max_epochs=100, lr=0.01, patience=2, min_delta=0.0, min_lr=0.01)
    assert run(rule, [1.0, 2.0, 2.0, 1.5, 7.0]) == [0.01] * 4
    assert rule.reason == "plateau" and rule.epoch == 4 and rule.best_epoch == 2


@pytest.mark.parametrize("min_delta,converged", [(0.5, False), (0.75, True)])
def test_min_delta_is_measured_from_the_last_improving_epoch(min_delta, converged):
    """A creep of 0.25 a point per epoch: with min_delta 0.5 every third epoch beats the reference (0.75 > 0 + 0.5),
    so three epochs never pass without an improvement; with 0.75 it never does (0.75 > 0.75 is false)."""
    rule = EpochLimit(max_epochs=4, lr=1e-3, patience=3, min_delta=min_delta)
    run(rule, [0.0, 0.25, 0.5, 0.75])
    assert rule.reason == "max_epochs" and rule.best_epoch == 4
    assert rule.converged is converged and rule.wait == (0 if not converged else 3)


def test_nan_never_improves_and_no_cut_after_the_last_epoch():
    rule = Plateau(max_epochs=4, lr=1.0, patience=2, min_delta=0.0, factor=0.5, min_lr=0.1)
    assert run(rule, [1.0, float("nan"), float("nan"), float("nan")]) == [1.0, 1.0, 1.0, 0.5]
    assert rule.reason == "max_epochs" and rule.best_epoch == 1 and rule.lr == 0.5  # epoch 4 made no cut
    with pytest.raises(RuntimeError, match="after the rule stopped"):
        rule.update(5, 2.0)


def test_state_dict_round_trip_continues_identically():
    """A rule rebuilt from its state (through torch.save with weights_only, as in a checkpoint) decides as the original."""
    sequence = [0.0, 1.0, 1.2, 1.4, 1.5, 1.6, 1.0, 1.0, 1.0, 2.0, 2.1, 2.0]
    make = lambda: Plateau(max_epochs=100, lr=1.0, patience=3, min_delta=0.5, factor=0.5, min_lr=0.25)
    whole, first = make(), make()
    run(whole, sequence)
    run(first, sequence[:7])
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    second = make()
    second.load_state_dict(torch.load(io.BytesIO(buffer.getvalue()), weights_only=True))
    for epoch, value in enumerate(sequence[7:], start=8):
        second.update(epoch, value)
    assert second.state_dict() == whole.state_dict() and second.reason == "plateau"
    with pytest.raises(ValueError, match="'plateau', this run's is 'epochs'"):
        EpochLimit(10, 1e-3).load_state_dict(whole.state_dict())


@pytest.mark.parametrize("kwargs,match", [({"factor": 1.0}, "factor"), ({"factor": 0.0}, "factor"),
                                          ({"min_lr": -1.0}, "min_lr"), ({"min_delta": -0.1}, "min_delta"),
                                          ({"patience": 0}, "patience"), ({"lr": float("nan")}, "lr")])
def test_nonsense_rules_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Plateau(**{"max_epochs": 10, "lr": 1e-3, **kwargs})


@pytest.mark.parametrize("key,value", [("lr_factor", 1), ("lr_factor", 0), ("lr_factor", 1.5), ("min_delta", -1),
                                       ("patience", 0), ("min_lr", -1e-4), ("stop", "never")])
def test_config_refuses_nonsense(key, value):
    with pytest.raises(ConfigError, match=f"train.{key}"):
        load_config(None, [f"train.{key}={value}"])


def test_build_stopping_follows_the_config():
    cfg = load_config(None, ["train.stop=epochs", "train.epochs=7", "optim.lr=0.02"])
    rule = build_stopping(cfg.train, cfg.optim.lr)
    assert type(rule) is EpochLimit and (rule.max_epochs, rule.lr, rule.patience) == (7, 0.02, cfg.train.patience)
    rule = build_stopping(load_config(None, ["train.lr_factor=0.25"]).train, 1e-3)
    assert type(rule) is Plateau and rule.factor == 0.25


EARLY = TINY + ["train.epochs=200", "optim.lr=0.05", "train.patience=2", "train.min_delta=0", "train.min_lr=0.02",
                "train.lr_factor=0.5"]


class LastKept(Trainer):
    """A Trainer that keeps a copy of the last epoch's parameters before restoring the best ones."""

    def restore(self):
        self.last = copy.deepcopy(self.vae.state_dict())
        super().restore()


def test_training_ends_on_the_best_epoch():
    """Early stopping with min_delta 0 stops only after ``patience`` epochs below the best, so restoring matters:
    the run ends on the best epoch's parameters, whose validation ELBO is exactly the recorded best (the
    validation draws are seeded); the step size went 0.05 -> 0.025 -> 0.02 (0.0125 clamped to the floor)."""
    cfg = load_config(None, EARLY)
    data, vae = prepare(cfg)
    trainer = LastKept.from_config(cfg, data, vae, progress=False)
    trainer.fit()
    rule = trainer.stop_rule
    assert rule.reason == "plateau" and rule.best_epoch <= trainer.epoch - 2 and trainer.epoch < 200
    assert any(not torch.equal(trainer.last[k], v) for k, v in vae.state_dict().items())  # restoring changed them
    assert trainer.restored and trainer.validate() == rule.best == trainer.metrics[rule.best_epoch - 1]["val_elbo"]
    lrs = [row["lr"] for row in trainer.metrics]
    assert lrs[0] == 0.05 and sorted(set(lrs)) == [0.02, 0.025, 0.05] and lrs == sorted(lrs, reverse=True)
    assert lrs[-1] == 0.02 == trainer.optimizer.param_groups[0]["lr"]  # the rule's step size is Adam's
    summary = summarize(trainer)
    assert summary["converged"] is True and summary["epochs"] == trainer.epoch
    assert summary["stopped"] == {**rule.summary(), "restored_best": True}
    assert summary["val_elbo"] == rule.best


def test_run_directory_records_why_and_where_training_stopped(tmp_path):
    result = train_run(load_config(None, EARLY), tmp_path / "run", progress=False)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    stopped = summary["stopped"]
    assert summary["converged"] is True and stopped["reason"] == "plateau" and stopped["restored_best"] is True
    assert {"epoch", "best_epoch", "best_val_elbo", "final_lr"} <= set(stopped) and stopped["final_lr"] == 0.02
    assert summary["val_elbo"] == stopped["best_val_elbo"] == result.metrics[stopped["best_epoch"] - 1]["val_elbo"]
    assert all("lr" in row for row in RunDir(tmp_path / "run").read_metrics())
    state = RunDir(tmp_path / "run").load_checkpoint(quiet=True)
    assert state["finished"] and state["restored"] and state["stopping"]["reason"] == "plateau"
    assert all(torch.equal(state["vae"][k], v) for k, v in result.vae.state_dict().items())  # what load_run reads


def test_stop_epochs_without_restore_keeps_the_last_epoch(tmp_path):
    cfg = load_config(None, TINY + ["train.stop=epochs", "train.epochs=3", "train.restore_best=false"])
    result = train_run(cfg, tmp_path / "run", progress=False)
    s = result.summary
    assert s["epochs"] == 3 and s["stopped"]["reason"] == "max_epochs" and s["stopped"]["restored_best"] is False
    assert s["val_elbo"] == result.metrics[-1]["val_elbo"] and isinstance(s["converged"], bool)
    assert [row["lr"] for row in result.metrics] == [cfg.optim.lr] * 3
    assert math.isfinite(s["stopped"]["best_val_elbo"])


def test_budget_stops_at_its_epochs_or_its_seconds_whichever_comes_first():
    """The budget reads the training clock the Trainer passes: after 2.5 s of training at epoch 3 a 2 s budget
    is spent; an epoch cap of 2 ends training first when it comes first. The ELBO never stops it."""
    timed = BudgetLimit(1e-3, max_epochs=10, seconds=2.0)
    for epoch, (value, clock) in enumerate([(1.0, 0.9), (0.0, 1.8), (-5.0, 2.5)], start=1):
        assert not timed.stopped
        timed.update(epoch, value, clock)
    assert timed.reason == "seconds" and timed.epoch == 3 and timed.best_epoch == 1 and timed.lr == 1e-3
    assert timed.describe() == "spent the budget of 2 s of training"
    capped = BudgetLimit(1e-3, max_epochs=2, seconds=2.0)
    run(capped, [1.0, 2.0, 3.0])
    assert capped.reason == "max_epochs" and capped.epoch == 2 and not capped.restore_best
    only_time = BudgetLimit(1e-3, seconds=0.0)  # no epoch cap; one epoch always trains
    only_time.update(1, 0.0, 0.0)
    assert only_time.reason == "seconds" and only_time.summary()["max_epochs"] is None
    for bad in ({}, {"seconds": -1.0}, {"max_epochs": 0}):
        with pytest.raises(ValueError):
            BudgetLimit(1e-3, **bad)


def test_a_trainer_stops_on_its_own_training_clock():
    """With a time budget of ~0 s the Trainer trains exactly one epoch and records its seconds, which leave out
    validation: the wall time of the epoch row is the time of its steps."""
    cfg = load_config(None, TINY)
    data, vae = prepare(cfg)
    trainer = Trainer.from_config(cfg, data, vae, stopping=BudgetLimit(cfg.optim.lr, seconds=1e-9), quiet=True)
    rows = trainer.fit()
    assert len(rows) == 1 and trainer.stop_rule.reason == "seconds" and not trainer.restored
    assert trainer.seconds == rows[0]["wall_time"] == rows[0]["seconds"] > 0


def test_plateau_with_a_time_cap_stops_at_the_cap_and_is_not_converged():
    """The caps are shared: a plateau rule given seconds stops at the first epoch end past them, reason
    ``seconds``, ``capped`` (not the rule's own verdict), even when its last epochs happen to sit on a plateau."""
    rule = Plateau(max_epochs=100, lr=1.0, patience=2, min_delta=0.0, factor=0.5, min_lr=0.1, seconds=3.0)
    for epoch, (value, clock) in enumerate([(1.0, 1.0), (2.0, 2.0), (2.0, 2.9), (2.0, 3.1)], start=1):
        assert not rule.stopped
        rule.update(epoch, value, clock)
    assert rule.reason == "seconds" and rule.capped and rule.epoch == 4 and rule.best_epoch == 2
    assert rule.lr == 1.0  # no cut at the epoch that ended training
    assert rule.describe() == "reached the cap of 3 s of training"
    assert rule.summary()["seconds"] == 3.0
    done = Plateau(max_epochs=100, lr=1.0, patience=1, min_delta=0.0, min_lr=1.0, seconds=100.0)
    run(done, [1.0, 1.0])
    assert done.reason == "plateau" and done.converged and not done.capped
    with pytest.raises(ValueError):
        Plateau(max_epochs=10, lr=1.0, seconds=-1.0)


def test_a_known_plateau_stops_where_the_patience_says_and_keeps_the_best():
    """A curve that rises to a known plateau, L_t = 1 - 2^-t for t <= 6 then flat at L_6 = 0.984375: with
    min_delta 0.05 the epochs after t = 4 (gains 0.03, 0.016, then 0) never improve on L_4 + 0.05, so with
    patience 3 and no cuts (min_lr = lr) training stops at epoch 4 + 3 = 7, keeping epoch 6 (the best)."""
    rule = Plateau(max_epochs=50, lr=0.1, patience=3, min_delta=0.05, min_lr=0.1)
    curve = [1 - 2.0 ** -min(t, 6) for t in range(1, 51)]
    run(rule, curve)
    assert rule.reason == "plateau" and rule.epoch == 7 and rule.converged and not rule.capped
    assert rule.best_epoch == 6 and rule.best == pytest.approx(0.984375)
