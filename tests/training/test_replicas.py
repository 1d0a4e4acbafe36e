"""Replicas trained in one stacked step: each equals its single-seed run, stops on its own rule, keeps a NaN to
itself, and resumes exactly from its checkpoint."""

import signal

import pytest
import torch

from pyro_vae import validate_config
from pyro_vae.build import build_seeded
from pyro_vae.data import load_data
from pyro_vae.errors import ConfigError
from pyro_vae.inference.elbo import fused_elbo_loss
from pyro_vae.rundir import RunDir
from pyro_vae.training.guards import Interrupted
from pyro_vae.training.replicas import ReplicaTrainer, unsupported_reason
from pyro_vae.training.stacked import Stack, StackedELBO
from pyro_vae.training.trainer import TIMING_FIELDS, Trainer

# 240 training rows at B=32: 8 steps an epoch, the last one short (16 rows)
BASE = {"data": {"name": "synthetic", "x_dim": 6, "n": 300}, "model": {"decoder": {"hidden": [8]}},
        "guide": {"hidden": [8]}, "train": {"epochs": 3, "batch_size": 32, "stop": "epochs"}}
# float rounding: batched products (bmm) round differently from addmm at some shapes, by ~1e-7 relative a step
CLOSE = dict(rtol=1e-4, atol=1e-5)


def config(seed, **sections):
    d = {**BASE, "seed": seed}
    for section, keys in sections.items():
        d[section] = {**d.get(section, {}), **keys}
    return validate_config(d)


@pytest.fixture(scope="module")
def data():
    return load_data(config(0).data, 0)  # one split for every seed, as compare --seeds uses


def single_run(cfg, data):
    """The seed's own run: the VAE of `pyro-vae train` and its Trainer; returns (parameters, metrics)."""
    vae = build_seeded(cfg, data)
    trainer = Trainer.from_config(cfg, data, vae, progress=False, quiet=True)
    trainer.fit()
    return {n: p.detach().clone() for n, p in vae.named_parameters()}, trainer.metrics


def parameters(rt, r):
    return {n: p.detach().clone() for n, p in rt.replicas[r].vae.named_parameters()}


def assert_params_close(got, want):
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], **CLOSE, msg=name)


def untimed(rows):
    return [{k: v for k, v in row.items() if k not in TIMING_FIELDS} for row in rows]


@pytest.mark.parametrize("prior", ["normal", "laplace"])  # the standard Normal's KL written out; others' hook vmapped
def test_stacked_loss_is_each_replicas_fused_loss(data, prior):
    """One stacked pass gives every replica its own fused ELBO (same z variates), with K = 1 and K = 3 particles."""
    import pyro

    pyro.enable_validation(False)  # the fused loss's fast path, as training runs it
    for K in (1, 3):
        vaes = [build_seeded(config(s, inference={"num_particles": K}, model={"prior": prior}), data) for s in range(3)]
        opts = [torch.optim.Adam(v.parameters(), fused=True) for v in vaes]
        stack = Stack(list(zip(vaes, opts)))
        x = data.train[torch.arange(96).reshape(3, 32)]  # (R, B, x_dim)
        eps = torch.randn(3, *((K,) if K > 1 else ()), 32, 2)
        got = StackedELBO(vaes[0], K)(stack.P, x, eps, torch.tensor([1.0, 0.5, 2.0]))
        want = torch.stack([fused_elbo_loss(v, x[r], K, kl_weight=w, eps=eps[r])
                            for r, (v, w) in enumerate(zip(vaes, [1.0, 0.5, 2.0]))])
        torch.testing.assert_close(got, want.detach(), rtol=1e-6, atol=1e-5)


