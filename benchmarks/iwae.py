"""IWAE evaluation: ``pyro_vae.evaluation.iwae.iwae`` throughput and peak memory against the decoder's matmul-only bound.

The bound is the time of the decoder's two matrix products alone (``z @ W1^T``, ``h @ W2^T`` with
bias) for the same particles in the same chunks, the work no implementation can skip. Contenders:
``evaluate.iwae`` (the fused path it takes for a stock VAE), ``fused_iwae`` called directly,
``evaluate.iwae(compile=True)`` (its compile time, paid once per shape, reported apart) and
``evaluate.iwae(engine="pyro")``, the traced path it keeps for custom models. Peak memory is
measured in a fresh process per K (its peak resident set above the resident set after a one-chunk
warm-up), so one K's high-water mark cannot hide another's.

``python -m benchmarks.iwae [--ks 100 1000 5000] [--rounds 3] [--threads N]`` prints the table alone.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Dict, List, Optional

import pyro
import torch

X_DIM, HIDDEN, LATENT = 784, 400, 50
POINTS = 16  # data points per evaluation batch


def available() -> bool:
    try:
        from pyro_vae.evaluation.iwae import iwae  # noqa: F401  (written alongside this suite)
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
    from pyro_vae.evaluation.iwae import chunk_size

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


def iwae_fn(vae, x, num_samples: int, engine: str = "auto", compile: bool = False):
    from pyro_vae.evaluation.iwae import iwae

    def run() -> None:
        with torch.no_grad():
            iwae(vae.model, vae.guide, x, num_samples, engine=engine, compile=compile)

    return run


def compiled_fn(vae, x, num_samples: int):
    """``evaluate.iwae(compile=True)``, compiled before it is returned; its ``compile_seconds`` attribute says how long."""
    from pyro_vae.evaluation.decode import compiled_log_likelihood

    before = compiled_log_likelihood().compile_seconds
    iwae_fn(vae, x, chunks(num_samples)[0], compile=True)()  # one full chunk: compiles this batch size's graph
    run = iwae_fn(vae, x, num_samples, compile=True)
    run.compile_seconds = compiled_log_likelihood().compile_seconds - before
    return run


def traced_fn(vae, x, num_samples: int):
    return iwae_fn(vae, x, num_samples, engine="pyro")


def fused_iwae_fn(vae, x, num_samples: int):
    from pyro_vae.evaluation.iwae import chunk_size
    from pyro_vae.evaluation.iwae import fused_iwae

    chunk = chunk_size(POINTS, X_DIM)

    def run() -> None:
        fused_iwae(vae, x, num_samples, chunk)

    return run


# row-key prefix -> the function making the timed callable; "iwae" keeps the keys the report has always read
VARIANTS = {"iwae": iwae_fn, "fused": fused_iwae_fn, "compiled": compiled_fn, "traced": traced_fn}


def _key(variant: str, what: str) -> str:
    """Row keys: ``iwae_examples_per_second``, ``time_ratio_to_bound``, ``peak_memory_mb`` for evaluate.iwae
    (the keys the report has always read), prefixed ``fused_`` / ``compiled_`` / ``traced_`` for the others."""
    prefix = "" if variant == "iwae" else f"{variant}_"
    return {"examples_per_second": f"{prefix}iwae_examples_per_second", "ratio": f"{prefix}time_ratio_to_bound",
            "peak": f"{prefix}peak_memory_mb"}[what]


def _variants(compile: bool) -> List[str]:
    return [v for v in VARIANTS if compile or v != "compiled"]


def throughput(ks: List[int], rounds: int, compile: bool = True) -> List[Dict]:
    """Interleaved (contenders, bound) timings per K; examples/s is data points evaluated per second."""
    pyro.enable_validation(False)
    vae, x = model_and_data()
    rows = []
    for k in ks:
        runners = {name: VARIANTS[name](vae, x, k) for name in _variants(compile)}
        runners["matmul_bound"] = matmul_bound_fn(vae, k)
        times = {n: [] for n in runners}
        names = list(runners)
        for r in range(rounds + 1):
            for name in names[r % len(names):] + names[:r % len(names)]:
                start = time.perf_counter()
                runners[name]()
                if r:  # round 0 is the warm-up
                    times[name].append(time.perf_counter() - start)
        row = {"K": k, "points": POINTS, "chunk": chunks(k)[0],
               "bound_examples_per_second": POINTS / statistics.median(times["matmul_bound"])}
        if compile:
            row["compile_seconds"] = runners["compiled"].compile_seconds
        for n in _variants(compile):
            row[_key(n, "examples_per_second")] = POINTS / statistics.median(times[n])
            row[_key(n, "ratio")] = statistics.median(a / b for a, b in zip(times[n], times["matmul_bound"]))
        rows.append(row)
    return rows


def peak_memory_mb(k: int, variant: str = "iwae") -> float:
    """Peak resident memory (MB) that one ``variant`` call with K = ``k`` adds, measured in a fresh process."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.iwae", "--probe", str(k), "--variant", variant],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


