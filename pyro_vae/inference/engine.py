"""The training engine: Pyro's traced loss or the fused one (optionally compiled), and the optimizer."""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable

import torch

from pyro_vae.inference.objectives import LOSSES, has_pyro_loss, loss_key, no_pyro_loss, unsupported_reason
from pyro_vae.model import VAE


class FusedELBO:
    """``loss(vae, x, kl_weight)``: the fused loss of one inference config's objective (:data:`LOSSES`),
    optionally ``torch.compile``-d.

    Compiling keeps eager semantics for random numbers (inductor's ``fallback_random``), so a
    compiled step draws the same ``z`` as an eager one; AOTAutograd compiles the backward too.
    The first call runs eagerly: it fills torch's KL-dispatch memo, which the compiled graph then
    reads as a dict lookup instead of breaking the graph on the dispatch search.
    """

    def __init__(self, inference, compile: bool = False):
        self.num_particles = inference.num_particles
        loss, option = LOSSES[loss_key(inference)]
        self.option = option(inference)  # the ELBO's kl, or the Renyi bound's alpha
        self.compiled = compile
        self._calls = 0
        self._eager: Callable = loss
        self._fn: Callable = loss
        if compile:
            with quiet():
                self._fn = torch.compile(loss, dynamic=False, options={"fallback_random": True})

    def __call__(self, vae: VAE, x: torch.Tensor, kl_weight: float = 1.0) -> torch.Tensor:
        self._calls += 1
        if not self.compiled or self._calls == 1:
            return self._eager(vae, x, self.num_particles, self.option, kl_weight)
        # beta as a tensor: a new float each warm-up step would recompile the graph
        with quiet():
            return self._fn(vae, x, self.num_particles, self.option, torch.tensor(float(kl_weight)))


@contextmanager
def quiet():
    """Silence torch's own notices raised while inductor imports and compiles (not ours to fix): deprecations,
    and dynamo's probe of ``.grad`` on the non-leaf tensors of a graph it traces after another was compiled."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.")
        warnings.filterwarnings("ignore", message=r"The \.grad attribute of a Tensor that is not a leaf", category=UserWarning)
        yield


LossFn = Callable[[torch.Tensor, float], torch.Tensor]


def select_engine(cfg, vae: VAE, elbo, probe: torch.Tensor) -> tuple[str, LossFn]:
    """``(engine, loss)`` for ``cfg.train.engine``: ``loss(x, kl_weight)`` is minus the objective summed over ``x``.

    ``auto`` takes the fused loss where it covers the config and Pyro's ``elbo`` otherwise;
    ``fused`` where it does not cover the config is a :class:`ConfigError`, and so is any config
    that would need Pyro's loss for an objective without one (``elbo`` is then ``None``: rws,
    wake_sleep). ``pyro`` reads beta from ``vae.kl_weight`` (``poutine.scale``), the fused loss from
    its argument.
    """
    from pyro_vae.errors import ConfigError

    train = cfg.train
    engine, compile_ = getattr(train, "engine", "auto"), getattr(train, "compile", False)
    reason = unsupported_reason(vae, cfg.inference, probe) if engine != "pyro" else "train.engine=pyro"
    if engine == "fused" and reason is not None:
        raise ConfigError(f"train.engine: 'fused' does not cover {reason}; use train.engine=auto or pyro")
    if compile_ and reason is not None:
        raise ConfigError(f"train.compile: compiles the fused loss only, which does not cover {reason}; "
                          f"set train.compile=false")
    if reason is not None and not has_pyro_loss(cfg.inference):
        raise ConfigError(f"{no_pyro_loss(cfg.inference)}; here the fused engine is out because of {reason}")
    if reason is not None:
        return "pyro", lambda x, kl_weight: elbo.differentiable_loss(vae.model, vae.guide, x)
    fused = FusedELBO(cfg.inference, compile=compile_)
    return "fused", lambda x, kl_weight: fused(vae, x, kl_weight)


def adam(params, lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam``, with its single fused kernel (one pass over all parameters) where torch has one."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):  # older torch, or a device without the fused kernel
        return torch.optim.Adam(params, lr=lr)