def test_fused_loss_takes_eps_on_its_fast_path_only(data):
    """Given variates are the fast path's (the drawn ones, drawn again from the same seed); with validation on the
    generic path would draw its own, so ``eps`` is refused."""
    import pyro

    vae = build_seeded(config(0), data)
    x = data.train[:16]
    with pyro.validation_enabled(False):
        pyro.set_rng_seed(3)
        drawn = fused_elbo_loss(vae, x)
        pyro.set_rng_seed(3)
        given = fused_elbo_loss(vae, x, eps=torch.randn(16, 2))
    assert torch.equal(drawn, given)
    with pytest.raises(ValueError, match="fast path only"):
        fused_elbo_loss(vae, x, eps=torch.zeros(16, 2))  # conftest turns validation on


def test_each_replica_is_its_single_seed_run(data):
    """Four replicas differing in seed, beta, step size and epoch cap end where their single runs end, with the
    same metrics (to float rounding): the same initial parameters, minibatches, z variates and Adam."""
    configs = [config(0), config(1, inference={"beta": 0.5}), config(2, optim={"lr": 1e-2}),
               config(3, train={"epochs": 2}, inference={"kl_warmup_epochs": 1})]
    rt = ReplicaTrainer.from_configs(configs, data, quiet=True)
    rows = rt.fit()
    for r, cfg in enumerate(configs):
        want, metrics = single_run(cfg, data)
        assert_params_close(parameters(rt, r), want)
        assert len(rows[r]) == len(metrics) == cfg.train.epochs
        for got_row, want_row in zip(untimed(rows[r]), untimed(metrics)):
            assert got_row.keys() == want_row.keys()
            for k, v in want_row.items():
                assert got_row[k] == pytest.approx(v, rel=1e-5, abs=1e-5), (r, k)
    assert rt.failures == {} and rt.rows == []


def test_replicas_stop_on_their_own_rules(data):
    """A plateau rule that stops after epoch 2 (no gain above 1e9 nats), a cap of 1 epoch and one of 4: each replica
    stops when its own rule says, a stopped one stays frozen while the others train, and each ends as its single
    run does."""
    plateau = {"stop": "plateau", "patience": 1, "min_delta": 1e9, "min_lr": 3e-3}  # no cuts: first plateau stops
    configs = [config(0, train=plateau), config(1, train={"epochs": 1}), config(2, train={"epochs": 4})]
    rt = ReplicaTrainer.from_configs(configs, data, quiet=True)
    rt.fit()
    assert [t.epoch for t in rt.replicas] == [2, 1, 4]
    assert [t.stop_rule.reason for t in rt.replicas] == ["plateau", "max_epochs", "max_epochs"]
    assert rt.replicas[0].restored and rt.replicas[0].stop_rule.converged
    for r, cfg in enumerate(configs):
        want, metrics = single_run(cfg, data)
        assert_params_close(parameters(rt, r), want)
        assert len(metrics) == rt.replicas[r].epoch


def test_a_nan_in_one_replica_is_reported_and_stays_there(data, capsys):
    """A NaN parameter in replica 1: its first step is reported with its index and seed (the diagnosis naming the
    parameter), it leaves the stack untouched, and replicas 0 and 2 end as their clean single runs."""
    configs = [config(s) for s in (10, 11, 12)]
    rt = ReplicaTrainer.from_configs(configs, data)
    before = parameters(rt, 1)
    with torch.no_grad():
        rt.replicas[1].vae.decoder.net[0].weight[0, 0] = float("nan")  # a view: the stack sees it
    rt.fit()
    assert list(rt.failures) == [1]
    message = rt.failures[1]
    assert "replica 1 (seed 11) step 1 (epoch 1)" in message and "decoder.net.0.weight" in message
    assert "replica 1 (seed 11)" in capsys.readouterr().err
    after = parameters(rt, 1)
    for name, value in before.items():  # nothing stepped: the NaN injected and the initial values
        same = torch.isnan(after[name]) | (after[name] == value)
        assert same.all(), name
    assert rt.replicas[1].epoch == 0 and rt.replicas[1].metrics == []
    for r in (0, 2):
        assert_params_close(parameters(rt, r), single_run(configs[r], data)[0])


