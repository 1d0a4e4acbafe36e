"""The RWS and wake-sleep objectives: draw for draw against Pyro's ReweightedWakeSleep, as
``inference.objective`` for ``pyro-vae train``, and their config checks."""

import math

import pyro
import pytest
import torch
from pyro.infer import ReweightedWakeSleep

from pyro_vae import load_config
from pyro_vae.baselines import wake_sleep as ws
from pyro_vae.build import build_seeded
from pyro_vae.data import load_data
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.decode import log_likelihood
from pyro_vae.evaluation.iwae import fused_log_weights
from pyro_vae.inference import rws
from pyro_vae.runs.run import train_run
from pyro_vae.training.trainer import Trainer

SMALL = ["data.name=synthetic", "data.n=60", "data.x_dim=4", "model.latent_dim=2", "model.decoder.hidden=[8]",
         "guide.hidden=[8]", "model.likelihood.scale=0.5", "train.batch_size=16"]
INSOMNIA = {"wake": 1.0, "sleep": 0.0, "both": 0.5}
K = 3


def small_vae():
    cfg = load_config(None, SMALL)
    data = load_data(cfg.data, cfg.seed)
    return build_seeded(cfg, data).double(), data.train[:6].double()


def grads(vae):
    return {n: p.grad.clone() for n, p in vae.named_parameters()}


def recording_guide(vae, record):
    """vae.guide, taking Pyro RWS's ``observations`` (the dreams) and recording every (x, z) it sees."""

    def guide(x, observations=None):
        x_in = x if observations is None else observations["x"]
        z = vae.guide(x_in)
        record.append((x_in.detach().clone(), z.detach().clone()))
        return z

    return guide


def pyro_rws(vae, x, phi_update, seed):
    """Pyro's RWS on ``x`` after seeding: (wake-theta loss, gradients, [wake (x, z), dream (x, z) if any])."""
    record = []
    vae.zero_grad(set_to_none=True)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    pyro_loss = ReweightedWakeSleep(num_particles=K, insomnia=INSOMNIA[phi_update], num_sleep_particles=1,
                              vectorize_particles=True, max_plate_nesting=1)
    theta_loss, _ = pyro_loss.loss_and_grads(vae.model, recording_guide(vae, record), x)
    return theta_loss, grads(vae), record


def ours(vae, x, z, sleep, phi_update):
    vae.zero_grad(set_to_none=True)
    loss = rws.rws_surrogate(vae, x, vae.encoder(x), z, sleep, phi_update)
    loss.backward()
    return float(loss.detach()), grads(vae)


def assert_grads_equal(a, b):
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("phi_update", ["wake", "sleep", "both"])
def test_minibatched_rws_is_pyros_rws_summed_over_the_points_draw_for_draw(phi_update):
    vae, x = small_vae()
    # Pyro's RWS point by point (a batch of one), recording its draws
    pyro_loss, pyro_grads, wake_z, dream_z, dream_x = 0.0, None, [], [], []
    for n in range(len(x)):
        loss, g, record = pyro_rws(vae, x[n:n + 1], phi_update, seed=100 + n)
        pyro_loss += loss
        pyro_grads = g if pyro_grads is None else {k: pyro_grads[k] + g[k] for k in g}
        assert record[0][1].shape == (K, 1, 2) and torch.equal(record[0][0], x[n:n + 1])
        wake_z.append(record[0][1])
        if phi_update != "wake":  # the guide replayed on the model's dream
            assert len(record) == 2 and record[1][1].shape == (1, 2)
            dream_x.append(record[1][0]), dream_z.append(record[1][1])
        # our loss on the same point after the same seed draws the same z (and dreams): same gradients
        pyro.set_rng_seed(100 + n)
        q = vae.encoder(x[n:n + 1])
        assert torch.equal(rws.wake_draws(q, K), record[0][1])
        if phi_update != "wake":
            z_s, x_s = rws.dreams(vae, 1)
            assert torch.equal(z_s, record[1][1]) and torch.equal(x_s, record[1][0])
        vae.zero_grad(set_to_none=True)
        pyro.set_rng_seed(100 + n)
        own = rws.rws_loss(vae, K, phi_update)(x[n:n + 1], 1.0)
        own.backward()
        assert float(own.detach()) == pytest.approx(loss, rel=1e-12)
        assert_grads_equal(grads(vae), g)
    # one minibatch of all the points with those draws: the sum of Pyro's per-point losses and gradients
    sleep = (torch.cat(dream_z), torch.cat(dream_x)) if dream_z else None
    loss, g = ours(vae, x, torch.cat(wake_z, dim=1), sleep, phi_update)
    assert loss == pytest.approx(pyro_loss, rel=1e-12)
    assert_grads_equal(g, pyro_grads)
    assert any(v.abs().max() > 0 for k, v in g.items() if k.startswith("encoder."))
    assert any(v.abs().max() > 0 for k, v in g.items() if not k.startswith("encoder."))


def test_pyros_rws_on_a_batch_weights_the_joint_draws_of_all_points():
    # why Pyro's RWS does not minibatch: one softmax over the K joint draws of the whole batch
    vae, x = small_vae()
    pyro_loss, pyro_grads, record = pyro_rws(vae, x, "wake", seed=7)
    z = record[0][1]  # (K, B, latent_dim)
    assert z.shape == (K, len(x), 2)
    with torch.no_grad():
        q = vae.encoder(x)
        log_w = log_likelihood(vae.decoder, vae.likelihood, z, x) + vae.prior().log_prob(z) - q.log_prob(z)
    joint = -(torch.logsumexp(log_w.sum(1), 0) - math.log(K))
    assert pyro_loss == pytest.approx(float(joint), rel=1e-12)
    loss, g = ours(vae, x, z, None, "wake")  # per-point weights: a different (the minibatch) estimator
    assert loss == pytest.approx(float(-(torch.logsumexp(log_w, 0) - math.log(K)).sum()), rel=1e-12)
    assert any(not torch.allclose(g[k], pyro_grads[k]) for k in g if not k.startswith("encoder."))


