"""Fashion-MNIST: VAE, IWAE k=5 and k=50 trained by pyro_vae for a fixed budget, next to hand-written PyTorch.

Burda et al.'s one-stochastic-layer architecture (784-200-200-50, tanh), dynamically binarized
pixels, 50k/10k/10k split; every model is scored by the same estimator, IWAE with K=5000 draws
(``pyro_vae.evaluation.iwae.iwae``) on the test split. Not part of CI (hours at full size); ``--smoke``
is the two-epoch version that ``tests/test_benchmarks_smoke.py`` runs when the data are installed.

    python -m benchmarks.fashion_mnist --epochs 20
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Dict

import pyro
import torch
from tqdm.auto import tqdm

from pyro_vae import validate_config
from pyro_vae.build import build_vae
from pyro_vae.data import binarize_batch, load_data
from pyro_vae.evaluation.iwae import iwae
from pyro_vae.training.trainer import Trainer

from . import report
from .reference import TorchVAE, load_into_pyro_vae, torch_epoch

HIDDEN = [200, 200]
LATENT = 50


def config(objective: str, num_particles: int, args) -> Dict:
    return {"seed": args.seed,
            "data": {"name": "fashion_mnist", "binarize": "dynamic", **({"path": args.path} if args.path else {}),
                     **({"val_size": args.val_size} if args.val_size is not None else {})},
            "model": {"latent_dim": LATENT, "likelihood": "bernoulli",
                      "decoder": {"hidden": HIDDEN, "activation": "tanh"}},
            "guide": {"hidden": HIDDEN, "activation": "tanh"},
            "inference": {"objective": objective, "num_particles": num_particles},
            "optim": {"lr": args.lr},
            # a fixed budget, the same for every model (and for the hand-written reference): no early stop
            "train": {"epochs": args.epochs, "batch_size": args.batch_size, "stop": "epochs", "restore_best": False}}


@torch.no_grad()
def test_log_likelihood(vae, x: torch.Tensor, samples: int) -> Dict[str, float]:
    """Mean IWAE-``samples`` bound on log p(x) over the test rows, with its standard error."""
    vae.eval()
    values = torch.cat([iwae(vae.model, vae.guide, xb, samples) for xb in tqdm(
        x.split(64), desc=f"IWAE-{samples}", file=sys.stderr, leave=False)])
    return {"test_log_likelihood": float(values.mean()), "standard_error": float(values.std() / math.sqrt(len(values))),
            "values": values}


def paired_difference(values: torch.Tensor, reference: torch.Tensor) -> Dict[str, float]:
    """Mean per-image difference to the reference and its standard error: the models score the same test
    images, so the image-to-image spread (most of each model's own standard error) cancels."""
    d = (values - reference).double()
    return {"difference": float(d.mean()), "difference_se": float(d.std() / math.sqrt(len(d)))}


def load(cfg, args):
    data = load_data(cfg.data, cfg.seed)
    if args.train_points is not None:  # a smaller budget: the first rows of train and val
        data.train, data.val = data.train[: args.train_points], data.val[: args.train_points // 2]
    return data


def train_pyro_vae(name: str, objective: str, k: int, args, test: torch.Tensor) -> Dict:
    cfg = validate_config(config(objective, k, args))
    data = load(cfg, args)
    pyro.set_rng_seed(cfg.seed)
    vae = build_vae(cfg, data.x_dim)
    trainer = Trainer.from_config(cfg, data, vae, progress=False)
    start = time.perf_counter()
    trainer.fit()
    seconds = time.perf_counter() - start
    return {"model": name, "engine": trainer.engine, "epochs": args.epochs, "train_seconds": seconds,
            **test_log_likelihood(vae, test, args.samples)}


def train_reference(args, test: torch.Tensor) -> Dict:
    cfg = validate_config(config("elbo", 1, args))
    data = load(cfg, args)
    pyro.set_rng_seed(cfg.seed)
    ref = TorchVAE(data.x_dim, HIDDEN, LATENT, "bernoulli")
    opt = torch.optim.Adam(ref.parameters(), lr=args.lr)
    order, binarizer = torch.Generator().manual_seed(cfg.seed + 1), torch.Generator().manual_seed(cfg.seed + 2)
    start = time.perf_counter()
    for _ in range(args.epochs):
        torch_epoch(ref, opt, binarize_batch(data.train, binarizer), args.batch_size, order)
    seconds = time.perf_counter() - start
    vae = build_vae(cfg, data.x_dim)
    load_into_pyro_vae(ref, vae)
    return {"model": "VAE (hand-written PyTorch)", "engine": "torch", "epochs": args.epochs, "train_seconds": seconds,
            **test_log_likelihood(vae, test, args.samples)}


def markdown(result: Dict) -> str:
    m = result["machine"]
    lines = [f"Fashion-MNIST, {result['epochs']} epochs, batch {result['batch_size']}, test log-likelihood by "
             f"IWAE-{result['samples']} on {result['test_points']} test images; {m['cpu']}, {m['cores']} cores, "
             f"torch {m['torch']}, pyro {m['pyro']}, {result['date']}.", "",
             "| model | engine | train seconds | test log-likelihood (nats) | minus the reference's (paired) |",
             "|---|---|---|---|---|"]
    for r in result["rows"]:
        diff = f"{r['difference']:+.2f} ± {r['difference_se']:.2f}" if "difference" in r else "(reference)"
        lines.append(f"| {r['model']} | {r['engine']} | {r['train_seconds']:.0f} | "
                     f"{r['test_log_likelihood']:.2f} ± {r['standard_error']:.2f} | {diff} |")
    lines += ["", "± is one standard error over the test images; the last column is the mean per-image difference "
              "to the hand-written reference, whose standard error is small because every model scores the same images."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fashion_mnist", description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20, help="the fixed budget, the same for every model")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--samples", type=int, default=5000, help="K of the IWAE test log-likelihood")
    parser.add_argument("--test-points", type=int, default=None, help="score only the first N test images")
    parser.add_argument("--path", default=None, help="a directory of Fashion-MNIST IDX files (default: Debian's)")
    parser.add_argument("--val-size", type=int, default=None, help="validation images held out of the 60k")
    parser.add_argument("--train-points", type=int, default=None, help="train on only the first N images")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true",
                        help="two epochs on 1000 training images, IWAE-100 on 100 test images")
    parser.add_argument("--out", default=None, help="results directory (default: benchmarks/results)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.samples, args.test_points, args.train_points = 2, 100, 100, 1000
    pyro.enable_validation(False)
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        torch.set_num_threads(1)  # oversubscribed OpenMP threads spin (see benchmarks/__main__.py)
    cfg = validate_config(config("elbo", 1, args))
    test = load_data(cfg.data, cfg.seed).test[: args.test_points]
    rows = [train_reference(args, test)]
    reference = rows[0].pop("values")
    for name, objective, k in (("VAE", "elbo", 1), ("IWAE k=5", "iwae", 5), ("IWAE k=50", "iwae", 50)):
        rows.append(train_pyro_vae(name, objective, k, args, test))
        rows[-1].update(paired_difference(rows[-1].pop("values"), reference))
        print(f"{name}: {rows[-1]['test_log_likelihood']:.2f} nats", file=sys.stderr, flush=True)
    result = {"date": report.now(), "machine": report.machine(), "epochs": args.epochs, "batch_size": args.batch_size,
              "samples": args.samples, "test_points": len(test), "rows": rows}
    out = report.RESULTS if args.out is None else report.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = "fashion_mnist_smoke" if args.smoke else "fashion_mnist"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
