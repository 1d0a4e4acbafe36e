"""The benchmark suite: its PyTorch reference computes pyro_vae's ELBO, and ``python -m benchmarks --quick`` runs."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pyro
import pytest
import torch

from pyro_vae import build_vae, validate_config
from pyro_vae.objectives import build_elbo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # benchmarks/ is a top-level package of the repository, not of the wheel

from benchmarks.reference import TorchVAE, load_into_pyro_vae  # noqa: E402
from benchmarks.training import Case  # noqa: E402


@pytest.mark.parametrize("likelihood", ["normal", "bernoulli"])
def test_reference_vae_is_pyro_vaes_model_and_objective(likelihood):
    """Same weights and seed: the hand-written loss equals Pyro's ELBO per point, so the race is fair."""
    x_dim, hidden, latent = 12, 7, 3
    cfg = validate_config({"model": {"latent_dim": latent, "decoder": {"hidden": [hidden]}, "likelihood": likelihood},
                           "guide": {"hidden": [hidden]}})
    vae = build_vae(cfg, x_dim)
    ref = TorchVAE(x_dim, hidden, latent, likelihood)
    load_into_pyro_vae(ref, vae)
    assert sum(p.numel() for p in ref.parameters()) == sum(p.numel() for p in vae.parameters())
    x = torch.rand(9, x_dim)
    if likelihood == "bernoulli":
        x = torch.bernoulli(x)
    pyro.set_rng_seed(4)
    want = build_elbo(cfg.inference).differentiable_loss(vae.model, vae.guide, x) / len(x)
    pyro.set_rng_seed(4)
    got = ref.loss(x)
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-4)


def test_matmul_flops_count_the_four_weight_matrices():
    case = Case("mnist", "generated", 784, 400, 50, "bernoulli", 128)
    assert case.matmul_flops_per_example() == 6 * (784 * 400 + 2 * 400 * 50 + 50 * 400 + 400 * 784)


def test_quick_benchmark_runs_and_writes_results(tmp_path):
    out = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--rounds", "1", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "quick.json").read_text())
    assert {"cpu", "cores", "torch", "pyro"} <= set(result["machine"])
    assert len(result["training"]) == 2
    for row in result["training"]:
        rates = row["examples_per_second"]
        assert set(rates) == {"torch_eager", "pyro_svi", "pyro_vae[pyro]", "pyro_vae[fused]"}
        assert all(r > 0 and math.isfinite(r) for r in rates.values())
        for name, rate in rates.items():  # one round: the ratio is the ratio of that round's rates
            assert row["ratio_to_torch_eager"][name] == pytest.approx(rate / rates["torch_eager"])
    if result["iwae"]["available"]:
        (row,) = result["iwae"]["rows"]
        assert row["K"] == 100 and row["time_ratio_to_bound"] > 0 and row["peak_memory_mb"] >= 0
    table = (tmp_path / "quick.md").read_text()
    assert "| digits 64-64-2, normal, B=128 |" in table and result["machine"]["cpu"] in table


@pytest.mark.skipif(not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_benchmark_smoke(tmp_path):
    """Two epochs on 1000 real images for each model, scored by IWAE-100: numbers of the right size."""
    out = subprocess.run([sys.executable, "-m", "benchmarks.fashion_mnist", "--smoke", "--out", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads((tmp_path / "fashion_mnist_smoke.json").read_text())
    rows = {r["model"]: r for r in result["rows"]}
    assert set(rows) == {"VAE (hand-written PyTorch)", "VAE", "IWAE k=5", "IWAE k=50"}
    assert rows["VAE"]["engine"] == "fused"
    for r in rows.values():
        # 784 binary pixels: below 0 nats, and far above the -543 nats of a coin flip per pixel
        assert -543 < r["test_log_likelihood"] < 0
