"""Every registered guide gets all of a run's plots; every latent_dim gets ``latent.png``; the PCA behind it is right."""

import matplotlib.image
import numpy as np
import pytest
import torch

from pyro_vae import build_vae, load_config, train_run
from pyro_vae.components.guides import GUIDES
from pyro_vae.runs.plots import principal_axes

PLOTS = ["learning_curves.png", "reconstructions.png", "samples.png", "latent.png"]
TINY_KEYS = {"hidden": "[8]", "flow_hidden": "[8]", "channels": "[4]"}  # shrink whichever width keys a guide has


def tiny_config(guide: str, *extra: str):
    """A one-epoch digits config with the given guide, every network as narrow as its keys allow."""
    keys = [f"guide.{k}={v}" for k, v in TINY_KEYS.items() if k in GUIDES.get(guide).parameters()]
    return load_config(None, ["train.epochs=1", "model.decoder.hidden=[8]", f"guide.name={guide}", *keys, *extra])


def assert_plots(run):
    """The run lists and holds every expected plot, each a readable, non-blank PNG."""
    assert sorted(run.summary["plots"]) == sorted(f"plots/{name}" for name in PLOTS)
    for name in PLOTS:
        image = matplotlib.image.imread(run.path / "plots" / name)  # (height, width, channels)
        assert image.ndim == 3 and min(image.shape[:2]) > 100, name
        assert image.std() > 0.01, f"{name} is blank"


@pytest.mark.parametrize("guide", [entry.name for entry in GUIDES])
def test_every_guide_gets_every_plot(guide, tmp_path):
    assert_plots(train_run(tiny_config(guide), tmp_path / guide, progress=False))


@pytest.mark.parametrize("latent_dim", [1, 3])
def test_every_latent_dim_gets_a_latent_picture(latent_dim, tmp_path):
    assert_plots(train_run(tiny_config("mean_field", f"model.latent_dim={latent_dim}"), tmp_path / "r", progress=False))


def test_latent_summary_and_samples_are_repeatable_and_leave_the_global_stream_alone():
    cfg = tiny_config("flow")
    vae = build_vae(cfg, 64, (8, 8)).eval()
    x = torch.rand(5, 64)
    before = torch.get_rng_state()
    z, what = vae.latent_summary(x)
    samples = vae.sample(4, seed=0)
    assert torch.equal(torch.get_rng_state(), before)
    assert z.shape == (5, 2) and "draws" in what  # a flow's q has no closed-form mean
    assert torch.equal(vae.latent_summary(x)[0], z) and torch.equal(vae.sample(4, seed=0), samples)
    assert torch.equal(vae.reconstruct(x), vae.decode_mean(z))

    normal = build_vae(tiny_config("mean_field"), 64, (8, 8)).eval()
    z, what = normal.latent_summary(x)
    assert what == "mean of q(z|x)" and torch.equal(z, normal.encoder(x).mean)


def test_principal_axes_recover_a_plane_and_match_numpy_svd():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.normal(size=(5, 2)))  # (5, 2): an orthonormal basis of a plane in R^5
    coords = rng.normal(size=(400, 2)) * [3.0, 1.0]
    z = coords @ basis.T + rng.normal(size=5) + 1e-3 * rng.normal(size=(400, 5))  # (400, 5), near the plane
    points, axes, share = principal_axes(z)
    assert points.shape == (400, 2) and axes.shape == (2, 5)
    np.testing.assert_allclose(axes @ axes.T, np.eye(2), atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(axes @ basis, axis=1), 1.0, atol=1e-6)  # the axes lie in the plane
    assert share[0] > share[1] and share.sum() == pytest.approx(1.0, abs=1e-5)

    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(share, s[:2] ** 2 / np.sum(s**2), rtol=1e-10)
    np.testing.assert_allclose(np.abs(axes), np.abs(vt[:2]), atol=1e-10)  # the same axes, up to sign
    np.testing.assert_allclose(points, centred @ axes.T, atol=1e-10)

    one, _, none = principal_axes(rng.normal(size=(1, 4)))  # a single point: no variance, and no error
    assert one.shape == (1, 2) and np.all(none == 0)
