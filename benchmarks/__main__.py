"""``python -m benchmarks [--quick]``: time pyro_vae's training loop and IWAE evaluation against the references."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import torch

from tqdm.auto import tqdm

from . import iwae, report, training


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="a ~1 minute smoke run: two shapes, few rounds, K=100")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per shape (default 7; quick 3)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time train.compile=true (default: on for the full run; compiling takes seconds)")
    parser.add_argument("--no-iwae", dest="iwae", action="store_false", help="skip the IWAE evaluation benchmark")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: torch's, or 1 when the load average exceeds the cores: "
                             "oversubscribed OpenMP threads spin and make every number meaningless)")
    parser.add_argument("--out", default=None, help="results directory (default: benchmarks/results)")
    parser.add_argument("--name", default=None, help="results file stem (default: quick or latest)")
    args = parser.parse_args(argv)
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
    if args.quick:
        cases = [dataclasses.replace(case, n_train=1024) for case in cases]
    result = {"quick": args.quick, "date": report.now(), "machine": report.machine(), "training": []}
    with tqdm(total=len(cases) * (rounds + 1), unit="round", desc="training", file=sys.stderr) as bar:
        for case in cases:
            result["training"].append(training.run_case(case, rounds, compile_, bar=bar))
    if args.iwae:
        print("IWAE evaluation ...", file=sys.stderr, flush=True)
        result["iwae"] = iwae.run([100] if args.quick else [100, 1000, 5000], rounds=2 if args.quick else 3)
    paths = report.write(result, args.name or ("quick" if args.quick else "latest"), args.out)
    print(report.markdown(result))
    print("wrote " + ", ".join(str(p) for p in paths), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
