"""``python -m benchmarks.profile``: torch.profiler tables of one training step, eager PyTorch vs pyro_vae's Trainer.

Where the Trainer falls short of the hand-written loop, these say which operators take the
difference (written to ``benchmarks/results/profile.md``).
"""

from __future__ import annotations

import argparse
import os
import sys

import pyro
import torch
from torch.profiler import ProfilerActivity, profile

from pyro_vae.build import resolve_device
from pyro_vae.errors import UserError

from . import report, training
from .reference import TorchVAE

STEPS = 30


def steps(case: training.Case, device: str = "cpu"):
    """``{name: one training step}`` on the same batch on ``device``: the reference, and the Trainer per engine."""
    data = training.dataset(case)
    x = data.train[: case.batch_size].to(device)
    ref = TorchVAE(case.x_dim, case.hidden, case.latent_dim, case.likelihood).to(device)
    opt = torch.optim.Adam(ref.parameters(), lr=training.LR)

    def eager():
        opt.zero_grad(set_to_none=True)
        ref.loss(x).backward()
        opt.step()

    out = {"torch_eager": eager}
    for engine in ("fused", "pyro"):
        trainer = training.trainer_epoch_fn(case, data, engine=engine, device=device).trainer
        out[f"pyro_vae[{engine}]"] = lambda t=trainer: t.train_step(x)
    return out


def table(fn, rows: int, device: str = "cpu") -> str:
    for _ in range(5):  # warm-up
        fn()
    cuda = device == "cuda"
    with profile(activities=[ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]) as prof:
        for _ in range(STEPS):
            fn()
        if cuda:
            torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="self_device_time_total" if cuda else "self_cpu_time_total",
                                     row_limit=rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu", help="as train.device")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device).type
    except UserError as err:
        print(f"python -m benchmarks.profile: error: --device {args.device}: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    pyro.enable_validation(False)
    lines = [f"Profiles of {STEPS} training steps on {device}, {args.threads} torch thread(s), {report.now()}, "
             f"1-min load {os.getloadavg()[0]:.1f}.", ""]
    for case in (training.CASES[0], training.CASES[2]):
        for name, fn in steps(case, device).items():
            print(f"profiling {case.name} B={case.batch_size} {name}", file=sys.stderr, flush=True)
            lines += [f"## {case.name}, {case.likelihood}, B={case.batch_size}: {name}", "", "```",
                      table(fn, args.rows, device), "```", ""]
    path = report.RESULTS / "profile.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
