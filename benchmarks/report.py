"""The machine description, the JSON results file and the Markdown ratio table."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Dict, List, Optional

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> Dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    import pyro

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_1min": os.getloadavg()[0], "python": platform.python_version(),
            "torch": torch.__version__, "pyro": pyro.__version__, "platform": platform.platform()}


def markdown(result: Dict) -> str:
    m = result["machine"]
    lines = [f"Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads, 1-min load "
             f"{m['load_average_1min']:.1f}), torch {m['torch']}, pyro {m['pyro']}, Python {m['python']}; "
             f"{'quick' if result['quick'] else 'full'} run on {result.get('device', 'cpu')}, {result['date']}.", "",
             "Training throughput, examples/s as a multiple of the hand-written eager PyTorch VAE "
             "(median of per-round ratios over rounds interleaved in one process):", ""]
    peer = result.get("numpyro")
    if peer is not None:  # one note line: which NumPyro ran and with how many threads, or why it did not
        lines[2:2] = [f"NumPyro peer: {peer['note']}" + (f"; JAX threads: {peer['threads']}." if peer["available"]
                                                            else "."), ""]
    names = list(result["training"][0]["ratio_to_torch_eager"]) if result["training"] else []
    others = [n for n in names if n != "torch_eager"]
    lines.append("| shape, likelihood, batch | torch_eager ex/s | " + " | ".join(others) + " |")
    lines.append("|---" * (2 + len(others)) + "|")
    for row in result["training"]:
        cells = [f"{row['ratio_to_torch_eager'][n]:.2f}x" for n in others]
        lines.append(f"| {row['case']}, {row['likelihood']}, B={row['batch_size']} | "
                     f"{row['examples_per_second']['torch_eager']:.0f} | " + " | ".join(cells) + " |")
    compiled = [n for n in names if n.startswith("numpyro") or "compile" in n]
    if compiled and all("first_epoch_seconds" in r for r in result["training"]):
        lines += ["", "Compilation, paid once in the warm-up epoch: its seconds against a steady epoch's "
                      "(n_train / median examples/s):", ""]
        lines.append("| shape, likelihood, batch | " + " | ".join(compiled) + " |")
        lines.append("|---" * (1 + len(compiled)) + "|")
        for row in result["training"]:
            steady = {n: row["n_train"] / row["examples_per_second"][n] for n in compiled}
            cells = [f"{row['first_epoch_seconds'][n]:.2f} s vs {steady[n]:.3f} s" for n in compiled]
            lines.append(f"| {row['case']}, {row['likelihood']}, B={row['batch_size']} | " + " | ".join(cells) + " |")
    if result["training"] and "peak_memory_mb" in result["training"][0]:
        torch_names = [n for n in names if not n.startswith("numpyro")]  # JAX has its own allocator
        lines += ["", "Peak CUDA memory per epoch, MB (`torch.cuda.max_memory_allocated`, torch's contenders):", ""]
        lines.append("| shape, likelihood, batch | " + " | ".join(torch_names) + " |")
        lines.append("|---" * (1 + len(torch_names)) + "|")
        for row in result["training"]:
            lines.append(f"| {row['case']}, {row['likelihood']}, B={row['batch_size']} | "
                         + " | ".join(f"{row['peak_memory_mb'][n]:.0f}" for n in torch_names) + " |")
    mnist = [r for r in result["training"] if r["case"].startswith("MNIST")]
    if mnist:
        lines += ["", "Matmul GFLOP/s at the MNIST shape (6 x weight-matrix multiply-adds per example x examples/s):", ""]
        lines.append("| likelihood, batch | " + " | ".join(names) + " |")
        lines.append("|---" * (1 + len(names)) + "|")
        for row in mnist:
            lines.append(f"| {row['likelihood']}, B={row['batch_size']} | "
                         + " | ".join(f"{row['matmul_gflops'][n]:.0f}" for n in names) + " |")
    iw = result.get("iwae")
    if iw is not None:
        lines += ["", "IWAE evaluation (`pyro_vae.evaluation.iwae.iwae`):", ""]
        from . import iwae  # its table is its own (benchmarks/iwae.py::markdown) where that exists

        if hasattr(iwae, "markdown"):
            lines.append(iwae.markdown(iw).rstrip("\n"))
        elif not iw.get("available"):
            lines.append(iw["note"])
        else:
            lines.append(f"| K ({iw['shape']}, {iw['rows'][0]['points']} points) | matmul-bound ex/s "
                         f"| evaluate.iwae ex/s | time / bound | peak MB | fused_iwae ex/s | time / bound | peak MB |")
            lines.append("|---" * 8 + "|")
            for r in iw["rows"]:
                lines.append(f"| {r['K']} | {r['bound_examples_per_second']:.1f} | {r['iwae_examples_per_second']:.1f} "
                             f"| {r['time_ratio_to_bound']:.2f}x | {r['peak_memory_mb']:.0f} "
                             f"| {r['fused_iwae_examples_per_second']:.1f} | {r['fused_time_ratio_to_bound']:.2f}x "
                             f"| {r['fused_peak_memory_mb']:.0f} |")
    ai = result.get("ais")
    if ai is not None:
        from . import ais

        lines += ["", "AIS evaluation (`pyro_vae.evaluation.ais.ais`), seconds per point against its matmul bound:", ""]
        lines.append(ais.markdown(ai).rstrip("\n"))
    sd = result.get("seeds")
    if sd is not None:
        from . import seeds

        lines += ["", "Seeds trained together (`benchmarks/seeds.py`): R stacked replicas (`ReplicaTrainer`) against R "
                      "sequential single-seed runs, aggregate examples/s (median of per-round ratios):", ""]
        lines.append(seeds.markdown(sd).rstrip("\n"))
    return "\n".join(lines) + "\n"


def write(result: Dict, stem: str, directory: Optional[str] = None) -> List[Path]:
    out = Path(directory) if directory is not None else RESULTS
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    paths[0].write_text(json.dumps(result, indent=1) + "\n")
    paths[1].write_text(markdown(result))
    return paths


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
