"""Guides q(z | x): amortized encoders returning a distribution with event shape ``(latent_dim,)``.

The build context is ``(x_dim, latent_dim, image_shape)``; only the ``conv`` guide uses
``image_shape``. Every guide is reparameterized (``rsample``), so the ELBO's gradient is the
pathwise one.

**Fast-path hook** (optional). A guide whose q(z|x) is a diagonal Normal declares the method
``loc_scale(x) -> (loc, scale)``: for ``x`` ``(batch, x_dim)``, ``loc`` and ``scale`` of one shape
``(batch, latent_dim)`` with q(z|x_b) = N(loc_b, diag scale_b^2), so that ``forward(x)`` is
``dist.Normal(*self.loc_scale(x)).to_event(1)`` (write ``forward`` that way). Against a prior
declaring ``kl_from_normal`` (:class:`pyro_vae.components.priors.Prior`), the fused ELBO draws
``z = loc + eps * scale`` as ``Normal.rsample`` does and takes the KL from the prior, without
building q or p; ``tests/inference/test_fused.py`` checks every registered guide that declares it.
"""

from __future__ import annotations

from typing import List, Literal

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pydantic import PositiveFloat, PositiveInt
from torch import nn

from pyro_vae.components.networks import (
    Activation,
    ConvEncoderNet,
    ImageShape,
    image_chw,
    mlp,
    out_width,
    positive_scale,
)
from pyro_vae.errors import ConfigError
from pyro_vae.registry import Registry

GUIDES = Registry("guide")


