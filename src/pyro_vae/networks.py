"""Small neural-network building blocks shared by encoders and decoders."""

from __future__ import annotations

from typing import Literal, Sequence

from torch import nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
}
Activation = Literal["relu", "tanh", "elu", "softplus", "gelu", "leaky_relu"]


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
