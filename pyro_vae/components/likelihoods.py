"""Likelihoods p(x | z): each maps the decoder's output to a distribution with event shape ``(x_dim,)``.

A likelihood declares ``params_per_feature`` (how many decoder outputs it needs per feature)
and may refuse data it cannot model in ``check_data``.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from typing import Literal

import pyro.distributions as dist
import torch
from pydantic import PositiveFloat
from torch import nn
from torch.nn.functional import softplus

from pyro_vae.errors import DataError
from pyro_vae.registry import Registry

LIKELIHOODS = Registry("likelihood")
LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


class Likelihood(nn.Module):
    """Base class: ``forward(params)`` with ``params`` of shape ``(..., x_dim * params_per_feature)``."""

    params_per_feature = 1

    def __init__(self, x_dim: int):
        super().__init__()
        self.x_dim = x_dim

    def check_data(self, x: torch.Tensor, where: str) -> None:
        """Raise :class:`DataError` if ``x`` (already binarized if asked) cannot be modelled."""

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | params)`` summed over features, shape ``params.shape[:-1]``: ``self(params).log_prob(x)``.

        The fused ELBO's hot path calls this; a subclass with a closed form overrides it to skip
        building the distribution (``tests/inference/test_fused.py`` holds each override to the distribution).
        """
        return self(params).log_prob(x)


LearnScale = Literal["none", "global", "per_feature"]


class LocScaleLikelihood(Likelihood, metaclass=ABCMeta):
    """Base class: x_i | z ~ family(loc = g_i(z), scale sigma) with sigma fixed (``learn_scale: none``),
    one learned sigma (``global``) or one learned sigma per feature (``per_feature``)."""

    def __init__(self, x_dim: int, scale: float, learn_scale: str):
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

    @abstractmethod
    def family(self, loc: torch.Tensor, scale: torch.Tensor) -> dist.Distribution:
        """The per-feature distribution with ``loc`` and ``scale``, both ``(..., x_dim)``."""

    def forward(self, loc: torch.Tensor) -> dist.Distribution:
        return self.family(loc, self.scale.expand(loc.shape)).to_event(1)


@LIKELIHOODS.register("normal")
class NormalLikelihood(LocScaleLikelihood):
    """x | z ~ N(g(z), sigma^2 I); sigma fixed (``learn_scale: none``), one learned sigma (``global``), or one per feature."""

    def __init__(self, x_dim: int, *, scale: PositiveFloat = 0.1, learn_scale: LearnScale = "none"):
        super().__init__(x_dim, scale, learn_scale)

    def family(self, loc, scale):
        return dist.Normal(loc, scale)

    def log_prob(self, loc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""``sum_i [-(x_i - g_i)^2 / (2 sigma_i^2) - log sigma_i - log sqrt(2 pi)]`` with sigma broadcast, not
        expanded: ``dist.Normal`` would materialize sigma, sigma^2 and log sigma at ``loc``'s full shape."""
        quad = ((x - loc) / self.scale).pow(2).sum(-1)  # sigma () or (x_dim,) broadcasts
        return quad.mul(-0.5) - (self.log_scale.expand(self.x_dim).sum() + self.x_dim * LOG_SQRT_2PI)


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(LocScaleLikelihood):
    """x_i | z ~ Laplace(g_i(z), b): log p(x|z) is minus an L1 reconstruction error / b; ``learn_scale`` as for normal."""

    def __init__(self, x_dim: int, *, scale: PositiveFloat = 0.1, learn_scale: LearnScale = "none"):
        super().__init__(x_dim, scale, learn_scale)

    def family(self, loc, scale):
        return dist.Laplace(loc, scale)

    def log_prob(self, loc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""``sum_i [-|x_i - g_i| / b_i - log(2 b_i)]``, b broadcast rather than expanded (as for ``normal``)."""
        scale = self.scale
        return -((x - loc).abs() / scale).sum(-1) - torch.log(2 * scale).expand(self.x_dim).sum()


@LIKELIHOODS.register("student_t")
class StudentTLikelihood(LocScaleLikelihood):
    """x_i | z ~ StudentT(df, g_i(z), sigma): a Normal likelihood robust to outliers (df -> inf is the Normal)."""

    def __init__(self, x_dim: int, *, df: PositiveFloat = 3.0, scale: PositiveFloat = 0.1,
                 learn_scale: LearnScale = "none"):
        super().__init__(x_dim, scale, learn_scale)
        self.register_buffer("df", torch.tensor(float(df)))

    def family(self, loc, scale):
        return dist.StudentT(self.df.expand(loc.shape), loc, scale)


@LIKELIHOODS.register("bernoulli")
class BernoulliLikelihood(Likelihood):
    """x | z ~ Bernoulli(sigmoid(g(z))) per feature: log p(x|z) is minus the binary cross-entropy."""

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=logits).to_event(1)

    def log_prob(self, logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``sum_i [x_i log sigmoid(l_i) + (1 - x_i) log sigmoid(-l_i)] = sum_i [x_i l_i - softplus(l_i)]``.

        ``Bernoulli.log_prob``'s value (minus the binary cross-entropy with logits) in one temporary:
        torch's BCE kernel allocates four of ``logits``' size, and in IWAE evaluation it cost 0.3-0.4x
        the decoder's matrix products against 0.2x for this form (torch.profiler, 784-400-50).
        """
        return softplus(logits).addcmul_(logits, x, value=-1).sum(-1).neg_()

    def check_data(self, x: torch.Tensor, where: str) -> None:
        bad = ~((x == 0) | (x == 1))
        if bool(bad.any()):
            lo, hi = float(x.min()), float(x.max())
            row, col = (int(i) for i in bad.nonzero()[0])
            raise DataError(
                f"model.likelihood.name: 'bernoulli' needs data in {{0, 1}} but {where} has values in "
                f"[{lo:g}, {hi:g}] ({float(x[row, col]):g} at row {row}, column {col}); "
                f"set data.binarize=static or data.binarize=dynamic"
            )


@LIKELIHOODS.register("continuous_bernoulli")
class ContinuousBernoulliLikelihood(Likelihood):
    """x_i | z ~ ContinuousBernoulli(sigmoid(g_i(z))) on [0, 1] (Loaiza-Ganem & Cunningham 2019).

    p(x; lam) = C(lam) lam^x (1 - lam)^(1 - x) with C(lam) = 2 atanh(1 - 2 lam) / (1 - 2 lam):
    the Bernoulli formula plus the normalizer that makes it a density for grey-level data.
    """

    def forward(self, logits: torch.Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=logits).to_event(1)

    def check_data(self, x: torch.Tensor, where: str) -> None:
        if not bool(((x >= 0) & (x <= 1)).all()):
            lo, hi = float(x.min()), float(x.max())
            raise DataError(
                f"model.likelihood.name: 'continuous_bernoulli' needs data in [0, 1] but {where} has values in "
                f"[{lo:g}, {hi:g}]; rescale the data or use 'normal', 'laplace' or 'student_t'"
            )
