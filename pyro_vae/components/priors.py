"""Priors p(z): each a module returning a Pyro distribution with event shape ``(latent_dim,)``.

Register a new prior here with ``@PRIORS.register("name")``; its keyword-only constructor
arguments are its config keys (``model.prior.<key>``). A prior whose KL from a diagonal Normal
has a closed form also declares it here, as ``kl_from_normal`` (see :class:`Prior`): that is the
whole of the fused ELBO's fast path for it.
"""

from __future__ import annotations

import math
from abc import ABCMeta, abstractmethod
from typing import List, Literal

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pydantic import PositiveFloat, PositiveInt
from pyro.distributions import is_validation_enabled
from torch import nn

from pyro_vae.components.networks import SOFTPLUS_INV_1, positive_scale
from pyro_vae.registry import Registry

PRIORS = Registry("prior")


class Prior(nn.Module):
    r"""Base class: ``forward()`` returns p(z) with batch shape ``()`` and event shape ``(latent_dim,)``.

    The ``data`` plate broadcasts the batch shape. ``bind(vae)`` is called once the whole VAE
    exists, for priors that need other parts of it (a VampPrior needs the guide).

    **Fast-path hook** (optional). A prior with a closed-form KL from a diagonal Normal declares
    the method ``kl_from_normal(loc, scale) -> Tensor`` of shape ``()``: for ``loc`` and
    ``scale`` of one shape ``(batch, latent_dim)``, the parameters of
    :math:`q_b = \mathcal{N}(\mathrm{loc}_b, \mathrm{diag}\,\mathrm{scale}_b^2)`, it returns

    .. math::

        \sum_b \mathrm{KL}(q_b \,\|\, p) = \sum_b \sum_i \mathrm{KL}\big(\mathcal{N}(\mathrm{loc}_{bi},
        \mathrm{scale}_{bi}^2) \,\|\, p_i\big) \quad\text{(the second form for a factorized } p = \textstyle\prod_i p_i)

    computed on the tensors, without building q or p. The fused ELBO
    (:func:`pyro_vae.inference.elbo.fused_elbo_loss`) calls it whenever the guide declares
    ``loc_scale`` (:mod:`pyro_vae.components.guides`), which saves the ~30 us a step that building
    the two distributions costs at the digits shape. The contract, which ``tests/inference/test_fused.py``
    checks for every registered guide and prior that declare hooks:

    - declare it only where torch registers ``kl_divergence(Normal, type(p))``: the fused loss
      must equal Pyro's ``TraceMeanField_ELBO``, which takes the closed form exactly then;
    - write it with torch's operations for the pair, in torch's order, and reduce with one
      ``.sum()``, so that value and gradients equal the generic path's
      (``analytic_kl(q, p)`` of :mod:`pyro_vae.inference.kl`) bit for bit.
    """

    def __init__(self, latent_dim: int):
        super().__init__()
        self.latent_dim = latent_dim

    def bind(self, vae: nn.Module) -> None:
        pass


class FixedPrior(Prior, metaclass=ABCMeta):
    """Base class for a prior without learnable parameters: ``distribution()`` builds p(z) from buffers.

    ``forward`` returns the same distribution object until one built now could differ: a buffer
    replaced (``.to``, ``.double()``) or changed in place (``load_state_dict``, ``copy_``; both bump
    its version), validation switched, or inference mode entered or left. The fused training step
    asks for p(z) every step, where rebuilding it is about a percent of a digits-sized step.
    """

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self._cached: tuple = ((), (), None)  # (key, buffers, distribution)

    @abstractmethod
    def distribution(self) -> dist.Distribution:
        """p(z), built from the buffers: event shape ``(latent_dim,)``, batch shape ``()``."""

    def forward(self) -> dist.Distribution:
        if torch.compiler.is_compiling():  # a compiled graph builds its own (and traces no cache)
            return self.distribution()
        buffers = tuple(self._buffers.values())
        key = (is_validation_enabled(), torch.is_inference_mode_enabled(),
               *[id(b) for b in buffers], *[b._version for b in buffers])
        if key != self._cached[0]:
            # holding the buffers keeps their ids from passing to the tensors that replace them
            self._cached = (key, buffers, self.distribution())
        return self._cached[2]


@PRIORS.register("normal")
class NormalPrior(FixedPrior):
    """Standard Normal p(z) = N(0, I): the classic VAE prior, with a closed-form KL to a Normal guide."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def distribution(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)

    def kl_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The fast-path hook (:class:`Prior`): :func:`kl_normal_normal` against the buffers (0 and 1)."""
        return kl_normal_normal(loc, scale, self.loc, self.scale)


