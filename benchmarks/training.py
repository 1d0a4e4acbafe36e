"""Training throughput: pyro_vae's ``Trainer`` epoch against the references, interleaved in one process.

Every contender trains the same architecture on the same in-memory data; one round times one
epoch of each, in an order rotated every round so load from other processes falls on all alike.
The reported figure is the median examples/s over the rounds after a warm-up epoch; the warm-up
epoch's own time (which holds any jit or ``torch.compile`` compilation) is reported once beside it.

NumPyro (``numpyro_peer``: "jit per step" and "epoch in lax.scan") joins as ``numpyro[jit]`` and
``numpyro[scan]`` when ``import numpyro`` works (the ``bench`` extra); ``peer_status`` says why not
otherwise. Every contender runs on one device (``cpu`` or ``cuda``); on CUDA the clock is read after
``torch.cuda.synchronize()`` and the peak of ``torch.cuda.max_memory_allocated`` is reported.
"""

from __future__ import annotations

import importlib.util
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import pyro
import torch

from pyro_vae import validate_config
from pyro_vae.data import DATASETS, Dataset, load_data
from pyro_vae.training.trainer import Trainer

from .reference import TorchVAE, svi_epoch_fn, torch_epoch

LR = 1e-3


@dataclass
class Case:
    """One measured shape: ``x_dim``-``hidden``-``latent_dim`` MLPs on ``data`` at ``batch_size``."""

    name: str
    data: str  # "digits" or "generated"
    x_dim: int
    hidden: int
    latent_dim: int
    likelihood: str
    batch_size: int
    n_train: int = 4096

    def matmul_flops_per_example(self) -> int:
        """Multiply-adds of the four weight matrices (encoder trunk + heads, decoder) x 2 flops x 3 (forward, 2x backward)."""
        d, h, z = self.x_dim, self.hidden, self.latent_dim
        return 2 * 3 * (d * h + 2 * h * z + z * h + h * d)


CASES = [
    Case("digits 64-64-2", "digits", 64, 64, 2, "normal", 128),
    Case("digits 64-64-2", "digits", 64, 64, 2, "normal", 32),
    Case("MNIST-shaped 784-400-50", "generated", 784, 400, 50, "bernoulli", 128),
    Case("MNIST-shaped 784-400-50", "generated", 784, 400, 50, "bernoulli", 32),
    Case("MNIST-shaped 784-400-50", "generated", 784, 400, 50, "normal", 128),
    Case("MNIST-shaped 784-400-50", "generated", 784, 400, 50, "normal", 32),
]
QUICK = [CASES[0], CASES[2]]


def dataset(case: Case, seed: int = 0) -> Dataset:
    """The case's training data: the digits, or uniform grey values (Bernoulli draws of them for ``bernoulli``)."""
    if case.data == "digits":
        spec = DATASETS.resolve({"name": "digits", "binarize": "static" if case.likelihood == "bernoulli" else "none",
                                 "val_fraction": 0.1, "test_fraction": 0.1}, where="data")
        return load_data(spec, seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(case.n_train, case.x_dim, generator=g)
    if case.likelihood == "bernoulli":
        x = torch.bernoulli(x, generator=g)
    return Dataset(name="generated", train=x, val=x[:256], test=x[:0])


def config(case: Case, **train):
    return validate_config({
        "model": {"latent_dim": case.latent_dim, "decoder": {"hidden": [case.hidden]}, "likelihood": case.likelihood},
        "guide": {"hidden": [case.hidden]}, "optim": {"lr": LR},
        "train": {"batch_size": case.batch_size, **train}})


def trainer_epoch_fn(case: Case, data: Dataset, **train) -> Callable[[], int]:
    """One epoch of the real ``pyro_vae.training.trainer.Trainer`` (its ``train_epoch``, no validation pass or checkpoint).

    The VAE goes to ``train.device`` as ``pyro_vae.build.prepare`` puts it; the data stay on the CPU
    and the Trainer moves each batch, as it does in ``pyro-vae train``.
    """
    from pyro_vae.build import build_vae
    from pyro_vae.build import resolve_device

    cfg = config(case, **train)
    pyro.set_rng_seed(0)
    vae = build_vae(cfg, data.x_dim).to(resolve_device(cfg.train.device))
    trainer = Trainer.from_config(cfg, data, vae, progress=False)

    def epoch() -> int:
        trainer.train_epoch(None)
        trainer.current = None  # what end_epoch does, without its validation pass
        return len(data.train)

    epoch.trainer = trainer
    return epoch


def configure_jax(threads: Optional[int], device: str = "cpu") -> str:
    """Set JAX up beside torch, before anything else starts JAX; returns its thread setting, for the report.

    XLA ignores ``XLA_FLAGS`` thread limits for jitted code but sizes its CPU thread pool by the
    affinity mask when its backend starts. So for ``threads == 1`` the backend is started with this
    thread narrowed to one core, then every thread (the pool's too) may run on every core again: one
    compute thread that the scheduler moves like torch's one. Otherwise both keep their defaults (all
    usable cores). On CUDA, JAX would take 75% of the GPU's memory up front and starve torch's
    contenders: it allocates on demand instead.
    """
    if device == "cuda":
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if threads != 1:
        return "XLA's default pool (all usable cores)"
    if importlib.util.find_spec("jax") is None:
        return "jax not installed"
    if "jax" in sys.modules or not hasattr(os, "sched_setaffinity"):
        return "XLA's default pool (could not be sized: jax already imported, or no sched_setaffinity)"
    cores = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(cores)})
    try:
        import jax

        jax.devices("cpu")  # starts the CPU backend and its pool, sized to the one core
    finally:
        for task in os.listdir("/proc/self/task"):
            try:
                os.sched_setaffinity(int(task), cores)
            except OSError:  # a thread that has ended since the listing
                pass
    return "1 (XLA's CPU pool started under a one-core affinity mask, then unpinned)"


