"""Test setup: a clean param store, Pyro validation on and a fixed seed for every test."""

import os
import subprocess
import sys

import pyro
import pytest
import torch

os.environ.setdefault("MPLBACKEND", "Agg")
# One thread: the tests' tensors are tiny, where thread start-up costs more than it saves, and
# bitwise reproducibility (resume tests) holds only between equal thread counts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def clean_pyro():
    pyro.clear_param_store()
    pyro.enable_validation(True)
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


def run_cli(*args, cwd=None, timeout=600):
    """Run ``python -m pyro_vae ARGS`` in a subprocess; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "pyro_vae", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


TINY = ["--set", "train.epochs=2", "--set", "model.decoder.hidden=[16]", "--set", "guide.hidden=[16]",
        "--no-progress"]


def interrupt_at_step(cfg, config_yaml, out, step, match=None):
    """Train ``cfg`` into a new run directory ``out`` (its config.yaml copied from ``config_yaml``) and stop it
    with SIGINT, as a signal would, once ``step`` steps are done; the Interrupted it raises is checked against
    ``match``. Returns the run directory's path, ready for ``pyro-vae resume``."""
    import signal

    from pyro_vae.build import prepare
    from pyro_vae.rundir import RunDir
    from pyro_vae.training.guards import Interrupted
    from pyro_vae.training.trainer import Trainer

    data, vae = prepare(cfg)
    run = RunDir.create(out)
    run.write_config(config_yaml.read_text())
    trainer = Trainer.from_config(cfg, data, vae, run, progress=False)
    train_step = trainer.train_step

    def stop_after(xb, rows=None):
        if trainer.step == step:
            trainer.stop_signal = signal.SIGINT
        return train_step(xb, rows)

    trainer.train_step = stop_after
    with pytest.raises(Interrupted, match=match):
        trainer.fit()
    return run.path


def loss_and_grads(vae, compute, seed: int):
    """(loss, {param name: grad}, torch RNG state afterwards) of ``compute()`` from ``seed``."""
    vae.zero_grad(set_to_none=True)
    pyro.set_rng_seed(seed)
    loss = compute()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in vae.named_parameters() if p.grad is not None}
    return loss.detach(), grads, torch.get_rng_state()