@GUIDES.register("mean_field")
class MeanFieldGuide(nn.Module):
    """q(z|x) = N(mu(x; phi), diag v(x; psi)^2): the amortized mean-field Normal of the original VAE.

    With ``shared_trunk: false``, ``mu`` and ``v`` are separate networks (phi and psi of the
    notes); with ``true`` they share hidden layers and differ only in the output layer.
    """

    def __init__(
        self,
        x_dim: int,
        latent_dim: int,
        image_shape: ImageShape = None,
        *,
        hidden: List[PositiveInt] = [64],
        activation: Activation = "tanh",
        shared_trunk: bool = True,
    ):
        super().__init__()
        self.latent_dim = latent_dim
        self.shared_trunk = shared_trunk
        if shared_trunk:
            self.trunk = mlp(x_dim, hidden, None, activation)
            self.loc_head = nn.Linear(out_width(x_dim, hidden), latent_dim)
            self.scale_head = nn.Linear(out_width(x_dim, hidden), latent_dim)
        else:
            self.loc_net = mlp(x_dim, hidden, latent_dim, activation)
            self.scale_net = mlp(x_dim, hidden, latent_dim, activation)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu(x)`` and ``v(x)``, each ``(batch, latent_dim)``: q(z|x) = N(mu, diag v^2) (the fast-path hook)."""
        if self.shared_trunk:
            h = self.trunk(x)
            loc, raw = self.loc_head(h), self.scale_head(h)
        else:
            loc, raw = self.loc_net(x), self.scale_net(x)
        return loc, positive_scale(raw)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)


class AmortizedGuide(nn.Module):
    """Base class: an MLP trunk ``h(x)`` (width ``self.width``) and linear heads built by ``head(n)``."""

    def __init__(self, x_dim: int, latent_dim: int, hidden: List[int], activation: str):
        super().__init__()
        self.latent_dim = latent_dim
        self.trunk = mlp(x_dim, hidden, None, activation)
        self.width = out_width(x_dim, hidden)

    def head(self, n: int) -> nn.Linear:
        return nn.Linear(self.width, n)


@GUIDES.register("full_rank")
class FullRankGuide(AmortizedGuide):
    """q(z|x) = N(mu(x), L(x) L(x)^T) with a lower-triangular Cholesky factor L(x) (positive diagonal).

    The network outputs ``latent_dim`` means, ``latent_dim`` diagonal entries of L and the
    ``latent_dim (latent_dim - 1) / 2`` entries below it: any Gaussian posterior is reachable.
    """

    def __init__(self, x_dim: int, latent_dim: int, image_shape: ImageShape = None, *,
                 hidden: List[PositiveInt] = [64], activation: Activation = "tanh"):
        super().__init__(x_dim, latent_dim, hidden, activation)
        self.loc_head = self.head(latent_dim)
        self.diag_head = self.head(latent_dim)
        self.register_buffer("tril_index", torch.tril_indices(latent_dim, latent_dim, offset=-1), persistent=False)
        # latent_dim 1 has nothing below the diagonal (and a zero-width layer warns)
        self.offdiag_head = self.head(self.tril_index.shape[1]) if latent_dim > 1 else None

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        h = self.trunk(x)
        scale_tril = torch.diag_embed(positive_scale(self.diag_head(h)))  # (batch, d, d)
        if self.offdiag_head is not None:
            rows, cols = self.tril_index
            below = torch.zeros_like(scale_tril)
            below[..., rows, cols] = self.offdiag_head(h)
            scale_tril = scale_tril + below
        return dist.MultivariateNormal(self.loc_head(h), scale_tril=scale_tril)


@GUIDES.register("low_rank")
class LowRankGuide(AmortizedGuide):
    """q(z|x) = N(mu(x), F(x) F(x)^T + diag d(x)), F of shape ``(latent_dim, rank)``: ``rank`` correlated directions.

    The network outputs ``latent_dim * (rank + 2)`` numbers instead of the full-rank guide's
    ``latent_dim (latent_dim + 3) / 2``.
    """

    def __init__(self, x_dim: int, latent_dim: int, image_shape: ImageShape = None, *, rank: PositiveInt = 1,
                 hidden: List[PositiveInt] = [64], activation: Activation = "tanh"):
        super().__init__(x_dim, latent_dim, hidden, activation)
        self.rank = rank
        self.loc_head = self.head(latent_dim)
        self.factor_head = self.head(latent_dim * rank)
        self.diag_head = self.head(latent_dim)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        h = self.trunk(x)
        factor = self.factor_head(h).reshape(*h.shape[:-1], self.latent_dim, self.rank)
        return dist.LowRankMultivariateNormal(self.loc_head(h), factor, positive_scale(self.diag_head(h)) ** 2)


@GUIDES.register("student_t")
class StudentTGuide(AmortizedGuide):
    """q(z|x) = prod_i StudentT(z_i; df, mu_i(x), v_i(x)): heavy-tailed; its KL to the prior is always Monte Carlo.

    No prior here has a closed-form KL from a Student-t, so this guide exercises the Monte Carlo
    path; samples are reparameterized through the Gamma mixing variable.
    """

    def __init__(self, x_dim: int, latent_dim: int, image_shape: ImageShape = None, *, df: PositiveFloat = 5.0,
                 hidden: List[PositiveInt] = [64], activation: Activation = "tanh"):
        super().__init__(x_dim, latent_dim, hidden, activation)
        self.register_buffer("df", torch.tensor(float(df)))
        self.loc_head = self.head(latent_dim)
        self.scale_head = self.head(latent_dim)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        h = self.trunk(x)
        loc = self.loc_head(h)
        return dist.StudentT(self.df.expand(loc.shape), loc, positive_scale(self.scale_head(h))).to_event(1)


FLOW_TRANSFORMS = {
    "iaf": T.conditional_affine_autoregressive,
    "spline": T.conditional_spline_autoregressive,
}


@GUIDES.register("flow")
class FlowGuide(AmortizedGuide):
    """q(z|x): a mean-field Normal followed by ``num_flows`` IAF or spline flows conditioned on x.

    z_0 ~ N(mu(x), diag v(x)^2), then z_k = f_k(z_{k-1}; h(x)), k = 1..num_flows.
    Each f_k is a conditional inverse autoregressive flow (``iaf``; Kingma et al. 2016) or a
    conditional neural spline (``spline``; Durkan et al. 2019) from
    ``pyro.distributions.transforms``, conditioned on the trunk features h(x), with the latent
    order reversed between flows. log q(z|x) = log N(z_0) - sum_k log|det df_k/dz_{k-1}|; in the
    IAF direction sampling is one pass and Pyro caches z_0 for the log density of its own sample.
    """

    def __init__(self, x_dim: int, latent_dim: int, image_shape: ImageShape = None, *,
                 num_flows: PositiveInt = 2, transform: Literal["iaf", "spline"] = "iaf",
                 flow_hidden: List[PositiveInt] = [32], hidden: List[PositiveInt] = [64],
                 activation: Activation = "tanh"):
        super().__init__(x_dim, latent_dim, hidden, activation)
        self.loc_head = self.head(latent_dim)
        self.scale_head = self.head(latent_dim)
        # in one dimension an autoregressive flow is elementwise; Pyro's elementwise spline says so without a warning
        make = FLOW_TRANSFORMS[transform] if latent_dim > 1 else T.conditional_spline
        self.flows = nn.ModuleList(make(latent_dim, self.width, hidden_dims=list(flow_hidden)) for _ in range(num_flows))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1), persistent=False)

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        h = self.trunk(x)
        base = dist.Normal(self.loc_head(h), positive_scale(self.scale_head(h))).to_event(1)
        transforms = []
        for k, flow in enumerate(self.flows):
            if k and self.latent_dim > 1:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.condition(h))
        return dist.TransformedDistribution(base, transforms)


@GUIDES.register("conv")
class ConvGuide(nn.Module):
    """q(z|x) = N(mu(h(x)), diag v(h(x))^2) with h a small strided-convolution network over the image.

    The encoder half of the ``conv`` decoder; needs image data. ``channels`` are the widths of
    the convolution layers, each halving height and width.
    """

    def __init__(self, x_dim: int, latent_dim: int, image_shape: ImageShape = None, *,
                 channels: List[PositiveInt] = [16, 32], activation: Activation = "relu"):
        super().__init__()
        chw = image_chw(image_shape, "guide.name")
        if not channels:
            raise ConfigError("guide.channels: 'conv' needs at least one layer (got [])")
        self.trunk = ConvEncoderNet(chw, channels, activation)
        self.loc_head = nn.Linear(self.trunk.out_width, latent_dim)
        self.scale_head = nn.Linear(self.trunk.out_width, latent_dim)

    def loc_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mu(h(x))`` and ``v(h(x))``, each ``(batch, latent_dim)``: q(z|x) = N(mu, diag v^2) (the fast-path hook)."""
        h = self.trunk(x)
        return self.loc_head(h), positive_scale(self.scale_head(h))

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        loc, scale = self.loc_scale(x)
        return dist.Normal(loc, scale).to_event(1)
