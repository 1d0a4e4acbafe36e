"""Data-parallel training on 2 CPU processes (gloo): the step equals the single-process full-batch step,
a 2-process run writes one set of outputs, and its checkpoint resumes in one process."""

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import TINY, run_cli
from pyro_vae.training import distributed
from pyro_vae.rundir import RunDir

# One script for both sides of the comparison: with argv[1] == 1 it takes the steps in this process,
# with 2 it launches two gloo ranks that each take their shard ``batch[rank::2]``.
#
# Noise choice: each rank samples z from its own stream, so a 2-process step and a 1-process step draw
# different z. To compare the gradients exactly, the guide's reparameterized draw is replaced by a fixed,
# per-example noise ``eps = sin(10 * loc)`` (a function of the example's own encoding, so it does not
# depend on which rank holds the example); the objective is the analytic-KL ELBO, so z enters only
# through log p(x|z). What is then compared is exactly the sharding + loss scaling + all-reduce.
STEP_SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch.distributions import Normal
    from pyro_vae.training import distributed
    from pyro_vae.config import validate
    from pyro_vae.training.trainer import Trainer
    from pyro_vae.build import prepare

    def fixed_noise(self, sample_shape=torch.Size()):
        return self.loc + self.scale * torch.sin(10 * self.loc.detach())

    def worker(out):
        torch.set_num_threads(1)
        Normal.rsample = fixed_noise
        ctx = distributed.init("cpu")
        results = {engine: steps(ctx, engine) for engine in ("fused", "pyro")}
        if ctx.is_main:
            torch.save(results, out)
        return 0

    def steps(ctx, engine):
        cfg = validate({"seed": 3, "model": {"decoder": {"hidden": [16]}}, "guide": {"hidden": [16]},
                        "inference": {"kl": "analytic"}, "optim": {"lr": 0.01}, "train": {"engine": engine}})
        data, vae = prepare(cfg, ctx.device)
        trainer = Trainer.from_config(cfg, data, vae, None, progress=False, ctx=ctx)
        init = [p.detach().clone() for p in vae.parameters()]
        result = {}
        # one step from the same parameters on a global batch of 2B = 16 rows, then on an uneven one of 7
        # (shards of 4 and 3 rows)
        for k, batch in enumerate([torch.arange(16), torch.arange(16, 23)]):
            with torch.no_grad():
                for p, p0 in zip(vae.parameters(), init):
                    p.copy_(p0)
            trainer.optimizer.state.clear()
            idx = ctx.shard(batch)
            loss = trainer.train_step(data.train[idx], idx, len(batch))
            assert loss is not None
            result[f"grad{k}"] = {n: p.grad.clone() for n, p in vae.named_parameters()}
            result[f"loss{k}"] = ctx.all_sum(loss * len(idx))[0] / len(batch)
            result[f"params{k}"] = {n: p.detach().clone() for n, p in vae.named_parameters()}
        result["init"] = dict(zip([n for n, _ in vae.named_parameters()], init))
        return result

    if __name__ == "__main__":
        nproc, out = int(sys.argv[1]), sys.argv[2]
        sys.exit(worker(out) if nproc == 1 else distributed.launch(worker, nproc, out))