def kl_normal_normal(loc: torch.Tensor, scale: torch.Tensor, prior_loc: torch.Tensor,
                     prior_scale: torch.Tensor) -> torch.Tensor:
    r"""``sum KL(N(loc, scale^2) || N(prior_loc, prior_scale^2))`` over every element, shape ``()``.

    ``loc``, ``scale``: ``(batch, latent_dim)``; ``prior_loc``, ``prior_scale``: ``(latent_dim,)``,
    broadcast over the batch. Per element, with :math:`r = (\mathrm{scale} / \mathrm{prior\_scale})^2`,

    .. math::

        \mathrm{KL} = \tfrac12 \Big(r + \big(\tfrac{\mathrm{loc} - \mathrm{prior\_loc}}{\mathrm{prior\_scale}}\big)^2
                      - 1 - \log r\Big),

    in the operations and order of torch's ``_kl_normal_normal`` (bit for bit its values and gradients).
    """
    var_ratio = (scale / prior_scale).pow(2)
    t1 = ((loc - prior_loc) / prior_scale).pow(2)
    return (0.5 * (var_ratio + t1 - 1 - var_ratio.log())).sum()


@PRIORS.register("student_t")
class StudentTPrior(FixedPrior):
    """Heavy-tailed p(z) = prod_i StudentT(z_i; df, 0, 1); no closed-form KL, so the ELBO uses Monte Carlo."""

    def __init__(self, latent_dim: int, *, df: PositiveFloat = 3.0):
        super().__init__(latent_dim)
        self.register_buffer("df", torch.full((latent_dim,), float(df)))
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))

    def distribution(self) -> dist.Distribution:
        return dist.StudentT(self.df, self.loc, self.scale).to_event(1)


@PRIORS.register("laplace")
class LaplacePrior(FixedPrior):
    """Sparse-leaning p(z) = prod_i Laplace(z_i; 0, scale); torch has the closed-form KL from a Normal guide."""

    def __init__(self, latent_dim: int, *, scale: PositiveFloat = 1.0):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.full((latent_dim,), float(scale)))

    def distribution(self) -> dist.Distribution:
        return dist.Laplace(self.loc, self.scale).to_event(1)

    def kl_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        r"""The fast-path hook (:class:`Prior`): ``sum KL(N(loc, scale^2) || Laplace(m, b))`` over every element
        of ``loc``, ``scale`` ``(batch, latent_dim)``, with ``m``, ``b`` the buffers. Per element, with
        :math:`d = \mathrm{loc} - m`, :math:`\sigma = \mathrm{scale}` and
        :math:`\mathbb{E}_q|z - m| = \sigma\sqrt{2/\pi}\, e^{-d^2/2\sigma^2} + d\,\mathrm{erf}(d/\sqrt2\sigma)`,

        .. math::

            \mathrm{KL} = -\log\frac{\sigma}{b} + \frac{\mathbb{E}_q|z - m|}{b} - \tfrac12\Big(1 + \log\frac{\pi}{2}\Big),

        in the operations and order of torch's ``_kl_normal_laplace`` (the order matters for the gradient
        of ``scale``, summed over its three uses as autograd meets them): bit for bit its values and gradients.
        """
        loc_diff = loc - self.loc
        scale_ratio = scale / self.scale
        loc_diff_scale_ratio = loc_diff / scale
        t1 = torch.log(scale_ratio)
        t2 = math.sqrt(2 / math.pi) * scale * torch.exp(-0.5 * loc_diff_scale_ratio.pow(2))
        t3 = loc_diff * torch.erf(math.sqrt(0.5) * loc_diff_scale_ratio)
        return (-t1 + (t2 + t3) / self.scale - (0.5 * (1 + math.log(0.5 * math.pi)))).sum()


