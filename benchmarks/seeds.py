"""Seeds trained together: R stacked replicas (``ReplicaTrainer``) against R single-seed ``Trainer`` runs, one process.

For each shape and R, one round times one epoch of the R replicas in one stacked step
(``ReplicaTrainer.run_batches``: the steps alone, no validation pass or checkpoint) and one epoch of each of R
single-seed ``Trainer``s on the fused engine (``Trainer.train_epoch``), the two in an order that alternates
between rounds, after a warm-up round. Reported: aggregate examples/s (R x training rows / seconds) of both,
the median over rounds of the per-round ratio (sequential seconds / replica seconds, so a load spike that
slows a whole round cancels), and memory per replica: the bytes of its parameters, gradients and Adam's
two moments, and how far the resident set grew while the contender was built and took its warm-up epoch,
divided by R (allocator reuse makes it noisy; 0 when the heap already held the room).

Shapes: digits 64-64-2 at ``train.batch_size``'s default 64 (normal likelihood) and the MNIST shape
784-400-50 at B=128 (Bernoulli on generated binary data), both as ``benchmarks/training.py`` builds them.

Where ``import numpyro`` works (the ``bench`` extra), each row also times one model of the NumPyro peer with
its whole epoch jitted in ``lax.scan`` (``numpyro_peer.scan_epoch_fn``, the fastest single-model loop of
``benchmarks/training.py``), interleaved in the same rounds, and reports the replicas' aggregate rate as a
multiple of that one model's: R seeds at the cost of one, against the best one-seed loop on the machine; and R
models of the peer with that epoch vmapped over their seeds (``numpyro_peer.vmap_scan_epoch_fn``): R seeds in
one step on JAX's side too.
JAX runs on XLA's own thread pool: one compute thread with ``--threads 1`` (``training.configure_jax``), else
all cores.

``python -m benchmarks.seeds [--quick] [--replicas 1 4 8 16] [--rounds 5] [--threads N] [--device D]`` prints
the table alone.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from typing import Callable, Dict, List, Sequence

import pyro
import torch

from pyro_vae import validate_config
from pyro_vae.build import build_seeded
from pyro_vae.training.replicas import ReplicaTrainer
from pyro_vae.training.trainer import Trainer

from . import training

CASES = [training.Case("digits 64-64-2", "digits", 64, 64, 2, "normal", 64),
         training.Case("MNIST-shaped 784-400-50", "generated", 784, 400, 50, "bernoulli", 128)]
REPLICAS = (1, 4, 8, 16)
PEER = "numpyro[scan]"  # one model, its epoch in lax.scan
PEER_VMAP = "numpyro[vmap]"  # R models, that epoch vmapped over their states and batch orders
# peer -> its row key for the replicas' ratio, and its two table headers
PEER_COLUMNS = {PEER: ("ratio_to_numpyro_scan", "numpyro[scan] ex/s, one model", "replicas / one numpyro[scan] model"),
                PEER_VMAP: ("ratio_to_numpyro_vmap", "numpyro[vmap] ex/s, R models", "replicas / numpyro[vmap]")}
QUICK_REPLICAS = (1, 4)


def configs(case: training.Case, r: int, device: str) -> List:
    """Seeds 0..r-1 of the case's config, on ``device``."""
    base = training.config(case, engine="fused", device=device).to_dict()
    return [validate_config({**base, "seed": s}) for s in range(r)]


def rss_bytes() -> int:
    """The resident set now (Linux ``/proc/self/statm``; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def replica_epoch_fn(cfgs, data, device: str) -> Callable[[], int]:
    rt = ReplicaTrainer.from_configs(cfgs, data, device=torch.device(device), quiet=True)

    def epoch() -> int:
        rt.run_batches()
        for r in rt.rows:
            rt.replicas[r].current = None  # what end_epoch leaves, without its validation pass
        return len(cfgs) * len(data.train)

    epoch.trainer = rt
    return epoch


def sequential_epoch_fn(cfgs, data, device: str) -> Callable[[], int]:
    trainers = [Trainer.from_config(cfg, data, build_seeded(cfg, data, torch.device(device)), progress=False,
                                    quiet=True) for cfg in cfgs]

    def epoch() -> int:
        for t in trainers:
            t.train_epoch(None)
            t.current = None
        return len(cfgs) * len(data.train)

    return epoch


def timed(fn: Callable[[], int], cuda: bool) -> float:
    """``fn()``'s examples per second (its kernels finished, on CUDA)."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    n = fn()
    if cuda:
        torch.cuda.synchronize()
    return n / (time.perf_counter() - start)


def numpyro_epoch_fn(case: training.Case, data, device: str) -> Callable[[], int]:
    """One epoch of one model of the NumPyro peer, its epoch in ``lax.scan`` (the ``bench`` extra)."""
    from .numpyro_peer import scan_epoch_fn

    return scan_epoch_fn(data.train.numpy(), case.hidden, case.latent_dim, case.likelihood, case.batch_size,
                         training.LR, seed=1, device=device)


def numpyro_seeds_epoch_fn(case: training.Case, data, r: int, device: str) -> Callable[[], int]:
    """One epoch of R models of the NumPyro peer (seeds 1..R), the scan epoch vmapped over them (``bench`` extra)."""
    from .numpyro_peer import vmap_scan_epoch_fn

    return vmap_scan_epoch_fn(data.train.numpy(), case.hidden, case.latent_dim, case.likelihood, case.batch_size,
                              training.LR, seeds=range(1, r + 1), device=device)


