"""The conv decoder/guide pair: image shapes in and out, a one-line error without images, and training on digits."""

import math

import pytest
import torch

from pyro_vae import build_vae, load_config, load_run, train_run, validate_config
from pyro_vae.components.decoders import DECODERS
from pyro_vae.errors import ConfigError
from conftest import run_cli


@pytest.mark.parametrize("image_shape", [(8, 8), (5, 7), (2, 6, 6)])
def test_conv_decoder_maps_latents_to_every_pixel(image_shape):
    out_dim = math.prod(image_shape)
    dec = DECODERS.build(DECODERS.resolve({"name": "conv", "channels": [8, 4]}), 3, out_dim, image_shape)
    out = dec(torch.randn(2, 5, 3))
    assert out.shape == (2, 5, out_dim)
    # every pixel depends on z (nothing is cropped away or left constant)
    z = torch.randn(1, 3, requires_grad=True)
    jac = torch.autograd.functional.jacobian(lambda v: dec(v).sum(0), z)  # (out_dim, 1, 3)
    assert (jac.abs().sum((-1, -2)) > 0).all()


def test_conv_without_image_data_is_a_config_error():
    cfg = validate_config({"model": {"decoder": {"name": "conv"}}})
    with pytest.raises(ConfigError, match=r"^model.decoder.name: 'conv' needs image data"):
        build_vae(cfg, 10)


def test_conv_on_synthetic_data_fails_in_one_line_before_training(tmp_path):
    result = run_cli("train", "--set", "data.name=synthetic", "--set", "model.decoder.name=conv",
                     "--out", tmp_path / "r", "--no-progress")
    assert result.returncode == 2 and not (tmp_path / "r").exists()
    assert result.stderr.strip().splitlines() == [
        "pyro-vae: error: model.decoder.name: 'conv' needs image data, but this dataset has no image shape; "
        "use 'mlp' or a dataset with images (digits, npz with an image shape)"]


def test_conv_pair_trains_on_digits_and_reloads(tmp_path):
    cfg = load_config(None, ["train.epochs=2", "train.batch_size=128", "model.latent_dim=2",
                             "model.decoder.name=conv", "model.decoder.channels=[8]",
                             "guide.name=conv", "guide.channels=[8]"])
    run = train_run(cfg, tmp_path / "conv", progress=False)
    elbos = [row["train_elbo"] for row in run.metrics]
    assert all(math.isfinite(e) for e in elbos) and elbos[1] > elbos[0]
    assert (tmp_path / "conv" / "plots" / "samples.png").is_file()
    again = load_run(tmp_path / "conv")
    x = again.data.test[:4]
    assert torch.allclose(again.vae.reconstruct(x), run.vae.reconstruct(x))