def test_the_loss_value_is_the_iwae_bound_of_the_batch():
    vae, x = small_vae()
    pyro.set_rng_seed(3)
    loss = rws.rws_loss(vae, 4, "both")(x, 1.0)
    pyro.set_rng_seed(3)  # the same draws: fused_log_weights samples z as the wake draws do
    with torch.no_grad():
        bound = torch.logsumexp(fused_log_weights(vae, x, 4), 0) - math.log(4)
    assert float(loss.detach()) == pytest.approx(-float(bound.sum()), rel=1e-12)


# -- as inference.objective ------------------------------------------------------------------------------------
def test_rws_defaults_to_five_particles_and_wake_sleep_to_one_with_sleep_phi():
    assert load_config(None, ["inference.objective=rws"]).inference.num_particles == 5
    assert load_config(None, ["inference.objective=rws", "inference.num_particles=2"]).inference.num_particles == 2
    inf = load_config(None, ["inference.objective=wake_sleep"]).inference
    assert (inf.num_particles, inf.phi_update, inf.kl) == (1, "sleep", "monte_carlo")


@pytest.mark.parametrize("overrides, match", [
    (["inference.objective=rws", "inference.num_particles=1"], "inference.num_particles: 1 with phi_update=wake"),
    (["inference.objective=rws", "inference.estimator=dreg"], "inference.estimator: dreg is not used by objective=rws"),
    (["inference.objective=rws", "inference.beta=0.5"], "inference.beta: not used by objective=rws"),
    (["inference.objective=rws", "inference.kl_warmup_epochs=5"], "inference.kl_warmup_epochs: not used"),
    (["inference.objective=wake_sleep", "inference.num_particles=5"], "wake_sleep has num_particles=1"),
    (["inference.objective=wake_sleep", "inference.phi_update=wake"], "wake_sleep has phi_update='sleep'"),
    (["inference.phi_update=sleep"], "inference.phi_update: sleep is used by objective=rws only, not elbo"),
    (["inference.objective=rws", "inference.phi_update=dream"], "inference.phi_update"),
])
def test_config_errors_are_one_line(overrides, match):
    with pytest.raises(ConfigError, match=match) as err:
        load_config(None, overrides)
    assert "\n" not in str(err.value)


def test_a_written_config_reloads_as_the_same_inference():
    for o in (["inference.objective=rws", "inference.phi_update=both"], ["inference.objective=wake_sleep"], []):
        inf = load_config(None, o).inference
        assert type(inf).model_validate(inf.model_dump()) == inf


@pytest.mark.parametrize("objective, phi_update, k",
                         [("rws", "wake", 5), ("rws", "both", 3), ("wake_sleep", "sleep", 1)])
def test_the_trainers_loss_is_the_rws_objective_on_the_fused_engine(objective, phi_update, k):
    overrides = SMALL + [f"inference.objective={objective}"]
    if objective == "rws":
        overrides += [f"inference.phi_update={phi_update}", f"inference.num_particles={k}"]
    cfg = load_config(None, overrides)
    data = load_data(cfg.data, cfg.seed)
    vae = build_seeded(cfg, data)
    trainer = Trainer.from_config(cfg, data, vae)
    assert trainer.engine == "fused"
    x = data.train[:8]
    torch.manual_seed(5)
    loss = trainer.loss_fn(x, 1.0)
    torch.manual_seed(5)
    assert torch.equal(loss, rws.rws_loss(vae, k, phi_update)(x, 1.0))


def test_pyro_train_with_rws_trains_as_the_rws_fit_does(tmp_path):
    """``pyro-vae train`` with ``objective: rws`` and the comparison's ``rws`` fit share one loss and one loop:
    the same seed and budget give the same parameters (the fit's own per-epoch score draws from its own stream)."""
    cfg = load_config(None, SMALL + ["inference.objective=rws", "train.stop=epochs", "train.epochs=2",
                                     "train.restore_best=false"])
    data = load_data(cfg.data, cfg.seed)
    run = train_run(cfg, out=tmp_path / "run", progress=False)
    fit = ws.rws(cfg, data, epochs=2)
    trained, fitted = run.vae.state_dict(), fit.vae.state_dict()
    assert trained.keys() == fitted.keys()
    for name in trained:
        torch.testing.assert_close(trained[name], fitted[name], rtol=0, atol=0, msg=name)
    written = load_config(tmp_path / "run" / "config.yaml").inference
    assert (written.objective, written.num_particles, written.phi_update) == ("rws", 5, "wake")


@pytest.mark.parametrize("objective", ["rws", "wake_sleep"])
def test_pyros_engine_is_refused_before_any_file(tmp_path, objective):
    cfg = load_config(None, SMALL + [f"inference.objective={objective}", "train.engine=pyro"])
    with pytest.raises(ConfigError, match=f"inference.objective: {objective} runs on the fused engine only") as err:
        train_run(cfg, out=tmp_path / "run", progress=False)
    assert "\n" not in str(err.value) and not (tmp_path / "run").exists()