def _probe(k: int, variant: str) -> None:
    pyro.enable_validation(False)
    vae, x = model_and_data()
    make = VARIANTS[variant]
    run = make(vae, x, k)  # the compiled variant compiles here, before the baseline is taken
    # warm-up with one full chunk: thread pools, BLAS buffers and lazily imported code are there
    # for any K (a 1-particle warm-up leaves ~150 MB of them to the measured call)
    make(vae, x, chunks(k)[0])()
    _reset_peak_rss()
    before = _rss_mb()
    run()
    print(json.dumps({"K": k, "peak_mb": max(0.0, _max_rss_mb() - before)}))


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2 ** 20


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0; else a no-op).

    Without it the mark can predate this process: ``ru_maxrss`` survives ``execve``, so a probe forked
    from a large parent (one that has compiled, say) inherits the parent's RSS as its "peak".
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _max_rss_mb() -> float:
    """Peak RSS since :func:`_reset_peak_rss` (VmHWM), or ``ru_maxrss`` where /proc has no VmHWM."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def run(ks: List[int], rounds: int, compile: Optional[bool] = None, memory: bool = True) -> Dict:
    """The IWAE rows for each K; ``compile`` (default: when some K >= 1000, i.e. not a quick run, as
    compiling takes seconds) adds ``evaluate.iwae(compile=True)``; ``memory`` the peak-memory probes."""
    if not available():
        return {"available": False, "note": "pyro_vae.evaluation.iwae.iwae does not exist yet"}
    compile = max(ks) >= 1000 if compile is None else compile
    rows = throughput(ks, rounds, compile)
    for row in rows:
        for variant in _variants(compile) if memory else []:
            row[_key(variant, "peak")] = peak_memory_mb(row["K"], variant)
    return {"available": True, "shape": f"{X_DIM}-{HIDDEN}-{LATENT} bernoulli", "rows": rows}


COLUMNS = [("iwae", "evaluate.iwae"), ("fused", "fused_iwae"), ("compiled", "iwae(compile=True)"),
           ("traced", "iwae(engine=pyro)")]


def markdown(result: Dict) -> str:
    """The IWAE table: per K, each contender's examples/s, time as a multiple of the bound, and peak MB."""
    if not result.get("available"):
        return result["note"] + "\n"
    rows = result["rows"]
    head = f"| K ({result['shape']}, {rows[0]['points']} points, chunk) | matmul-bound ex/s "
    head += "".join(f"| {label} ex/s | time / bound | peak MB " for _, label in COLUMNS)
    lines = [head + "|", "|---" * (2 + 3 * len(COLUMNS)) + "|"]
    for r in rows:
        cells = [f"{r['K']} ({r['chunk']})", f"{r['bound_examples_per_second']:.1f}"]
        for variant, _ in COLUMNS:
            rate, ratio, peak = (r.get(_key(variant, w)) for w in ("examples_per_second", "ratio", "peak"))
            cells += ["-" if rate is None else f"{rate:.1f}", "-" if ratio is None else f"{ratio:.2f}x",
                      "-" if peak is None else f"{peak:.1f}" if peak < 10 else f"{peak:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Peak MB: how far the resident set grows during one call, in a fresh process, above where it stood "
              "after a one-chunk warm-up; heap the process already holds is reused without growing it (after "
              "compiling, iwae(compile=True) may hold more than its chunks need and show 0)."]
    if "compile_seconds" in rows[0]:
        lines += ["", "Compile time of iwae(compile=True), paid once per batch size and kept out of its timings: "
                  + ", ".join(f"K={r['K']}: {r['compile_seconds']:.1f} s" for r in rows)
                  + " (near 0 when torch's on-disk inductor cache already holds the graph)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.iwae", description=__doc__.splitlines()[0])
    parser.add_argument("--ks", type=int, nargs="+", default=[100, 1000, 5000], help="importance samples K")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per K after a warm-up round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory probes")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="also time evaluate.iwae(compile=True) (default: when some K >= 1000)")
    parser.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)  # one peak-memory probe
    parser.add_argument("--variant", choices=list(VARIANTS), default="iwae", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.probe is not None:
        _probe(args.probe, args.variant)
        return 0
    result = run(args.ks, args.rounds, args.compile, args.memory)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
