"""The NumPyro peer: the reference VAE as a NumPyro model/guide, trained by ``numpyro.infer.SVI`` (the ``bench`` extra).

Same architecture and objective as ``reference.TorchVAE``: a tanh MLP trunk with ``loc`` and
``softplus(.) + MIN_SCALE`` heads for q(z|x) = N(loc, diag(scale^2)), a tanh MLP decoder, a
Normal(fixed scale) or Bernoulli(logits) likelihood, the closed-form KL to N(0, I)
(``TraceMeanField_ELBO`` finds the registered Normal/Normal KL), one reparameterized draw, the loss
per data point (``handlers.scale(1/B)``), one Adam with torch's defaults. Parameters are plain
``jax.numpy`` arrays registered with ``numpyro.param``, so no flax or haiku is needed.

Two training loops, as a JAX user would write them:

- ``jit_epoch_fn`` -- "jit per step": ``jax.jit`` of ``svi.update`` (batch gather included),
  a Python loop over the batches;
- ``scan_epoch_fn`` -- "epoch in lax.scan": one jitted function runs every full batch of the epoch
  in ``jax.lax.scan`` (a last short batch, if any, takes one jitted step);
- ``vmap_scan_epoch_fn`` -- that epoch for R seeds at once, ``jax.vmap`` over their SVI states and
  batch orders (the seeds benchmark's NumPyro side of "R seeds in one step").

Both take the batch order from a seeded host permutation, keep the data as one device array made
once, and ``block_until_ready`` before returning, so the caller's clock sees finished work.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer import SVI, TraceMeanField_ELBO

from .reference import MIN_SCALE

Params = Dict[str, jnp.ndarray]


def widths_of(hidden: Union[int, Sequence[int]]) -> list:
    return [hidden] if isinstance(hidden, int) else list(hidden)


def layer_shapes(x_dim: int, hidden: Union[int, Sequence[int]], latent_dim: int) -> Dict[str, tuple]:
    """``{name: (fan_in, fan_out)}`` of every linear layer, named as ``TorchVAE``'s modules."""
    widths = widths_of(hidden)
    shapes = {f"trunk.{2 * i}": io for i, io in enumerate(zip([x_dim, *widths[:-1]], widths))}
    shapes["loc_head"] = shapes["scale_head"] = (widths[-1], latent_dim)
    dec = [latent_dim, *widths]
    shapes.update({f"decoder.{2 * i}": io for i, io in enumerate(zip(dec[:-1], dec[1:]))})
    shapes[f"decoder.{2 * len(widths)}"] = (widths[-1], x_dim)
    return shapes


def init_params(key, x_dim: int, hidden: Union[int, Sequence[int]], latent_dim: int) -> Params:
    """``nn.Linear``'s default initialization: weight (fan_in, fan_out) and bias ~ U(+-1/sqrt(fan_in))."""
    params = {}
    for name, (fan_in, fan_out) in layer_shapes(x_dim, hidden, latent_dim).items():
        key, kw, kb = jax.random.split(key, 3)
        bound = 1.0 / math.sqrt(fan_in)
        params[f"{name}.weight"] = jax.random.uniform(kw, (fan_in, fan_out), minval=-bound, maxval=bound)
        params[f"{name}.bias"] = jax.random.uniform(kb, (fan_out,), minval=-bound, maxval=bound)
    return params


def params_from_torch(ref) -> Params:
    """A ``TorchVAE``'s weights as NumPyro parameters (weights transposed to (fan_in, fan_out))."""
    return {name: jnp.asarray(t.detach().cpu().numpy().T if name.endswith("weight") else t.detach().cpu().numpy())
            for name, t in ref.state_dict().items()}


def _mlp(h: jnp.ndarray, layers: Sequence[str], param: Callable, final_tanh: bool) -> jnp.ndarray:
    """``h @ W + b`` through ``layers`` (each W, b a ``param(name)``), tanh after each (and after the last if asked)."""
    for i, name in enumerate(layers):
        h = h @ param(f"{name}.weight") + param(f"{name}.bias")
        if final_tanh or i < len(layers) - 1:
            h = jnp.tanh(h)
    return h


