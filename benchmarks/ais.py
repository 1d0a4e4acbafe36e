"""AIS evaluation: ``pyro_vae.evaluation.ais.ais`` seconds per data point against the decoder's matmul-only bound.

As in ``benchmarks/iwae.py``, the bound is the work no implementation can skip: the decoder's matrix products,
timed alone for the same particles in the same chunks (``C`` chains of ``POINTS`` points, in
``iwae.chunks(C)`` passes; AIS is run with ``chunk_chains`` set to match). Counting evaluations of
log p(x, z) and its z-gradient, each one decoder forward and backward of the C chains: ``ais`` evaluates the
starting states once and then, in each of its T - 1 HMC transitions (none after the last weight update),
once per leapfrog step (the state's values and gradients are cached, so the Metropolis test and the next
transition's first half-step reuse them), i.e. ``1 + (T - 1) * L`` evaluations, not T * (L + 1).

Factor for forward + backward: 2, not 3. The forward is two products per pass (``z @ W1^T``, ``h @ W2^T``). The
gradient is ``torch.autograd.grad`` w.r.t. z alone, so backward needs only the input gradients, one product
per layer of the forward's size (``g @ W2``, then ``g' @ W1``); the weight gradients, the second product per
layer that makes a training step's backward twice its forward, are not computed. The bound times exactly
those four products per evaluation (``iwae.matmul_bound_fn`` for the forward two, :func:`input_grad_fn` for
the backward two), so its matmul work is 2x the forward's. Elementwise work (tanh, the likelihood, the
leapfrog updates) is left out of the bound, as the likelihood is in IWAE's.

``python -m benchmarks.ais [--steps 10 100] [--chains 16] [--leapfrog 10] [--rounds 3] [--threads N]`` prints the
table alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Dict, Sequence

import pyro
import torch

from .iwae import LATENT, POINTS, X_DIM, chunks, matmul_bound_fn, model_and_data


def evaluations(num_steps: int, leapfrog_steps: int) -> int:
    """Evaluations of log p(x, z) and its gradient per chain that ``ais`` makes: the start, then L per transition."""
    return 1 + (num_steps - 1) * leapfrog_steps


def input_grad_fn(vae, num_chains: int):
    """The decoder's backward products for dL/dz only (``g @ W2``, ``g' @ W1``), chunked like ``matmul_bound_fn``."""
    w1, w2 = vae.decoder.net[0].weight.detach(), vae.decoder.net[-1].weight.detach()
    gs = [torch.randn(k * POINTS, X_DIM) for k in chunks(num_chains)]
    hs = [torch.randn(k * POINTS, w1.shape[0]) for k in chunks(num_chains)]

    def run() -> None:
        for g, h in zip(gs, hs):
            torch.mm(g, w2)
            torch.mm(h, w1)

    return run


def bound_fn(vae, num_steps: int, num_chains: int, leapfrog_steps: int):
    """The matrix products of one ``ais`` call: forward and dL/dz backward, for every evaluation."""
    forward, backward = matmul_bound_fn(vae, num_chains), input_grad_fn(vae, num_chains)
    count = evaluations(num_steps, leapfrog_steps)

    def run() -> None:
        for _ in range(count):
            forward()
            backward()

    return run


def ais_fn(vae, x, num_steps: int, num_chains: int, leapfrog_steps: int, out: list):
    from pyro_vae.evaluation.ais import ais

    def run() -> None:
        res = ais(vae, x, num_steps, num_chains, leapfrog_steps, chunk_chains=chunks(num_chains)[0])
        out.append(float(res.accept.mean()))

    return run


def run(steps_list: Sequence[int] = (10, 100), chains: int = 16, leapfrog: int = 10, rounds: int = 3) -> Dict:
    """Per T in ``steps_list``: AIS and its bound, timed in interleaved rounds after a warm-up round."""
    pyro.enable_validation(False)
    vae, x = model_and_data()
    rows = []
    for steps in steps_list:
        accepts: list = []
        runners = {"ais": ais_fn(vae, x, steps, chains, leapfrog, accepts),
                   "bound": bound_fn(vae, steps, chains, leapfrog)}
        times = {n: [] for n in runners}
        names = list(runners)
        for r in range(rounds + 1):
            for name in names[r % 2:] + names[:r % 2]:
                start = time.perf_counter()
                runners[name]()
                if r:  # round 0 is the warm-up
                    times[name].append(time.perf_counter() - start)
        rows.append({"T": steps, "chains": chains, "leapfrog": leapfrog, "points": POINTS,
                     "chunk": chunks(chains)[0], "evaluations": evaluations(steps, leapfrog),
                     "seconds_per_point": statistics.median(times["ais"]) / POINTS,
                     "bound_seconds_per_point": statistics.median(times["bound"]) / POINTS,
                     "time_ratio_to_bound": statistics.median(a / b for a, b in zip(times["ais"], times["bound"])),
                     "acceptance": statistics.fmean(accepts)})
    return {"available": True, "shape": f"{X_DIM}-{vae.decoder.net[0].out_features}-{LATENT} bernoulli",
            "rounds": rounds, "rows": rows}


def markdown(result: Dict) -> str:
    """The AIS table: per (T, C, L), seconds per point, the bound's, their ratio and the mean acceptance."""
    if not result.get("available"):
        return result["note"] + "\n"
    rows = result["rows"]
    lines = [f"| T, C, L ({result['shape']}, {rows[0]['points']} points, chunk) | evaluations | ms / point "
             f"| matmul-bound ms / point | time / bound | acceptance |", "|---" * 6 + "|"]
    for r in rows:
        lines.append(f"| {r['T']}, {r['chains']}, {r['leapfrog']} ({r['chunk']}) | {r['evaluations']} "
                     f"| {1e3 * r['seconds_per_point']:.3f} | {1e3 * r['bound_seconds_per_point']:.3f} "
                     f"| {r['time_ratio_to_bound']:.2f}x | {r['acceptance']:.2f} |")
    lines += ["", "Evaluations: of log p(x, z) and its z-gradient per chain, 1 + (T - 1) L. Bound: the decoder's "
              "forward products and the dL/dz backward products (no weight gradients: 2x the forward's matmul "
              "work) for every evaluation."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ais", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 100], help="annealing steps T")
    parser.add_argument("--chains", type=int, default=16, help="chains C per point")
    parser.add_argument("--leapfrog", type=int, default=10, help="leapfrog steps L per HMC transition")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per T after a warm-up round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    result = run(args.steps, args.chains, args.leapfrog, args.rounds)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