@PRIORS.register("learned_normal")
class LearnedNormalPrior(Prior):
    """p(z) = N(m, diag s^2) with learnable m and s (starting at N(0, I)); closed-form KL to a Normal guide."""

    def __init__(self, latent_dim: int):
        super().__init__(latent_dim)
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.raw_scale = nn.Parameter(torch.full((latent_dim,), SOFTPLUS_INV_1))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, positive_scale(self.raw_scale)).to_event(1)

    def kl_from_normal(self, loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """The fast-path hook (:class:`Prior`): :func:`kl_normal_normal` against N(m, diag s^2), s computed as ``forward`` does."""
        return kl_normal_normal(loc, scale, self.loc, positive_scale(self.raw_scale))


@PRIORS.register("mixture")
class MixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag s_k^2): ``num_components`` learnable Gaussians and weights.

    Means start at N(0, ``init_spread``^2 I) draws so the components can separate; there is no
    closed-form KL to any guide, so the ELBO uses Monte Carlo for this site.
    """

    def __init__(self, latent_dim: int, *, num_components: PositiveInt = 10, init_spread: PositiveFloat = 1.0):
        super().__init__(latent_dim)
        self.logits = nn.Parameter(torch.zeros(num_components))
        self.locs = nn.Parameter(init_spread * torch.randn(num_components, latent_dim))
        self.raw_scales = nn.Parameter(torch.full((num_components, latent_dim), SOFTPLUS_INV_1))

    def forward(self) -> dist.Distribution:
        components = dist.Normal(self.locs, positive_scale(self.raw_scales)).to_event(1)  # batch (K,), event (D,)
        return dist.MixtureSameFamily(dist.Categorical(logits=self.logits), components)


class ExpandedMixture(dist.MixtureSameFamily):
    """``MixtureSameFamily`` that evaluates components on ``z`` expanded to ``(..., K, latent_dim)``.

    torch passes ``(..., 1, latent_dim)`` and relies on broadcasting, which a guide flow conditioned
    on its K pseudo-inputs cannot do (Pyro's autoregressive networks expand their context to the
    input's shape, not the other way round).
    """

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        x = super()._pad(x)  # (..., 1, latent_dim)
        return x.expand(*x.shape[:-2], self._num_component, x.shape[-1])


@PRIORS.register("vamp")
class VampPrior(Prior):
    """VampPrior (Tomczak & Welling 2018): p(z) = (1/K) sum_k q(z | u_k), the guide at K learnable pseudo-inputs.

    The pseudo-inputs u (``(num_components, x_dim)``, initialized uniform in [0, 1] like image
    data) belong to this module, so they are model parameters; the guide network is shared with
    the VAE's encoder (``bind``), so the prior moves whenever the guide does.
    """

    def __init__(self, latent_dim: int, *, num_components: PositiveInt = 50):
        super().__init__(latent_dim)
        self.num_components = num_components
        self.encoder = None
        self.pseudo_inputs = None

    def bind(self, vae: nn.Module) -> None:
        # a plain attribute, not a submodule: the encoder is already registered (and optimized) as the guide's
        object.__setattr__(self, "encoder", vae.encoder)
        self.pseudo_inputs = nn.Parameter(torch.rand(self.num_components, vae.x_dim))

    def forward(self) -> dist.Distribution:
        if self.encoder is None:
            raise RuntimeError("VampPrior needs bind(vae) before use: build it with build_vae")
        components = self.encoder(self.pseudo_inputs)  # batch (K,), event (latent_dim,)
        mixing = dist.Categorical(logits=torch.zeros(self.num_components, device=self.pseudo_inputs.device))
        return ExpandedMixture(mixing, components)


FLOW_TRANSFORMS = {
    "spline_autoregressive": T.spline_autoregressive,
    "affine_autoregressive": T.affine_autoregressive,
    "spline_coupling": T.spline_coupling,
}


@PRIORS.register("flow")
class FlowPrior(Prior):
    """p(z): N(0, I) pushed through ``num_flows`` learnable normalizing flows (autoregressive or coupling).

    u ~ N(0, I), z = f_K(...f_1(u)).

    log p(z) = log N(f^{-1}(z); 0, I) + log|det d f^{-1}/dz|. The ELBO evaluates log p(z) at
    the guide's samples, so the autoregressive kinds run in the MAF direction (density in one
    pass, sampling in ``latent_dim`` passes). Latent order is reversed between flows; with
    ``latent_dim`` 1 every flow is Pyro's elementwise spline (what any 1-D flow reduces to).
    """

    def __init__(self, latent_dim: int, *, num_flows: PositiveInt = 2,
                 transform: Literal["spline_autoregressive", "affine_autoregressive", "spline_coupling"] = "spline_autoregressive",
                 hidden: List[PositiveInt] = [32]):
        super().__init__(latent_dim)
        self.register_buffer("loc", torch.zeros(latent_dim))
        self.register_buffer("scale", torch.ones(latent_dim))
        self.register_buffer("reverse", torch.arange(latent_dim - 1, -1, -1), persistent=False)
        if latent_dim == 1:
            self.flows = nn.ModuleList(T.spline(1) for _ in range(num_flows))
        else:
            make = FLOW_TRANSFORMS[transform]
            self.flows = nn.ModuleList(make(latent_dim, hidden_dims=list(hidden)) for _ in range(num_flows))
        self.maf = transform != "spline_coupling" and latent_dim > 1

    def forward(self) -> dist.Distribution:
        transforms = []
        for k, flow in enumerate(self.flows):
            if k and self.latent_dim > 1:
                transforms.append(T.Permute(self.reverse))
            transforms.append(flow.inv if self.maf else flow)
        return dist.TransformedDistribution(dist.Normal(self.loc, self.scale).to_event(1), transforms)