def model_and_guide(x_dim: int, hidden: Union[int, Sequence[int]], latent_dim: int, likelihood: str,
                    params0: Params, scale: float = 0.1):
    """``(model(x), guide(x))`` with sites "z" (latent_dim,) and "x" (x_dim,) in plate "data" of size B = len(x).

    ``params0`` are the initial values ``svi.init`` registers; both sites are scaled by 1/B so the
    SVI loss is minus the ELBO per data point, as ``TorchVAE.loss``.
    """
    names = list(layer_shapes(x_dim, hidden, latent_dim))
    trunk = [n for n in names if n.startswith("trunk.")]
    decoder = [n for n in names if n.startswith("decoder.")]

    def param(name):
        return numpyro.param(name, params0[name])

    def model(x):
        batch = x.shape[0]
        with numpyro.plate("data", batch), handlers.scale(scale=1.0 / batch):
            z = numpyro.sample("z", dist.Normal(jnp.zeros(latent_dim), 1.0).to_event(1))
            out = _mlp(z, decoder, param, final_tanh=False)
            fn = dist.Bernoulli(logits=out) if likelihood == "bernoulli" else dist.Normal(out, scale)
            numpyro.sample("x", fn.to_event(1), obs=x)

    def guide(x):
        batch = x.shape[0]
        with numpyro.plate("data", batch), handlers.scale(scale=1.0 / batch):
            h = _mlp(x, trunk, param, final_tanh=True)
            loc = _mlp(h, ["loc_head"], param, final_tanh=False)
            sd = jax.nn.softplus(_mlp(h, ["scale_head"], param, final_tanh=False)) + MIN_SCALE
            numpyro.sample("z", dist.Normal(loc, sd).to_event(1))

    return model, guide


def svi(model, guide, lr: float) -> SVI:
    """``SVI`` with the closed-form KL (``TraceMeanField_ELBO``) and Adam (torch's betas and eps)."""
    return SVI(model, guide, numpyro.optim.Adam(lr, b1=0.9, b2=0.999, eps=1e-8), TraceMeanField_ELBO())


def device_of(name: str):
    """The JAX device for a torch device type: ``cpu`` -> JAX's CPU, ``cuda`` -> its first GPU (else RuntimeError)."""
    return jax.devices("gpu" if name == "cuda" else "cpu")[0]


class _Peer:
    """What both loops share: the data on the device, the SVI state, the seeded batch order."""

    def __init__(self, x: np.ndarray, hidden, latent_dim: int, likelihood: str, batch_size: int, lr: float,
                 seed: int, device: str, params0=None):
        self.device = device_of(device)
        self.x = jax.device_put(jnp.asarray(np.asarray(x, dtype=np.float32)), self.device)
        self.n, x_dim = self.x.shape
        self.batch_size = batch_size
        with jax.default_device(self.device):
            if params0 is None:
                params0 = init_params(jax.random.PRNGKey(seed), x_dim, hidden, latent_dim)
            model, guide = model_and_guide(x_dim, hidden, latent_dim, likelihood, params0)
            self.svi = svi(model, guide, lr)
            state = self.svi.init(jax.random.PRNGKey(seed + 1), self.x[:batch_size])
        # committed to the device like every later state, or jit would compile each function twice
        self.state = jax.device_put(state, self.device)
        self.order = np.random.default_rng(seed + 2)
        self.step = _gathered(self.svi.update)

    def params(self) -> Params:
        return self.svi.get_params(self.state)


def jit_epoch_fn(x, hidden, latent_dim: int, likelihood: str, batch_size: int, lr: float, seed: int = 0,
                 device: str = "cpu", params0=None) -> Callable[[], int]:
    """"jit per step": one epoch = a Python loop of jitted ``svi.update`` calls; returns examples seen."""
    peer = _Peer(x, hidden, latent_dim, likelihood, batch_size, lr, seed, device, params0)

    def epoch() -> int:
        total = jnp.zeros(())
        perm = peer.order.permutation(peer.n)
        batches = [perm[i:i + batch_size] for i in range(0, peer.n, batch_size)]
        for idx in batches:
            peer.state, loss = peer.step(peer.state, peer.x, idx)
            total = total + loss
        jax.block_until_ready((peer.state, total))
        epoch.mean_loss = float(total) / len(batches)
        return peer.n

    epoch.peer, epoch.mean_loss = peer, math.nan
    return epoch


