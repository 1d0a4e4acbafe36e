"""The Trainer's step: the gradient guard, and a step that equals the plain PyTorch step on the same loss."""

import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.inference.elbo import fused_elbo_loss
from pyro_vae.training.trainer import Trainer
from pyro_vae.training.guards import grads_finite
from pyro_vae.build import prepare

TINY = {"data": {"name": "synthetic", "x_dim": 6, "n": 96}, "model": {"decoder": {"hidden": [8]}},
        "guide": {"hidden": [8]}, "train": {"epochs": 1, "batch_size": 32, "engine": "fused"}}


def grads_of(*values):
    out = []
    for v in values:
        p = torch.nn.Parameter(torch.zeros(4))
        p.grad = torch.tensor([0.0, -1.5, 3e38, v])
        out.append(p)
    return out


def test_grads_finite_leaves_gradients_bitwise_unchanged():
    """The check runs AMP's unscale kernel with a factor of 1: the gradients Adam then reads must be untouched
    (subnormals and -0.0 included)."""
    params = grads_of(1e-40, -0.0, 2.5)
    before = [p.grad.clone() for p in params]
    assert grads_finite(params)
    for p, b in zip(params, before):
        assert torch.equal(p.grad, b) and torch.equal(p.grad.signbit(), b.signbit())


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_grads_finite_finds_one_bad_element_in_any_tensor(bad):
    for where in range(3):
        values = [1.0, 1.0, 1.0]
        values[where] = bad
        assert not grads_finite(grads_of(*values))


def test_grads_finite_without_the_fused_kernel_falls_back_elementwise(monkeypatch):
    def missing(*args):
        raise NotImplementedError("no kernel for this device")

    monkeypatch.setattr(torch, "_amp_foreach_non_finite_check_and_unscale_", missing)
    assert grads_finite(grads_of(1.0, 2.0)) and grads_finite([])
    assert not grads_finite(grads_of(1.0, float("nan")))


@pytest.mark.parametrize("validate_args", [False, True])
def test_train_step_is_the_plain_adam_step_on_the_fused_loss(validate_args):
    """Three Trainer steps against three hand-written steps (zero_grad, loss / B, backward, Adam) on a copy of
    the same VAE from the same seed: identical parameters, so the step's shortcuts (gradients dropped
    without zero_grad, the one-pass finiteness check) change nothing."""
    import copy

    import pyro

    cfg = validate_config({**TINY, "train": {**TINY["train"], "validate_args": validate_args}})
    data, vae = prepare(cfg)
    twin = copy.deepcopy(vae)
    trainer = Trainer.from_config(cfg, data, vae, progress=False)
    opt = torch.optim.Adam(twin.parameters(), lr=cfg.optim.lr)
    xb = data.train[:32]
    with pyro.validation_enabled(validate_args):
        for step in range(3):
            torch.manual_seed(step)
            loss = trainer.train_step(xb)
            torch.manual_seed(step)
            opt.zero_grad(set_to_none=True)
            want = fused_elbo_loss(twin, xb) / len(xb)
            want.backward()
            opt.step()
            torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-6)
    for (name, a), b in zip(vae.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=lambda m: f"{name}: {m}")


def test_a_trainer_follows_the_stopping_rule_it_is_handed():
    """The rule passed in, not the config's, sets the step size and the number of epochs."""
    from pyro_vae.training.stopping import EpochLimit

    cfg = validate_config({**TINY, "train": {**TINY["train"], "epochs": 50}})
    data, vae = prepare(cfg)
    trainer = Trainer.from_config(cfg, data, vae, progress=False, stopping=EpochLimit(max_epochs=2, lr=0.02, restore_best=False))
    rows = trainer.fit()
    assert [r["epoch"] for r in rows] == [1, 2] and [r["lr"] for r in rows] == [0.02, 0.02]
    assert trainer.optimizer.param_groups[0]["lr"] == 0.02 and trainer.finished and not trainer.restored


def test_a_trainer_built_from_parts_hands_an_indexed_loss_its_rows(capsys):
    """No config: a loss of the batch and its row indices, a plain Adam, a budget of 2 epochs. Every call gets
    ``x_b = data.train[rows]``, each epoch's rows are a permutation of the training split, the rule sets the step
    size, and a quiet Trainer prints nothing."""
    import math

    from pyro_vae.training.stopping import BudgetLimit

    cfg = validate_config(TINY)
    data, vae = prepare(cfg)
    seen = []

    def loss(xb, kl_weight, rows):
        assert torch.equal(xb, data.train[rows]) and kl_weight == 1.0
        seen.append(rows.clone())
        return fused_elbo_loss(vae, xb)

    trainer = Trainer(vae, loss, torch.optim.Adam(vae.parameters(), lr=0.01), data, BudgetLimit(0.02, max_epochs=2),
                      seed=0, batch_size=32, indexed_loss=True, quiet=True)
    rows = trainer.fit()
    per_epoch = math.ceil(len(data.train) / 32)
    assert trainer.step == len(seen) == 2 * per_epoch and [r["epoch"] for r in rows] == [1, 2]
    for e in range(2):
        assert sorted(torch.cat(seen[e * per_epoch:(e + 1) * per_epoch]).tolist()) == list(range(len(data.train)))
    assert trainer.optimizer.param_groups[0]["lr"] == 0.02 and all(r["lr"] == 0.02 for r in rows)
    assert capsys.readouterr().out == ""
