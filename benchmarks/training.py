"""Training throughput: pyro_vae's ``Trainer`` epoch against the references, interleaved in one process.

Every contender trains the same architecture on the same in-memory data; one round times one
epoch of each, in an order rotated every round so load from other processes falls on all alike.
The reported figure is the median examples/s over the rounds after a warm-up epoch.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List

import pyro
import torch

from pyro_vae import validate_config
from pyro_vae.data import Dataset, load_data
from pyro_vae.train import Trainer

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
        spec = {"name": "digits", "binarize": "static" if case.likelihood == "bernoulli" else "none",
                "val_fraction": 0.1, "test_fraction": 0.1}
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
    """One epoch of the real ``pyro_vae.train.Trainer`` (its ``train_epoch``, no validation pass or checkpoint)."""
    from pyro_vae.build import build_vae

    cfg = config(case, **train)
    pyro.set_rng_seed(0)
    trainer = Trainer(cfg, data, build_vae(cfg, data.x_dim), progress=False)

    def epoch() -> int:
        trainer.train_epoch(None)
        trainer.current = None  # what end_epoch does, without its validation pass
        return len(data.train)

    epoch.trainer = trainer
    return epoch


def contenders(case: Case, data: Dataset, compile: bool) -> Dict[str, Callable[[], int]]:
    from pyro_vae.build import build_vae

    pyro.set_rng_seed(0)
    ref = TorchVAE(case.x_dim, case.hidden, case.latent_dim, case.likelihood)
    opt = torch.optim.Adam(ref.parameters(), lr=LR)
    order = torch.Generator().manual_seed(1)
    x = data.train
    out = {
        "torch_eager": lambda: torch_epoch(ref, opt, x, case.batch_size, order),
        "pyro_svi": svi_epoch_fn(build_vae(config(case), data.x_dim), x, case.batch_size, LR, seed=1),
        "pyro_vae[pyro]": trainer_epoch_fn(case, data, engine="pyro"),
        "pyro_vae[fused]": trainer_epoch_fn(case, data, engine="fused"),
    }
    if compile:
        out["pyro_vae[fused+compile]"] = trainer_epoch_fn(case, data, engine="fused", compile=True)
    return out


def interleave(runners: Dict[str, Callable[[], int]], rounds: int, warmup: int = 1,
               bar=None) -> Dict[str, List[float]]:
    """examples/s of each runner per round, after ``warmup`` untimed rounds; the order rotates every round."""
    names = list(runners)
    rates: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            pyro.clear_param_store()  # the Pyro contenders register same-named modules
            start = time.perf_counter()
            n = runners[name]()
            seconds = time.perf_counter() - start
            if r >= warmup:
                rates[name].append(n / seconds)
        if bar is not None:
            bar.update(1)
    return rates


def run_case(case: Case, rounds: int, compile: bool, bar=None) -> Dict:
    data = dataset(case)
    pyro.enable_validation(False)  # the hot loop, as train.validate_args: false
    runners = contenders(case, data, compile)
    rates = interleave(runners, rounds, bar=bar)
    median = {n: statistics.median(v) for n, v in rates.items()}
    flops = case.matmul_flops_per_example()
    return {
        "case": case.name, "likelihood": case.likelihood, "batch_size": case.batch_size,
        "n_train": len(data.train), "rounds": rounds,
        "examples_per_second": median,
        "all_rounds": rates,
        # per-round ratios: a load spike slows the whole round, so it cancels within a round
        "ratio_to_torch_eager": {n: statistics.median(a / b for a, b in zip(v, rates["torch_eager"]))
                                 for n, v in rates.items()},
        "matmul_gflops": {n: m * flops / 1e9 for n, m in median.items()},
    }
