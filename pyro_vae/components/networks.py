"""Neural-network building blocks shared by guides, decoders and priors: MLPs, convolution nets, positive scales."""

from __future__ import annotations

import math
from typing import Literal, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.errors import ConfigError

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
Activation = Literal["relu", "tanh", "elu", "softplus", "gelu", "leaky_relu"]
ImageShape = Optional[Tuple[int, ...]]


def mlp(in_dim: int, hidden: Sequence[int], out_dim: int | None, activation: str) -> nn.Sequential:
    """``in_dim -> hidden[0] -> ... -> out_dim`` with ``activation`` after every hidden layer.

    With ``out_dim=None`` the network ends at the last hidden layer (a trunk whose width is
    ``hidden[-1]``, or ``in_dim`` when ``hidden`` is empty).
    """
    layers: list[nn.Module] = []
    width = in_dim
    for h in hidden:
        layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
        width = h
    if out_dim is not None:
        layers.append(nn.Linear(width, out_dim))
    return nn.Sequential(*layers)


def out_width(in_dim: int, hidden: Sequence[int]) -> int:
    """Width of ``mlp(in_dim, hidden, None, ...)``'s output."""
    return hidden[-1] if hidden else in_dim


def image_chw(image_shape: ImageShape, where: str) -> Tuple[int, int, int]:
    """``(channels, height, width)`` of flattened image data, or a one-line :class:`ConfigError` if not images.

    ``image_shape`` is the dataset's ``(H, W)`` or ``(C, H, W)``; ``where`` names the config key.
    """
    if image_shape is None:
        raise ConfigError(f"{where}: 'conv' needs image data, but this dataset has no image shape; "
                          f"use 'mlp' or a dataset with images (digits, npz with an image shape)")
    if len(image_shape) not in (2, 3):
        raise ConfigError(f"{where}: 'conv' needs images of shape (H, W) or (C, H, W) (got {tuple(image_shape)})")
    return (1, *image_shape) if len(image_shape) == 2 else tuple(image_shape)


class ConvEncoderNet(nn.Module):
    """Flattened images ``(..., C*H*W)`` -> features ``(..., out_width)``.

    Each layer is a 3x3 convolution with stride 2 (halving H and W, rounding up), so the
    network suits the small images (8x8 digits, 28x28 MNIST) this project trains on.
    """

    def __init__(self, chw: Tuple[int, int, int], channels: Sequence[int], activation: str):
        super().__init__()
        self.chw = chw
        layers: list[nn.Module] = []
        c = chw[0]
        for c_out in channels:
            layers += [nn.Conv2d(c, c_out, 3, stride=2, padding=1), ACTIVATIONS[activation]()]
            c = c_out
        self.net = nn.Sequential(*layers, nn.Flatten())
        h, w = chw[1], chw[2]
        for _ in channels:
            h, w = math.ceil(h / 2), math.ceil(w / 2)
        self.out_width = c * h * w

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.shape[:-1]
        h = self.net(x.reshape(-1, *self.chw))
        return h.reshape(*batch, self.out_width)


class ConvDecoderNet(nn.Module):
    """Latents ``(..., latent_dim)`` -> ``(..., out_channels * H * W)``, laid out channel by channel.

    A linear layer makes a ``channels[0] x ceil(H/2^n) x ceil(W/2^n)`` map, ``n = len(channels)``
    transposed convolutions (stride 2) double it, and the result is cropped to ``H x W``.
    The channel-major layout puts likelihood parameter ``k`` of every pixel in the ``k``-th
    block of ``H*W`` outputs.
    """

    def __init__(self, latent_dim: int, chw: Tuple[int, int, int], out_channels: int, channels: Sequence[int],
                 activation: str):
        super().__init__()
        _, self.height, self.width = chw
        n = len(channels)
        self.start = (channels[0], math.ceil(self.height / 2 ** n), math.ceil(self.width / 2 ** n))
        self.linear = nn.Sequential(nn.Linear(latent_dim, math.prod(self.start)), ACTIVATIONS[activation]())
        layers: list[nn.Module] = []
        c = channels[0]
        for c_out in channels:
            layers += [nn.ConvTranspose2d(c, c_out, 4, stride=2, padding=1), ACTIVATIONS[activation]()]
            c = c_out
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)
        self.out_dim = out_channels * self.height * self.width

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch = z.shape[:-1]
        h = self.linear(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        out = self.net(h)[..., : self.height, : self.width]
        return out.reshape(*batch, self.out_dim)


MIN_SCALE = 1e-4  # keeps q's scale away from 0, where log q(z|x) and its gradient blow up


def positive_scale(raw: torch.Tensor) -> torch.Tensor:
    """``softplus(raw) + MIN_SCALE``: a scale that is positive without exp's overflow."""
    return softplus(raw) + MIN_SCALE


SOFTPLUS_INV_1 = 0.5413248546129181  # softplus(x) = 1 at this x: learned scales start at 1