def test_a_skipped_nonfinite_step_skips_that_replica_alone(data):
    """With on_nonfinite: skip, the NaN replica skips every step and then fails for having no finite step; the
    others train on."""
    configs = [config(s, train={"on_nonfinite": "skip", "epochs": 1}) for s in (0, 1)]
    rt = ReplicaTrainer.from_configs(configs, data, quiet=True)
    with torch.no_grad():
        rt.replicas[0].vae.encoder.loc_head.bias[0] = float("inf")
    rt.fit()
    assert list(rt.failures) == [0] and "every step was non-finite" in rt.failures[0]
    assert rt.replicas[0].current["skipped"] == rt.replicas[0].steps_per_epoch
    assert_params_close(parameters(rt, 1), single_run(configs[1], data)[0])


def interrupted_run(configs, data, path, at_step):
    """Replicas with run directories under ``path``, stopped by SIGINT after step ``at_step``; returns the runs."""
    runs = [RunDir.create(path / f"replica{r}") for r in range(len(configs))]
    rt = ReplicaTrainer.from_configs(configs, data, runs=runs, quiet=True)
    step = rt.step

    def stop_after(x, rows):
        out = step(x, rows)
        if rt.replicas[0].step + 1 == at_step:  # the loop counts this step once it returns
            rt.signals.received = signal.SIGINT
        return out

    rt.step = stop_after
    with pytest.raises(Interrupted, match=f"step {at_step} "):
        rt.fit()
    return runs


def test_checkpoint_mid_run_resumes_exactly(data, tmp_path):
    """Interrupted (SIGINT) after step 11, mid-epoch 2, with replicas of different caps: the replicas resumed from
    their checkpoints end bit for bit where the uninterrupted replicas end, and a replica's checkpoint continues
    as its single run."""
    configs = [config(s, train={"epochs": e, "checkpoint_every_steps": 3}) for s, e in ((0, 3), (1, 2), (2, 3))]
    whole = ReplicaTrainer.from_configs(configs, data, quiet=True)
    whole.fit()

    runs = interrupted_run(configs, data, tmp_path, 11)
    states = [run.load_checkpoint(quiet=True) for run in runs]
    assert [(s["step"], s["current"]["batch"], s["finished"]) for s in states] == [(11, 3, False)] * 3

    resumed = ReplicaTrainer.from_configs(configs, data, runs=runs, quiet=True)
    resumed.resume()
    resumed.fit()
    for r in range(len(configs)):
        got, want = parameters(resumed, r), parameters(whole, r)
        assert all(torch.equal(got[n], want[n]) for n in want), r
        assert untimed(resumed.replicas[r].metrics) == untimed(whole.replicas[r].metrics)
        assert untimed(runs[r].read_metrics()) == untimed(whole.replicas[r].metrics)
        assert runs[r].load_checkpoint(quiet=True)["finished"]

    # replica 2's checkpoint of step 11 is its single run's: the Trainer continues it to the replica's end
    cfg = configs[2]
    single = Trainer.from_config(cfg, data, build_seeded(cfg, data), progress=False, quiet=True)
    single.load_state(states[2])
    single.fit()
    assert_params_close({n: p.detach() for n, p in single.vae.named_parameters()}, parameters(whole, 2))


def test_unsupported_configs_say_why():
    assert unsupported_reason([config(0), config(1, optim={"lr": 1e-2})]) is None
    assert "train.batch_size" in unsupported_reason([config(0), config(1, train={"batch_size": 16})])
    assert "engine=pyro" in unsupported_reason([config(0, train={"engine": "pyro"})])
    assert "objective=iwae" in unsupported_reason([config(0, inference={"objective": "iwae"})])
    with pytest.raises(ConfigError, match="guide FullRankGuide"):
        ReplicaTrainer.from_configs([validate_config({**BASE, "guide": {"name": "full_rank"}})],
                                    load_data(config(0).data, 0))