def run_case(case: training.Case, r: int, rounds: int, device: str = "cpu", numpyro: bool = False) -> Dict:
    data = training.dataset(case)
    cfgs = configs(case, r, device)
    cuda = device == "cuda"
    runners, growth = {}, {}
    for name, make in (("replicas", replica_epoch_fn), ("sequential", sequential_epoch_fn)):
        before = rss_bytes()
        runners[name] = make(cfgs, data, device)
        timed(runners[name], cuda)  # the warm-up epoch
        growth[name] = max(rss_bytes() - before, 0) / r
    if numpyro:
        runners[PEER] = numpyro_epoch_fn(case, data, device)
        runners[PEER_VMAP] = numpyro_seeds_epoch_fn(case, data, r, device)
        for name in (PEER, PEER_VMAP):
            timed(runners[name], cuda)  # the warm-up epoch compiles the scan
    rates: Dict[str, List[float]] = {n: [] for n in runners}
    for k in range(rounds):
        for name in (list(runners) if k % 2 == 0 else list(runners)[::-1]):
            pyro.clear_param_store()
            rates[name].append(timed(runners[name], cuda))
    memory = runners["replicas"].trainer.bytes_per_replica()

    def ratio(other: str) -> float:  # the median of per-round ratios: a load spike that slows a round cancels
        return statistics.median(a / b for a, b in zip(rates["replicas"], rates[other]))

    return {"case": case.name, "likelihood": case.likelihood, "batch_size": case.batch_size, "replicas": r,
            "n_train": len(data.train), "rounds": rounds, "device": device,
            "examples_per_second": {n: statistics.median(v) for n, v in rates.items()}, "all_rounds": rates,
            "ratio_to_sequential": ratio("sequential"),
            **{key: ratio(peer) for peer, (key, *_) in PEER_COLUMNS.items() if peer in rates},
            "bytes_per_replica": memory, "rss_growth_per_replica": growth}


def run(quick: bool = False, rounds: int = 5, device: str = "cpu", replicas: Sequence[int] = None, bar=None) -> Dict:
    """Every (shape, R) row; ``quick``: R = 1, 4 on 512 rows of each shape's data (the digits keep theirs)."""
    pyro.enable_validation(False)  # the hot loop, as train.validate_args: false
    cases = [dataclasses.replace(c, n_train=512) for c in CASES] if quick else CASES
    sizes = tuple(replicas or (QUICK_REPLICAS if quick else REPLICAS))
    warm = training.dataset(cases[0])  # one-time costs (imports, first kernels) kept out of the first row's memory
    for make in (replica_epoch_fn, sequential_epoch_fn):
        make(configs(cases[0], 1, device), warm, device)()
    peer = training.peer_status(device)
    rows = []
    for case in cases:
        for r in sizes:
            rows.append(run_case(case, r, rounds, device, numpyro=peer["available"]))
            if bar is not None:
                bar.update(1)
    return {"available": True, "device": device, "rows": rows, "numpyro": peer}


def markdown(result: Dict) -> str:
    """The seeds table: per shape and R, both aggregate rates, their ratio and the memory per replica."""
    if not result.get("available"):
        return result["note"] + "\n"
    shown = {p: c for p, c in PEER_COLUMNS.items() if any(c[0] in row for row in result["rows"])}
    extra = "".join(f" | {rate_header} | {ratio_header}" for _, rate_header, ratio_header in shown.values())
    lines = ["| shape, likelihood, batch | R | R sequential runs ex/s | R replicas ex/s | replicas / sequential"
             + extra + " | KiB per replica (params + grads + Adam) "
             "| RSS growth per replica, KiB (replicas / sequential) |",
             "|---" * (7 + 2 * len(shown)) + "|"]
    for row in result["rows"]:
        rate, growth = row["examples_per_second"], row["rss_growth_per_replica"]
        vs_peer = "".join(f" | {rate[p]:.0f} | {row[key]:.2f}x" if p in rate else " | n/a | n/a"
                          for p, (key, *_) in shown.items())
        lines.append(f"| {row['case']}, {row['likelihood']}, B={row['batch_size']} | {row['replicas']} "
                     f"| {rate['sequential']:.0f} | {rate['replicas']:.0f} "
                     f"| {row['ratio_to_sequential']:.2f}x{vs_peer} "
                     f"| {row['bytes_per_replica']['total'] / 1024:.0f} "
                     f"| {growth['replicas'] / 1024:.0f} / {growth['sequential'] / 1024:.0f} |")
    lines += ["", "Aggregate examples/s: R x training rows per second of one epoch's steps (no validation). Replica r "
              "trains as its single-seed run does, to float rounding (`pyro_vae/training/replicas.py`)."]
    if PEER in shown:
        threads = result["numpyro"].get("threads", "XLA's default pool (all usable cores)")
        lines += ["", f"numpyro[scan]: one model of the NumPyro peer per row ({result['numpyro']['note']}), its epoch "
                  f"in lax.scan; JAX threads: {threads}."]
    if PEER_VMAP in shown:
        lines += ["", "numpyro[vmap]: R models of the NumPyro peer (seeds 1..R), that scan epoch vmapped over their "
                  "SVI states and batch orders, one jitted call an epoch; each model takes the steps it takes "
                  "alone (`benchmarks/numpyro_peer.py`)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.seeds", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="R = 1, 4 on 512 rows")
    parser.add_argument("--replicas", type=int, nargs="+", default=None, help="the R to time (default 1 4 8 16)")
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds per row after a warm-up round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    jax_threads = training.configure_jax(args.threads, args.device)  # before anything imports jax
    result = run(args.quick, args.rounds, args.device, args.replicas)
    result.get("numpyro", {})["threads"] = jax_threads
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
