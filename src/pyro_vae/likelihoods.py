"""Likelihoods p(x | z): each maps the decoder's output to a distribution with event shape ``(x_dim,)``.

A likelihood declares ``params_per_feature`` (how many decoder outputs it needs per feature)
and may refuse data it cannot model in ``check_data``.
"""

from __future__ import annotations

import math
from typing import Literal

import pyro.distributions as dist
import torch
from pydantic import PositiveFloat
from torch import nn

from .errors import DataError
from .registry import Registry

LIKELIHOODS = Registry("likelihood")


class Likelihood(nn.Module):
    """Base class: ``forward(params)`` with ``params`` of shape ``(..., x_dim * params_per_feature)``."""

    params_per_feature = 1

    def __init__(self, x_dim: int):
        super().__init__()
        self.x_dim = x_dim

    def check_data(self, x: torch.Tensor, where: str) -> None:
        """Raise :class:`DataError` if ``x`` (already binarized if asked) cannot be modelled."""


@LIKELIHOODS.register("normal")
class NormalLikelihood(Likelihood):
    """x | z ~ N(g(z), sigma^2 I); sigma fixed (``learn_scale: none``), one learned sigma (``global``), or one per feature."""

    def __init__(
        self,
        x_dim: int,
        *,
        scale: PositiveFloat = 0.1,
        learn_scale: Literal["none", "global", "per_feature"] = "none",
    ):
        super().__init__(x_dim)
        self.learn_scale = learn_scale
        shape = (x_dim,) if learn_scale == "per_feature" else ()
        log_scale = torch.full(shape, math.log(scale))
        if learn_scale == "none":
            self.register_buffer("log_scale", log_scale)
        else:
            self.log_scale = nn.Parameter(log_scale)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp()

    def forward(self, loc: torch.Tensor) -> dist.Distribution:
        return dist.Normal(loc, self.scale.expand(loc.shape[-1:])).to_event(1)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """x | z ~ Bernoulli(sigmoid(g(z))) per feature: log p(x|z) is minus the binary cross-entropy."""

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=logits).to_event(1)

    def check_data(self, x: torch.Tensor, where: str) -> None:
        if not bool(((x == 0) | (x == 1)).all()):
            lo, hi = float(x.min()), float(x.max())
            raise DataError(
                f"model.likelihood.name: 'bernoulli' needs data in {{0, 1}} but {where} has values in "
                f"[{lo:g}, {hi:g}]; set data.binarize=static or data.binarize=dynamic"
            )