def peer_status(device: str = "cpu") -> Dict:
    """Whether the NumPyro peer can run on ``device``: ``{"available", "note"}`` (+ versions when it can)."""
    try:
        import jax
        import numpyro

        from . import numpyro_peer
    except ImportError as err:
        return {"available": False, "note": f"numpyro not installed (no module {err.name!r}): "
                                            f"pip install -e '.[bench]' for the numpyro[jit] and numpyro[scan] columns"}
    try:
        jax_device = numpyro_peer.device_of(device)
    except RuntimeError:
        return {"available": False, "note": f"JAX has no {device} backend here (jax[cuda12] adds one): "
                                            f"numpyro columns skipped"}
    return {"available": True, "jax": jax.__version__, "numpyro": numpyro.__version__, "jax_device": str(jax_device),
            "note": f"numpyro {numpyro.__version__} on jax {jax.__version__} ({jax_device})"}


def contenders(case: Case, data: Dataset, compile: bool, device: str = "cpu",
               numpyro: bool = False) -> Dict[str, Callable[[], int]]:
    """``{name: one epoch}``; ``device`` is a resolved ``cpu`` or ``cuda``; ``numpyro`` adds the NumPyro peer."""
    from pyro_vae.build import build_vae

    pyro.set_rng_seed(0)
    ref = TorchVAE(case.x_dim, case.hidden, case.latent_dim, case.likelihood).to(device)
    opt = torch.optim.Adam(ref.parameters(), lr=LR)
    order = torch.Generator().manual_seed(1)
    x = data.train.to(device)
    out = {
        "torch_eager": lambda: torch_epoch(ref, opt, x, case.batch_size, order),
        "pyro_svi": svi_epoch_fn(build_vae(config(case), data.x_dim).to(device), x, case.batch_size, LR, seed=1),
        "pyro_vae[pyro]": trainer_epoch_fn(case, data, engine="pyro", device=device),
        "pyro_vae[fused]": trainer_epoch_fn(case, data, engine="fused", device=device),
    }
    if compile:
        out["pyro_vae[fused+compile]"] = trainer_epoch_fn(case, data, engine="fused", compile=True, device=device)
    if numpyro:
        from .numpyro_peer import VARIANTS

        for name, make in VARIANTS.items():
            out[name] = make(data.train.numpy(), case.hidden, case.latent_dim, case.likelihood, case.batch_size, LR,
                             seed=1, device=device)
    return out


def interleave(runners: Dict[str, Callable[[], int]], rounds: int, warmup: int = 1,
               bar=None, device: str = "cpu") -> Dict[str, Dict]:
    """examples/s of each runner per round after ``warmup`` untimed rounds (the order rotates every round);
    also the first (warm-up) epoch's seconds and, on CUDA, the peak allocated memory (MB) of each runner."""
    names = list(runners)
    rates: Dict[str, List[float]] = {n: [] for n in names}
    first: Dict[str, float] = {}
    peak: Dict[str, float] = {n: 0.0 for n in names}
    cuda = device == "cuda"
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            pyro.clear_param_store()  # the Pyro contenders register same-named modules
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            n = runners[name]()
            if cuda:  # kernels are asynchronous: the epoch ends when the device is done
                torch.cuda.synchronize()
                peak[name] = max(peak[name], torch.cuda.max_memory_allocated() / 2 ** 20)
            seconds = time.perf_counter() - start
            first.setdefault(name, seconds)
            if r >= warmup:
                rates[name].append(n / seconds)
        if bar is not None:
            bar.update(1)
    return {"rates": rates, "first_epoch_seconds": first, **({"peak_memory_mb": peak} if cuda else {})}


def run_case(case: Case, rounds: int, compile: bool, bar=None, device: str = "cpu", numpyro: bool = False) -> Dict:
    data = dataset(case)
    pyro.enable_validation(False)  # the hot loop, as train.validate_args: false
    runners = contenders(case, data, compile, device, numpyro)
    timed = interleave(runners, rounds, bar=bar, device=device)
    rates = timed["rates"]
    median = {n: statistics.median(v) for n, v in rates.items()}
    flops = case.matmul_flops_per_example()
    return {
        "case": case.name, "likelihood": case.likelihood, "batch_size": case.batch_size,
        "n_train": len(data.train), "rounds": rounds, "device": device,
        "examples_per_second": median,
        "all_rounds": rates,
        # the warm-up epoch: compilation (jit, torch.compile) shows here, not in the steady-state rates
        "first_epoch_seconds": timed["first_epoch_seconds"],
        # torch's allocator only: JAX's memory is not in torch.cuda.max_memory_allocated
        **({"peak_memory_mb": {n: v for n, v in timed["peak_memory_mb"].items() if not n.startswith("numpyro")}}
           if "peak_memory_mb" in timed else {}),
        # per-round ratios: a load spike slows the whole round, so it cancels within a round
        "ratio_to_torch_eager": {n: statistics.median(a / b for a, b in zip(v, rates["torch_eager"]))
                                 for n, v in rates.items()},
        "matmul_gflops": {n: m * flops / 1e9 for n, m in median.items()},
    }
