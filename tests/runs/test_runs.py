"""``load_run`` returns the trained VAE, ready to trace, with the same data splits."""

import torch
import pyro.poutine as poutine

from pyro_vae import load_config, load_run, train_run


def test_load_run_round_trip(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "model.latent_dim=3", "model.decoder.hidden=[8]", "guide.hidden=[8]"])
    trained = train_run(cfg, tmp_path / "r", progress=False)
    run = load_run(tmp_path / "r")
    assert run.config == cfg and len(run.metrics) == 2 and run.summary["epochs"] == 2
    for a, b in zip(trained.vae.state_dict().values(), run.vae.state_dict().values()):
        assert torch.equal(a, b)
    assert torch.equal(run.data.test, trained.data.test)
    x = run.data.test[:7]
    tr = poutine.trace(poutine.replay(run.vae.model, trace=poutine.trace(run.vae.guide).get_trace(x))).get_trace(x)
    assert tr.nodes["z"]["value"].shape == (7, 3) and tr.nodes["z"]["fn"].event_shape == (3,)
    assert tr.nodes["x"]["fn"].event_shape == (64,) and tr.nodes["x"]["is_observed"]
