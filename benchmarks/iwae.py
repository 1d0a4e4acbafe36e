"""IWAE evaluation: ``pyro_vae.evaluate.iwae`` throughput and peak memory against the decoder's matmul-only bound.

The bound is the time of the decoder's two matrix products alone (``z @ W1^T``, ``h @ W2^T`` with
bias) for the same particles in the same chunks, the work no implementation can skip. Peak
memory is measured in a fresh process per K (its peak resident set above the resident set
after warm-up), so one K's high-water mark cannot hide another's.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List

import pyro
import torch

X_DIM, HIDDEN, LATENT = 784, 400, 50
POINTS = 16  # data points per evaluation batch


def available() -> bool:
    try:
        from pyro_vae.evaluate import iwae  # noqa: F401  (written alongside this suite)
    except ImportError:
        return False
    return True


def model_and_data():
    from pyro_vae import validate_config
    from pyro_vae.build import build_vae

    cfg = validate_config({"model": {"latent_dim": LATENT, "decoder": {"hidden": [HIDDEN]}, "likelihood": "bernoulli"},
                           "guide": {"hidden": [HIDDEN]}})
    pyro.set_rng_seed(0)
    vae = build_vae(cfg, X_DIM)
    x = torch.bernoulli(torch.rand(POINTS, X_DIM, generator=torch.Generator().manual_seed(0)))
    return vae, x


def chunks(num_samples: int) -> List[int]:
    """The particle counts per pass that ``evaluate.iwae`` uses for ``num_samples``."""
    from pyro_vae.evaluate import chunk_size

    chunk = chunk_size(POINTS, X_DIM)
    return [min(chunk, num_samples - done) for done in range(0, num_samples, chunk)]


def matmul_bound_fn(vae, num_samples: int):
    """The decoder's matrix products for ``num_samples`` particles of ``POINTS`` points, chunked like ``iwae``."""
    first, last = vae.decoder.net[0], vae.decoder.net[-1]
    w1, b1, w2, b2 = first.weight.detach(), first.bias.detach(), last.weight.detach(), last.bias.detach()
    zs = [torch.randn(k * POINTS, LATENT) for k in chunks(num_samples)]

    def run() -> None:
        for z in zs:
            torch.addmm(b2, torch.addmm(b1, z, w1.T), w2.T)

    return run


def iwae_fn(vae, x, num_samples: int):
    from pyro_vae.evaluate import iwae

    def run() -> None:
        with torch.no_grad():
            iwae(vae.model, vae.guide, x, num_samples)

    return run


def fused_iwae_fn(vae, x, num_samples: int):
    from pyro_vae.evaluate import chunk_size
    from pyro_vae.fused import fused_iwae

    chunk = chunk_size(POINTS, X_DIM)

    def run() -> None:
        fused_iwae(vae, x, num_samples, chunk)

    return run


def throughput(ks: List[int], rounds: int) -> List[Dict]:
    """Interleaved (iwae, bound) timings per K; examples/s is data points evaluated per second."""
    pyro.enable_validation(False)
    vae, x = model_and_data()
    rows = []
    for k in ks:
        runners = {"iwae": iwae_fn(vae, x, k), "fused_iwae": fused_iwae_fn(vae, x, k),
                   "matmul_bound": matmul_bound_fn(vae, k)}
        times = {n: [] for n in runners}
        for r in range(rounds + 1):
            names = list(runners)
            for name in names[r % 3:] + names[:r % 3]:
                start = time.perf_counter()
                runners[name]()
                if r:  # round 0 is the warm-up
                    times[name].append(time.perf_counter() - start)
        ratio = {n: statistics.median(a / b for a, b in zip(times[n], times["matmul_bound"])) for n in times}
        rows.append({"K": k, "points": POINTS,
                     "iwae_examples_per_second": POINTS / statistics.median(times["iwae"]),
                     "fused_iwae_examples_per_second": POINTS / statistics.median(times["fused_iwae"]),
                     "bound_examples_per_second": POINTS / statistics.median(times["matmul_bound"]),
                     "time_ratio_to_bound": ratio["iwae"], "fused_time_ratio_to_bound": ratio["fused_iwae"]})
    return rows


def peak_memory_mb(k: int, fused: bool = False) -> float:
    """Peak resident memory (MB) that one ``iwae`` call with K = ``k`` adds, measured in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.iwae", "--probe", str(k), *(["--fused"] if fused else [])],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _probe(k: int, fused: bool) -> None:
    pyro.enable_validation(False)
    vae, x = model_and_data()
    make = fused_iwae_fn if fused else iwae_fn
    make(vae, x, 1)()  # warm-up: allocator pools, lazily imported code
    before = _rss_mb()
    make(vae, x, k)()
    print(json.dumps({"K": k, "peak_mb": max(0.0, _max_rss_mb() - before)}))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(ks: List[int], rounds: int) -> Dict:
    if not available():
        return {"available": False, "note": "pyro_vae.evaluate.iwae does not exist yet"}
    rows = throughput(ks, rounds)
    for row in rows:
        row["peak_memory_mb"] = peak_memory_mb(row["K"])
        row["fused_peak_memory_mb"] = peak_memory_mb(row["K"], fused=True)
    return {"available": True, "shape": f"{X_DIM}-{HIDDEN}-{LATENT} bernoulli", "rows": rows}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", type=int, required=True, help="measure the peak memory of one K")
    parser.add_argument("--fused", action="store_true", help="of pyro_vae.fused.fused_iwae instead")
    args = parser.parse_args()
    _probe(args.probe, args.fused)
