"""``python -m benchmarks [--quick] [--device D]``: time pyro_vae's training, IWAE, AIS and seeds against references.

Training columns, each a multiple of ``torch_eager`` (the hand-written PyTorch VAE): ``pyro_svi``
(Pyro's tutorial ``SVI.step`` loop), ``pyro_vae[pyro]`` / ``pyro_vae[fused]`` (the ``Trainer`` per
``train.engine``), ``pyro_vae[fused+compile]`` (full run), and, when the optional ``bench`` extra is
installed (``pip install -e '.[bench]'``: jax, numpyro), the NumPyro peer of ``numpyro_peer.py`` with
the same model and objective: ``numpyro[jit]`` (jitted ``svi.update``, a Python loop over batches) and
``numpyro[scan]`` (one jitted epoch in ``lax.scan``). Without it the table says so in one note line.
JAX compiles in the warm-up epoch, reported once as "first epoch" and kept out of the ratios. With one
torch thread (``--threads 1``, or a loaded machine) JAX gets one compute thread too (its CPU pool is
started under a one-core affinity mask: ``training.configure_jax``); otherwise both use every core.
``--device`` puts every contender on ``cpu`` or ``cuda`` (``auto``: cuda when available). The seeds table
(``benchmarks/seeds.py``, ``--no-seeds`` skips it) times R = 1, 4, 8, 16 stacked replicas against R sequential
single-seed runs, as aggregate examples/s, with the memory each replica holds.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import os
import sys

import torch

from tqdm.auto import tqdm

from pyro_vae.build import resolve_device
from pyro_vae.errors import UserError

from . import ais, iwae, report, seeds, training


def main(argv=None) -> int:
    summary, _, columns = __doc__.partition("\n\n")
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=summary, epilog=columns,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run: two shapes, few rounds, K=100")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per shape (default 7; quick 3)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time train.compile=true (default: on for the full run; compiling takes seconds)")
    parser.add_argument("--no-iwae", dest="iwae", action="store_false", help="skip the IWAE evaluation benchmark")
    parser.add_argument("--no-ais", dest="ais", action="store_false", help="skip the AIS evaluation benchmark")
    parser.add_argument("--no-seeds", dest="seeds", action="store_false",
                        help="skip the seeds benchmark (R stacked replicas against R sequential runs)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, or 1 when the load average exceeds the cores: "
                             "oversubscribed OpenMP threads spin and make every number meaningless)")
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu",
                        help="where every contender trains, as train.device (auto: cuda when available)")
    parser.add_argument("--out", default=None, help="results directory (default: benchmarks/results)")
    parser.add_argument("--name", default=None, help="results file stem (default: quick or latest)")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device).type  # the Trainer's own check: cuda without CUDA is a ConfigError
    except UserError as err:
        print(f"python -m benchmarks: error: --device {args.device}: {err}", file=sys.stderr)
        return 2
    rounds = args.rounds or (3 if args.quick else 7)
    cases = training.QUICK if args.quick else training.CASES
    compile_ = (not args.quick) if args.compile is None else args.compile
    threads = args.threads
    if threads is None and os.getloadavg()[0] > (os.cpu_count() or 1):
        threads = 1
        print(f"load average {os.getloadavg()[0]:.1f} > {os.cpu_count()} cores: timing with 1 torch thread "
              f"(--threads to override)", file=sys.stderr)
    if threads is not None:
        torch.set_num_threads(threads)
    jax_threads = training.configure_jax(threads, device)  # before anything imports jax
    peer = dict(training.peer_status(device), threads=jax_threads)
    if not peer["available"]:
        print(peer["note"], file=sys.stderr)
    if args.quick:
        cases = [dataclasses.replace(case, n_train=1024) for case in cases]
    result = {"quick": args.quick, "date": report.now(), "machine": report.machine(), "device": device,
              "numpyro": peer, "training": []}
    with tqdm(total=len(cases) * (rounds + 1), unit="round", desc="training", file=sys.stderr) as bar:
        for case in cases:
            result["training"].append(training.run_case(case, rounds, compile_, bar=bar, device=device,
                                                        numpyro=peer["available"]))
    if args.iwae:
        print("IWAE evaluation ...", file=sys.stderr, flush=True)
        ks, iwae_rounds = ([100], 2) if args.quick else ([100, 1000, 5000], 3)
        if device == "cpu":
            result["iwae"] = iwae.run(ks, rounds=iwae_rounds)
        elif "device" in inspect.signature(iwae.run).parameters:
            result["iwae"] = iwae.run(ks, rounds=iwae_rounds, device=device)
        else:
            result["iwae"] = {"available": False, "note": f"benchmarks/iwae.py does not take a device yet: "
                                                          f"IWAE evaluation skipped on {device}"}
    if args.ais:
        print("AIS evaluation ...", file=sys.stderr, flush=True)
        ais_args = dict(steps_list=(5,), chains=4, leapfrog=2, rounds=2) if args.quick else {}
        if device == "cpu":
            result["ais"] = ais.run(**ais_args)
        elif "device" in inspect.signature(ais.run).parameters:
            result["ais"] = ais.run(**ais_args, device=device)
        else:
            result["ais"] = {"available": False, "note": f"benchmarks/ais.py does not take a device yet: "
                                                         f"AIS evaluation skipped on {device}"}
    if args.seeds:
        print("seeds trained together ...", file=sys.stderr, flush=True)
        with tqdm(total=len(seeds.CASES) * len(seeds.QUICK_REPLICAS if args.quick else seeds.REPLICAS), unit="row",
                  desc="seeds", file=sys.stderr) as bar:
            result["seeds"] = seeds.run(quick=args.quick, rounds=rounds, device=device, bar=bar)
    paths = report.write(result, args.name or ("quick" if args.quick else "latest"), args.out)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