def _gathered(update: Callable) -> Callable:
    """``update`` with the batch gather inside, jitted: ``(state, x, idx) -> update(state, x[idx])``, as the
    torch loop's ``x[idx]`` precedes its step."""
    return jax.jit(lambda state, x, idx: update(state, x[idx]))


def _scanned(update: Callable) -> Callable:
    """One jitted ``lax.scan`` of ``update`` over the batches: ``(state, x, idx) -> (state, losses)``, ``idx``
    ``(num_batches, ...)``, step k on ``x[idx[k]]``."""
    @jax.jit
    def run(state, x, idx):
        return jax.lax.scan(lambda state, i: update(state, x[i]), state, idx)

    return run


def _scan_epoch(run: Callable, step: Callable, state, x, perm: np.ndarray, batch_size: int):
    """One epoch in the order ``perm`` ``([R,] n)``: its full batches in ``run`` (:func:`_scanned`), a short last
    batch, as torch's ``randperm(n).split(B)`` keeps it, in ``step`` (:func:`_gathered`); returns the state and the
    summed losses ``([R])``, finished."""
    n = perm.shape[-1]
    full = n // batch_size
    batches = perm[..., :full * batch_size].reshape(*perm.shape[:-1], full, batch_size)
    state, losses = run(state, x, np.moveaxis(batches, -2, 0))  # (num_batches, [R,] B)
    total = losses.sum(0)
    if full * batch_size < n:
        state, loss = step(state, x, perm[..., full * batch_size:])
        total = total + loss
    jax.block_until_ready((state, total))
    return state, total


def scan_epoch_fn(x, hidden, latent_dim: int, likelihood: str, batch_size: int, lr: float, seed: int = 0,
                  device: str = "cpu", params0=None) -> Callable[[], int]:
    """"epoch in lax.scan": one jitted ``lax.scan`` over the epoch's full batches; returns examples seen."""
    peer = _Peer(x, hidden, latent_dim, likelihood, batch_size, lr, seed, device, params0)
    run = _scanned(peer.svi.update)

    def epoch() -> int:
        peer.state, total = _scan_epoch(run, peer.step, peer.state, peer.x, peer.order.permutation(peer.n),
                                        batch_size)
        epoch.mean_loss = float(total) / math.ceil(peer.n / batch_size)
        return peer.n

    epoch.peer, epoch.mean_loss = peer, math.nan
    return epoch


def vmap_scan_epoch_fn(x, hidden, latent_dim: int, likelihood: str, batch_size: int, lr: float,
                       seeds: Sequence[int] = (0,), device: str = "cpu") -> Callable[[], int]:
    """"R seeds in one vmapped scan": ``scan_epoch_fn``'s epoch for each seed (its own initial parameters, z
    draws and batch order), ``jax.vmap`` over the R SVI states ``(R, ...)`` and batch orders ``(R, n)``, one
    jitted call an epoch; returns examples seen by all R models together."""
    peers = [_Peer(x, hidden, latent_dim, likelihood, batch_size, lr, seed, device) for seed in seeds]
    first, orders = peers[0], [p.order for p in peers]
    # SVI.update reads the parameters from its state, not the closure's initial values: one SVI steps all R
    update = jax.vmap(first.svi.update)
    run, step = _scanned(update), _gathered(update)

    def epoch() -> int:
        perms = np.stack([order.permutation(first.n) for order in orders])
        epoch.state, totals = _scan_epoch(run, step, epoch.state, first.x, perms, batch_size)
        epoch.mean_losses = np.asarray(totals) / math.ceil(first.n / batch_size)
        return len(orders) * first.n

    # the other peers' data copies go with them: every model reads first.x
    epoch.state = jax.device_put(jax.tree_util.tree_map(lambda *leaves: jnp.stack(leaves), *[p.state for p in peers]),
                                 first.device)
    epoch.mean_losses = None
    return epoch


VARIANTS = {"numpyro[jit]": jit_epoch_fn, "numpyro[scan]": scan_epoch_fn}