''')


def run_script(path, *args):
    proc = subprocess.run([sys.executable, str(path), *map(str, args)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def steps(tmp_path_factory):
    """The same two steps taken by 1 process and by 2 ranks, for each engine."""
    tmp = tmp_path_factory.mktemp("steps")
    (tmp / "step.py").write_text(STEP_SCRIPT)
    for nproc in (1, 2):
        run_script(tmp / "step.py", nproc, tmp / f"{nproc}.pt")
    return [torch.load(tmp / f"{nproc}.pt", weights_only=True) for nproc in (1, 2)]


@pytest.mark.parametrize("engine", ["fused", "pyro"])
def test_two_process_step_equals_single_process_full_batch_step(steps, engine):
    one, two = steps[0][engine], steps[1][engine]
    for k in (0, 1):
        assert two[f"loss{k}"] == pytest.approx(one[f"loss{k}"], rel=1e-6)
        # a missing factor W (DDP's average of per-shard sums / B) would halve every gradient: they are far from 0
        assert max(float(g.abs().max()) for g in one[f"grad{k}"].values()) > 1.0
        for name, g in one[f"grad{k}"].items():
            # float32 sums in a different order: agreement to float tolerance, not bitwise
            torch.testing.assert_close(two[f"grad{k}"][name], g, rtol=1e-5, atol=1e-5, msg=f"step {k} grad {name}")
        moved = max(float((one[f"params{k}"][n] - one["init"][n]).abs().max()) for n in one["init"])
        assert moved > 1e-3  # an Adam step of lr 0.01 moved the parameters: the comparison is not of untouched ones
        for name, p in one[f"params{k}"].items():
            torch.testing.assert_close(two[f"params{k}"][name], p, rtol=0, atol=1e-6, msg=f"step {k} {name}")


def test_shard_is_distributed_sampler_rule_and_covers_the_batch():
    batch = torch.randperm(23, generator=torch.Generator().manual_seed(0))
    shards = [distributed.Context(rank=r, world_size=3).shard(batch) for r in range(3)]
    assert [len(s) for s in shards] == [8, 8, 7]
    assert sorted(torch.cat(shards).tolist()) == list(range(23))
    assert torch.equal(distributed.Context().shard(batch), batch)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only refusal")
def test_device_auto_falls_back_to_cpu_and_cuda_without_a_gpu_is_one_line(tmp_path):
    assert distributed.resolve_device("auto") == torch.device("cpu")
    proc = run_cli("train", "--set", "train.device=cuda", "--out", tmp_path / "never", *TINY)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        "pyro-vae: error: train.device: 'cuda' but torch.cuda.is_available() is False; use train.device=cpu or auto")


def rows(path):
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "run"
    proc = run_cli("train", "--nproc", "2", "--out", out, *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_two_process_run_writes_exactly_one_set_of_outputs(two_process_run):
    out, proc = two_process_run
    assert proc.stdout.count("epoch    1/2") == 1 and proc.stdout.count("run directory:") == 1, proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.prev.pt", "checkpoint.pt", "config.yaml",
                                                     "metrics.jsonl", "plots", "summary.json"]
    assert [r["epoch"] for r in rows(out)] == [1, 2]
    assert rows(out)[1]["train_elbo"] > rows(out)[0]["train_elbo"]  # it trained
    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["val_elbo"] == rows(out)[1]["val_elbo"]
    state = RunDir(out).load_checkpoint()
    assert len(state["rng"]["torch_ranks"]) == 2  # both ranks' sampling streams, for an exact 2-process resume


def test_two_process_checkpoint_resumes_in_one_process(two_process_run, tmp_path):
    out, _ = two_process_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # roll back to the end-of-epoch-1 checkpoint: the run is then one epoch short
    (run / "checkpoint.prev.pt").replace(run / "checkpoint.pt")
    (run / "summary.json").unlink()
    assert RunDir(run).load_checkpoint()["epoch"] == 1
    proc = run_cli("resume", run, "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed, original = rows(run), rows(out)
    assert [r["epoch"] for r in resumed] == [1, 2]
    assert resumed[0] == original[0]  # the 2-process epoch is kept, not redone
    assert RunDir(run).load_checkpoint()["step"] == RunDir(out).load_checkpoint()["step"]  # same global batches
    # epoch 2 in one process draws rank 1's examples' z from rank 0's stream, so it is not bitwise the
    # 2-process epoch; the same parameters and data make its ELBO agree closely
    assert resumed[1]["val_elbo"] == pytest.approx(original[1]["val_elbo"], abs=5.0)
    assert json.loads((run / "summary.json").read_text())["epochs"] == 2


def assert_same_run(a, b):
    """Bitwise-equal parameters and equal metrics (but for timings): ``a`` took the steps ``b`` took."""
    ours, theirs = RunDir(a).load_checkpoint()["vae"], RunDir(b).load_checkpoint()["vae"]
    for name in theirs:
        assert torch.equal(ours[name], theirs[name]), name
    timing = ("seconds", "wall_time", "examples_per_second")
    assert [{k: v for k, v in r.items() if k not in timing} for r in rows(a)] == \
        [{k: v for k, v in r.items() if k not in timing} for r in rows(b)]


def test_a_two_process_checkpoint_resumes_exactly_on_two_processes(two_process_run, tmp_path):
    out, _ = two_process_run
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (run / "checkpoint.prev.pt").replace(run / "checkpoint.pt")  # back to the end of epoch 1
    (run / "summary.json").unlink()
    proc = run_cli("resume", run, "--nproc", "2", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("run directory:") == 1, proc.stdout  # rank 0 reports
    assert_same_run(run, out)


def test_a_user_error_under_torchrun_is_said_once(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(distributed.free_port()), "-m", "pyro_vae", "resume",
                           str(tmp_path / "missing")], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode != 0
    assert proc.stderr.count("pyro-vae: error:") == 1, proc.stderr


SIGNAL_RUN = ["--set", "data.name=synthetic", "--set", "data.n=600", "--set", "data.x_dim=6",
              "--set", "model.decoder.hidden=[8]", "--set", "guide.hidden=[8]", "--set", "train.batch_size=32",
              "--set", "train.epochs=6", "--set", "train.checkpoint_every_steps=4", "--no-progress"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def test_sigterm_stops_every_rank_at_one_checkpoint_and_resumes_exactly_with_torchrun(tmp_path):
    whole = tmp_path / "whole"
    proc = run_cli("train", "--nproc", "2", "--out", whole, *SIGNAL_RUN)
    assert proc.returncode == 0, proc.stderr[-3000:]

    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "pyro_vae", "train", "--nproc", "2", "--out", str(cut), *SIGNAL_RUN],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    for line in proc.stdout:  # rank 0's plain progress lines
        if line.startswith("epoch    2/"):
            break
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and err.count("pyro-vae: error:") == 1, err  # said once, by rank 0
    state = RunDir(cut).load_checkpoint()
    assert 2 * 15 <= state["step"] < 6 * 15 and not (cut / "summary.json").exists()

    # the documented torchrun path; both ranks' streams come back from the checkpoint
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                           "--master-port", str(distributed.free_port()), "-m", "pyro_vae", "resume", str(cut),
                           "--no-progress"], capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert_same_run(cut, whole)


def test_a_nan_on_two_processes_stops_both_at_the_same_step_with_one_line(tmp_path):
    proc = run_cli("train", "--nproc", "2", "--out", tmp_path / "run", "--set", "data.name=synthetic",
                   "--set", "data.n=200", "--set", "optim.lr=1e30", *TINY)
    assert proc.returncode == 3, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: non-finite step 2 (epoch 1)"), proc.stderr
    state = RunDir(tmp_path / "run").load_checkpoint()
    assert state["step"] == 0 and all(torch.isfinite(p).all() for p in state["vae"].values())


# rank 1 dies outside pyro_vae's error handling while rank 0 is busy: the launcher stops rank 0 and says why
CRASH_SCRIPT = textwrap.dedent('''
    import os
    import sys
    import time
    from pyro_vae.training import distributed

    def worker(how):
        if os.environ["RANK"] == "1":
            os._exit(1)
        time.sleep(120)
        return 0

    if __name__ == "__main__":
        sys.exit(distributed.launch(worker, 2, sys.argv[1]))
''')


def test_a_rank_that_dies_without_a_word_is_named_in_one_line(tmp_path):
    (tmp_path / "crash.py").write_text(CRASH_SCRIPT)
    proc = subprocess.run([sys.executable, str(tmp_path / "crash.py"), "exit"], capture_output=True, text=True,
                          env=ENV, timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, proc.stderr  # rank 0, stopped by the launcher
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pyro-vae: error: rank 1 of 2 exited with status 1"), proc.stderr


def test_the_failure_line_prefers_a_rank_that_exited_by_itself_and_names_signals():
    assert distributed.failure({1: -9}, 2).startswith("rank 1 of 2 was killed by signal 9 (SIGKILL)")
    assert distributed.failure({0: -15, 3: 2}, 4).startswith("rank 3 of 4 exited with status 2")
    assert distributed.failure({2: -99}, 4).startswith("rank 2 of 4 was killed by signal 99 (its own")
