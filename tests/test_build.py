"""build_seeded: the seeded VAE of a config for its data, a learned likelihood scale started from the training data."""

import math

import pytest
import torch

from conftest import interrupt_at_step
from pyro_vae import load_config, train_run
from pyro_vae.build import build_seeded, build_vae, prepare, seed_everything
from pyro_vae.cli import main
from pyro_vae.data import load_data
from pyro_vae.rundir import RunDir
from pyro_vae.training.trainer import TIMING_FIELDS

PPCA = ["data.name=synthetic", "data.x_dim=10", "data.latent_dim=2", "model.latent_dim=2",
        "model.likelihood.name=normal", "model.likelihood.scale=0.1", "model.likelihood.learn_scale=global"]


def unseeded_twin(cfg, data):
    """build_vae under the same seed (no data-driven start), and the RNG state after it."""
    seed_everything(cfg.seed)
    vae = build_vae(cfg, data.x_dim, data.image_shape)
    return vae, torch.get_rng_state()


def test_a_learned_scale_starts_at_the_datas_rms_residual_not_at_the_configured_scale():
    """On pPCA-shaped data with scale 0.1 configured, sigma starts at the RMS deviation of the training data from
    its feature means (the Normal MLE for a decoder that predicts the mean), and nothing else moves."""
    cfg = load_config(None, PPCA)
    data = load_data(cfg.data, cfg.seed)
    vae = build_seeded(cfg, data)
    rng_after = torch.get_rng_state()
    x = data.train.double()
    rms = float((x - x.mean(0)).pow(2).mean().sqrt())
    assert rms > 1  # the data's scale, far from the configured 0.1
    assert math.isclose(float(vae.likelihood.scale.detach()), rms, rel_tol=1e-5)
    twin, twin_rng = unseeded_twin(cfg, data)
    assert torch.equal(twin.likelihood.log_scale.detach(), torch.tensor(math.log(0.1)))
    ours, theirs = vae.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours if not k.endswith("log_scale"))
    assert torch.equal(rng_after, twin_rng)  # init_scale draws no random numbers: the training stream is as before


def test_scale_init_config_starts_at_the_configured_scale():
    cfg = load_config(None, PPCA + ["model.likelihood.scale_init=config"])
    vae = build_seeded(cfg, load_data(cfg.data, cfg.seed))
    assert torch.equal(vae.likelihood.log_scale.detach(), torch.tensor(math.log(0.1)))


@pytest.mark.parametrize("overrides", [[], ["model.likelihood.name=laplace", "model.likelihood.scale=0.3"]],
                         ids=["default", "laplace"])
def test_a_fixed_scale_build_is_unchanged(overrides):
    """learn_scale: none (the default digits config): sigma is the configured scale and the whole initial state
    is build_vae's, so `bash run.sh train` trains exactly as before scale_init existed."""
    cfg = load_config(None, overrides)
    assert cfg.model.likelihood.learn_scale == "none" and cfg.model.likelihood.scale_init == "data"
    data, vae = prepare(cfg)
    rng_after = torch.get_rng_state()
    assert torch.equal(vae.likelihood.log_scale, torch.tensor(math.log(cfg.model.likelihood.scale)))
    twin, twin_rng = unseeded_twin(cfg, data)
    ours, theirs = vae.state_dict(), twin.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(rng_after, twin_rng)


def test_resume_continues_from_the_checkpointed_scale_bitwise(tmp_path):
    """resume builds through prepare (so through the data-driven start), then loads the checkpoint over it:
    an interrupted run with a learned sigma resumes to the uninterrupted run's parameters and metrics exactly."""
    cfg = load_config(None, PPCA + ["data.n=400", "model.decoder.hidden=[8]", "guide.hidden=[8]",
                                    "train.batch_size=40", "train.epochs=3", "train.stop=epochs"])
    whole = train_run(cfg, tmp_path / "whole", progress=False)
    assert not math.isclose(float(whole.vae.likelihood.scale.detach()), 0.1, rel_tol=0.5)

    path = interrupt_at_step(cfg, tmp_path / "whole" / "config.yaml", tmp_path / "cut", 4)
    assert main(["resume", str(path), "--no-progress"]) == 0
    resumed = RunDir(path).load_checkpoint(quiet=True)["vae"]
    for name, tensor in whole.vae.state_dict().items():
        assert torch.equal(resumed[name], tensor), name
    rows = lambda path: [{k: v for k, v in r.items() if k not in TIMING_FIELDS} for r in RunDir(path).read_metrics()]
    assert rows(path) == rows(tmp_path / "whole")
