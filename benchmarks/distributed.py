"""``python -m benchmarks.distributed``: training throughput of ``pyro-vae train --nproc 2`` against one process.

Each contender is a real ``pyro-vae train`` run (a subprocess, so every process pays its own start-up
outside the timed epochs); throughput is the median over epochs 2.. of the examples/s that rank 0
records in metrics.jsonl (epoch 1 is warm-up). Contenders alternate across rounds so that load from
other jobs on a shared machine hits all of them alike. ``1 proc x T threads`` uses as many cores as
``2 procs x 1 thread`` when ``T = 2``, the fair comparison on a 2-core machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm.auto import tqdm

RESULTS = Path(__file__).parent / "results"

# (label, --set overrides): the bundled digits (no download) at two widths
SHAPES = {
    "digits 64-[64]-2, B=128": ["data.name=digits", "model.decoder.hidden=[64]", "guide.hidden=[64]",
                                "model.latent_dim=2", "train.batch_size=128"],
    "digits 64-[512,512]-16, B=256": ["data.name=digits", "model.decoder.hidden=[512,512]", "guide.hidden=[512,512]",
                                      "model.latent_dim=16", "train.batch_size=256"],
}
CONTENDERS = [("1 proc x 1 thread", 1, 1), ("1 proc x 2 threads", 1, 2), ("2 procs x 1 thread", 2, 1)]


def train_throughput(overrides, nproc: int, threads: int, epochs: int) -> float:
    """Median examples/s over epochs 2..epochs of one ``pyro-vae train`` run."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "pyro_vae", "train", "--out", str(out), "--no-progress", "--nproc", str(nproc),
               "--set", f"train.epochs={epochs}"]
        for o in overrides:
            cmd += ["--set", o]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
        rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median(r["examples_per_second"] for r in rows[1:])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3, help="runs per contender and shape (median taken)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs per run (the first is warm-up)")
    parser.add_argument("--quick", action="store_true", help="one round of 3 epochs on the small shape")
    parser.add_argument("--out", default=str(RESULTS / "distributed.md"))
    args = parser.parse_args(argv)
    shapes = dict(list(SHAPES.items())[:1]) if args.quick else SHAPES
    rounds, epochs = (1, 3) if args.quick else (args.rounds, args.epochs)

    results = {s: {c[0]: [] for c in CONTENDERS} for s in shapes}
    jobs = [(s, c, r) for r in range(rounds) for s in shapes for c in CONTENDERS[r % 3:] + CONTENDERS[:r % 3]]
    for shape, (label, nproc, threads), _ in tqdm(jobs, desc="runs", file=sys.stderr):
        results[shape][label].append(train_throughput(shapes[shape], nproc, threads, epochs))

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = ["# 2-process data parallelism against one process", "",
             f"`python -m benchmarks.distributed{' --quick' if args.quick else ''}`: {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores, torch {torch.__version__}, gloo on CPU, {rounds} round(s) x {epochs} epochs, "
             f"load average {load:.2f} at the end. Median examples/s over epochs 2..{epochs} (rank 0's clock).", "",
             "| shape | " + " | ".join(c[0] for c in CONTENDERS) + " | 2 procs / 1 proc x 2 threads |",
             "|---|" + "---|" * (len(CONTENDERS) + 1)]
    for shape, per in results.items():
        med = {k: statistics.median(v) for k, v in per.items()}
        lines.append(f"| {shape} | " + " | ".join(f"{med[c[0]]:.0f}" for c in CONTENDERS)
                     + f" | {med['2 procs x 1 thread'] / med['1 proc x 2 threads']:.2f}x |")
    text = "\n".join(lines) + "\n"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
