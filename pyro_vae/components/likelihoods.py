"""Likelihoods p(x | z): each maps the decoder's output to a distribution with event shape ``(x_dim,)``.

A likelihood declares ``params_per_feature`` (how many decoder outputs it needs per feature),
may refuse data it cannot model in ``check_data``, and may set its initial parameters from the
training data in ``init_scale`` (a learned scale starts at the data's residual scale).
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

from pyro_vae.components.networks import MIN_SCALE
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

    def init_scale(self, x: torch.Tensor) -> None:
        """Set the initial value of a learned scale from the training data ``x`` ``(n, x_dim)``; a likelihood
        without a scale keeps its parameters (``build_seeded`` calls this on every likelihood)."""

    def log_prob(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``log p(x | params)`` summed over features, shape ``params.shape[:-1]``: ``self(params).log_prob(x)``.

        The fused ELBO's hot path calls this; a subclass with a closed form overrides it to skip
        building the distribution (``tests/inference/test_fused.py`` holds each override to the distribution).
        """
        return self(params).log_prob(x)

    def log_prob_vjp(self, params: torch.Tensor, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor | None:
        """``grad`` (of :meth:`log_prob`'s shape) times the gradient of :meth:`log_prob` in ``params``, written out
        in the operations autograd would run on it (the same bits), for a caller that runs its own backward pass
        (:mod:`pyro_vae.training.stacked`); None where a subclass does not write it out (the caller then
        differentiates :meth:`log_prob` by autograd)."""
        return None


LearnScale = Literal["none", "global", "per_feature"]
ScaleInit = Literal["data", "config"]


class LocScaleLikelihood(Likelihood, metaclass=ABCMeta):
    """Base class: x_i | z ~ family(loc = g_i(z), scale sigma) with sigma fixed (``learn_scale: none``),
    one learned sigma (``global``) or one learned sigma per feature (``per_feature``).

    ``scale_init`` says where a learned sigma starts: ``data`` (the default), the data's residual scale,
    the family's maximum-likelihood sigma when g(z) predicts each feature's centre (:meth:`init_scale`);
    ``config``, the configured ``scale``. With ``learn_scale: none`` sigma is ``scale`` and ``scale_init``
    has no effect.
    """

    feature_floor = 0.1  # per_feature: a start scale is at least this fraction of the features' RMS one (init_scale)

    def __init__(self, x_dim: int, scale: float, learn_scale: str, scale_init: str = "data"):
        super().__init__(x_dim)
        self.learn_scale = learn_scale
        self.scale_init = scale_init
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

    @abstractmethod
    def residual_scale(self, x: torch.Tensor, dim: int | None) -> torch.Tensor:
        """The family's maximum-likelihood scale for the data ``x`` ``(n, x_dim)`` with each feature's
        location at its centre (mean or median): one scale per feature (shape ``(x_dim,)``) pooled over the
        rows (``dim=0``), or one over every entry (shape ``()``, ``dim=None``). Constant data give 0."""

    def init_scale(self, x: torch.Tensor) -> None:
        r"""With a learned scale and ``scale_init: data``, start it at the data's residual scale: the family's
        maximum-likelihood scale when the decoder predicts each feature's centre :math:`c_i` over the rows of
        ``x`` (:meth:`residual_scale`),

        .. math:: \hat\sigma = \arg\max_\sigma \sum_{n,i} \log p(x_{ni} \mid \mathrm{loc} = c_i, \sigma),

        one :math:`\hat\sigma` pooled over all features for ``global``, one per feature for ``per_feature``.
        The first epochs then fit the decoder instead of growing sigma from an arbitrary ``scale``.

        Floors: a per-feature scale is at least ``feature_floor`` (0.1) times the root mean square of the
        per-feature scales (for the Normal, the pooled MLE), because a (near-)constant feature's MLE is about 0
        while the untrained decoder does not predict that feature yet: on the digits (constant corner pixels;
        Normal, default config otherwise) a start at 1e-4 left the validation ELBO at -1.2e5 after one epoch,
        against -137 from sigma = 0.1 and +15 with this floor. Every scale is at least ``MIN_SCALE``
        (all-constant data), so none starts at log 0.

        ``learn_scale: none`` or ``scale_init: config``: nothing changes.
        """
        if self.learn_scale == "none" or self.scale_init == "config":
            return
        x = x.detach() if x.is_floating_point() else x.float()
        per_feature = self.learn_scale == "per_feature"
        scale = self.residual_scale(x, 0 if per_feature else None)
        if per_feature:
            scale = scale.maximum(self.feature_floor * scale.pow(2).mean().sqrt())
        with torch.no_grad():
            self.log_scale.copy_(scale.clamp_min(MIN_SCALE).log())

    def forward(self, loc: torch.Tensor) -> dist.Distribution:
        return self.family(loc, self.scale.expand(loc.shape)).to_event(1)


def _mean(t: torch.Tensor, dim: int | None) -> torch.Tensor:
    """``t.mean(dim)``, or the mean of every entry for ``dim=None``."""
    return t.mean() if dim is None else t.mean(dim)


@LIKELIHOODS.register("normal")
class NormalLikelihood(LocScaleLikelihood):
    """x | z ~ N(g(z), sigma^2 I); sigma fixed (``learn_scale: none``), one learned sigma (``global``), or one per feature.

    A learned sigma starts (``scale_init: data``) at the data's RMS deviation from each feature's mean.
    """

    def __init__(self, x_dim: int, *, scale: PositiveFloat = 0.1, learn_scale: LearnScale = "none",
                 scale_init: ScaleInit = "data"):
        super().__init__(x_dim, scale, learn_scale, scale_init)

    def family(self, loc, scale):
        return dist.Normal(loc, scale)

    def residual_scale(self, x, dim):
        r"""The Normal MLE :math:`\hat\sigma^2 = \mathrm{mean}\,(x_{ni} - \bar x_i)^2`: per feature, its (biased)
        variance; pooled, the mean over features of those variances."""
        return _mean((x - x.mean(0)).pow(2), dim).sqrt()

    def log_prob(self, loc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""``sum_i [-(x_i - g_i)^2 / (2 sigma_i^2) - log sigma_i - log sqrt(2 pi)]`` with sigma broadcast, not
        expanded: ``dist.Normal`` would materialize sigma, sigma^2 and log sigma at ``loc``'s full shape."""
        quad = ((x - loc) / self.scale).pow(2).sum(-1)  # sigma () or (x_dim,) broadcasts
        return quad.mul(-0.5) - (self.log_scale.expand(self.x_dim).sum() + self.x_dim * LOG_SQRT_2PI)

    def log_prob_vjp(self, loc, x, grad):
        r""":math:`g\, (x_i - g_i) / \sigma_i^2` per feature, as autograd's backward of :meth:`log_prob` computes it
        (``-0.5`` through the square of :math:`u = (x - g) / \sigma`, then :math:`/\sigma` and the sign)."""
        scale = self.scale
        return ((grad * -0.5).unsqueeze(-1) * (2 * ((x - loc) / scale)) / scale).neg()


@LIKELIHOODS.register("laplace")
class LaplaceLikelihood(LocScaleLikelihood):
    """x_i | z ~ Laplace(g_i(z), b): log p(x|z) is minus an L1 reconstruction error / b; ``learn_scale`` as for normal.

    A learned b starts (``scale_init: data``) at the data's mean absolute deviation from each feature's median.
    """

    def __init__(self, x_dim: int, *, scale: PositiveFloat = 0.1, learn_scale: LearnScale = "none",
                 scale_init: ScaleInit = "data"):
        super().__init__(x_dim, scale, learn_scale, scale_init)

    def family(self, loc, scale):
        return dist.Laplace(loc, scale)

    def residual_scale(self, x, dim):
        r"""The Laplace MLE :math:`\hat b = \mathrm{mean}\,|x_{ni} - m_i|` with :math:`m_i` the median of feature i
        (the location's MLE; with an even count torch takes the lower middle value, and any point between the
        two middle values gives the same sum of absolute deviations)."""
        return _mean((x - x.median(0).values).abs(), dim)

    def log_prob(self, loc: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        r"""``sum_i [-|x_i - g_i| / b_i - log(2 b_i)]``, b broadcast rather than expanded (as for ``normal``)."""
        scale = self.scale
        return -((x - loc).abs() / scale).sum(-1) - torch.log(2 * scale).expand(self.x_dim).sum()


@LIKELIHOODS.register("student_t")
class StudentTLikelihood(LocScaleLikelihood):
    """x_i | z ~ StudentT(df, g_i(z), sigma): a Normal likelihood robust to outliers (df -> inf is the Normal).

    A learned sigma starts (``scale_init: data``) at the Student-t MLE of sigma about each feature's mean.
    """

    em_steps = 100  # at most this many EM updates in residual_scale...
    em_rtol = 1e-3  # ...stopping once no sigma^2 moves by more than this fraction (a start needs no more)

    def __init__(self, x_dim: int, *, df: PositiveFloat = 3.0, scale: PositiveFloat = 0.1,
                 learn_scale: LearnScale = "none", scale_init: ScaleInit = "data"):
        super().__init__(x_dim, scale, learn_scale, scale_init)
        self.register_buffer("df", torch.tensor(float(df)))

    def family(self, loc, scale):
        return dist.StudentT(self.df.expand(loc.shape), loc, scale)

    def residual_scale(self, x, dim):
        r"""The Student-t MLE of sigma (df fixed) for the residuals :math:`r = x_{ni} - \bar x_i`, by EM on the
        t as a Gaussian scale mixture (x | u ~ N(loc, sigma^2 / u), u ~ Gamma(df/2, df/2); :math:`\nu` = df):

        .. math:: w = \frac{\nu + 1}{\nu + r^2 / \sigma^2}, \qquad \sigma^2 \leftarrow \mathrm{mean}\,(w\, r^2),

        from the Normal MLE :math:`\sigma^2 = \mathrm{mean}\, r^2`. Each step raises the likelihood; it stops
        after ``em_steps`` or when no sigma^2 moves by more than ``em_rtol`` of itself. Outliers get small w, so
        unlike the RMS this is not inflated by heavy tails (for t data the RMS is sigma sqrt(df / (df - 2))).
        """
        df = float(self.df)
        r2 = (x - x.mean(0)).pow(2)
        var = _mean(r2, dim)
        for _ in range(self.em_steps):
            # var floored: a constant feature (r = 0) stays at the floor instead of 0 / 0
            new = _mean(r2 * (df + 1) / (df + r2 / var.clamp_min(MIN_SCALE ** 2)), dim)
            done = bool(((new - var).abs() <= self.em_rtol * var).all())
            var = new
            if done:
                break
        return var.sqrt()


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

    def log_prob_vjp(self, logits, x, grad):
        r""":math:`g\,(x_i - \sigma(l_i))`, as autograd's backward of :meth:`log_prob` computes it: the softplus's
        backward plus ``addcmul``'s :math:`-x` term."""
        g = grad.neg().unsqueeze(-1)
        return torch.ops.aten.softplus_backward(g.expand(logits.shape), logits, 1, 20) + g * (x * -1)

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
