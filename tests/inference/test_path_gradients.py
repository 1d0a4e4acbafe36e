"""STL (elbo) and DReG (iwae): the values of the usual bounds, unbiased path-derivative gradients, STL's zero
encoder gradient at the exact posterior, and the Pyro and fused forms agreeing for the same seed."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_vae import validate_config
from pyro_vae.build import build_vae
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.linear_gaussian import linear_gaussian, posterior
from pyro_vae.inference.engine import select_engine
from pyro_vae.inference.objectives import LOSSES, build_elbo, loss_key, unsupported_reason
from pyro_vae.inference.path_gradients import DoublyReparameterizedIWAE, StickingTheLanding
from pyro_vae.inference.renyi import RenyiBound
from pyro_vae.model import VAE
from conftest import loss_and_grads

SMALL = {"model": {"latent_dim": 2, "decoder": {"hidden": [8]}, "likelihood": {"scale": 0.5}}, "guide": {"hidden": [8]}}
STL = {"estimator": "stl"}
DREG = {"objective": "iwae", "estimator": "dreg"}


def small_vae() -> VAE:
    return build_vae(validate_config(SMALL), 5)


def inference(**fields):
    return validate_config({"inference": fields}).inference


def fused(vae: VAE, inf, x: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    loss, option = LOSSES[loss_key(inf)]
    return loss(vae, x, inf.num_particles, option(inf), beta)


def grads(vae: VAE, loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """The flattened gradient of ``loss`` w.r.t. ``module``'s parameters (zeros where it has none)."""
    found = torch.autograd.grad(loss, list(module.parameters()), allow_unused=True, materialize_grads=True)
    return torch.cat([g.reshape(-1) for g in found])


def paired_draws(vae, inf, reference, x, n):
    """``n`` per-draw encoder and decoder gradients of the fused ``inf`` and ``reference`` losses, a pair per seed."""
    out = {"enc": [], "dec": [], "enc_ref": [], "dec_ref": []}
    for i in range(n):
        for tag, which in (("", inf), ("_ref", reference)):
            pyro.set_rng_seed(1000 + i)
            loss = fused(vae, which, x)
            g = torch.autograd.grad(loss, list(vae.encoder.parameters()) + list(vae.decoder.parameters()))
            n_enc = len(list(vae.encoder.parameters()))
            out["enc" + tag].append(torch.cat([t.reshape(-1) for t in g[:n_enc]]))
            out["dec" + tag].append(torch.cat([t.reshape(-1) for t in g[n_enc:]]))
    return {k: torch.stack(v).double() for k, v in out.items()}


# -- 1. unbiasedness ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("inf, reference", [
    (dict(STL, num_particles=1), {"kl": "monte_carlo", "num_particles": 1}),
    (dict(DREG, num_particles=5), {"objective": "iwae", "num_particles": 5}),
])
def test_gradient_is_unbiased_and_the_decoder_gradient_unchanged(inf, reference):
    """Same draws: the decoder gradient is the plain estimator's, draw for draw; the encoder gradient differs
    draw by draw (STL: the dropped score term; DReG: that and the w~^2 weighting) by something of mean 0:
    the paired difference's mean is within 4 SE per coordinate, and Hotelling's T^2 of it is a plausible chi-square
    draw. (The encoder gradient lives in the span of the Jacobians of q's 2 x latent_dim parameters per data point,
    rank 12 here: its coordinates are far from independent, so T^2 is taken in that span.)"""
    pyro.enable_validation(False)
    vae = small_vae()
    x = torch.rand(3, 5, generator=torch.Generator().manual_seed(3))
    n = 1000
    d = paired_draws(vae, inference(**inf), inference(**reference), x, n)
    torch.testing.assert_close(d["dec"], d["dec_ref"], rtol=1e-4, atol=1e-5)
    diff = d["enc"] - d["enc_ref"]
    assert float(diff.abs().max()) > 1e-2  # not the same estimator
    mean = diff.mean(0)
    z = mean / (diff.var(0) / n).sqrt()
    assert float(z.abs().max()) < 4.0, z
    lam, u = torch.linalg.eigh(torch.cov(diff.T))
    keep = lam > 1e-9 * lam.max()
    rank = int(keep.sum())
    t2 = float(n * ((u[:, keep].T @ mean) ** 2 / lam[keep]).sum())  # ~ chi-square(rank) if the mean is 0
    assert rank == 12 and t2 < rank + 5 * (2 * rank) ** 0.5, (rank, t2)


# -- 2. STL and DReG at the exact posterior ----------------------------------------------------------------------------
class ExactPosterior(nn.Module):
    """q(z|x) = N(A x + c, L L^T), A, c and L (lower triangle) learnable: set to p(z|x) of a linear-Gaussian model."""

    def __init__(self, A: torch.Tensor, b: torch.Tensor, G: torch.Tensor):
        super().__init__()
        self.A = nn.Parameter(A.clone())
        self.c = nn.Parameter(-(b @ A.T))
        self.L = nn.Parameter(torch.linalg.cholesky(G))

    def forward(self, x: torch.Tensor) -> dist.Distribution:
        scale_tril = torch.tril(self.L).expand(x.shape[0], -1, -1)
        return dist.MultivariateNormal(x @ self.A.T + self.c, scale_tril=scale_tril)


def linear_gaussian_at_its_posterior() -> VAE:
    cfg = validate_config({"model": {"latent_dim": 2, "decoder": "linear",
                                     "likelihood": {"scale": 0.5, "learn_scale": "global"}}})
    vae = build_vae(cfg, 4).double()
    vae.encoder = ExactPosterior(*posterior(*linear_gaussian(vae, torch.float64)))  # full covariance
    return vae


@pytest.mark.parametrize("engine", ["pyro", "fused"])
@pytest.mark.parametrize("inf, reference", [(dict(STL, num_particles=3), {"kl": "monte_carlo", "num_particles": 3}),
                                            (dict(DREG, num_particles=1), {"objective": "iwae", "num_particles": 1}),
                                            (dict(DREG, num_particles=7), {"objective": "iwae", "num_particles": 7})])
def test_encoder_gradient_is_zero_at_the_exact_posterior(engine, inf, reference):
    """log w = log p(x) for every z when q = p(z|x): the STL / DReG encoder gradient is 0 on every draw, the
    reparameterized ELBO's / IWAE's is not (its score term is noise of mean 0)."""
    vae = linear_gaussian_at_its_posterior()
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for seed in range(5):
        g = {}
        for name, which in (("path", inf), ("reparam", reference)):
            inf_ = inference(**which)
            pyro.set_rng_seed(seed)
            loss = (build_elbo(inf_).differentiable_loss(vae.model, vae.guide, x) if engine == "pyro"
                    else fused(vae, inf_, x))
            g[name] = grads(vae, loss, vae.encoder)
        assert float(g["reparam"].abs().max()) > 0.1
        assert float(g["path"].abs().max()) < 1e-10 * float(g["reparam"].abs().max())


# -- 3. Pyro and fused agree ----------------------------------------------------------------------------------
@pytest.mark.parametrize("inf", [dict(STL, num_particles=1), dict(STL, num_particles=4),
                                 dict(DREG, num_particles=1), dict(DREG, num_particles=5)])
@pytest.mark.parametrize("beta", [1.0, 0.3])
@pytest.mark.parametrize("validate", [True, False])
def test_pyro_and_fused_give_the_same_value_and_gradients(inf, beta, validate):
    vae = small_vae()
    x = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    cfg = inference(**inf)
    vae.kl_weight = beta
    with pyro.validation_enabled(validate):
        oracle = loss_and_grads(vae, lambda: build_elbo(cfg).differentiable_loss(vae.model, vae.guide, x), 5)
        got = loss_and_grads(vae, lambda: fused(vae, cfg, x, beta), 5)
    torch.testing.assert_close(got[0], oracle[0], rtol=1e-5, atol=1e-4)
    assert set(got[1]) == set(oracle[1])
    for name in oracle[1]:
        torch.testing.assert_close(got[1][name], oracle[1][name], rtol=1e-4, atol=1e-5, msg=lambda m: f"{name}: {m}")
    assert torch.equal(got[2], oracle[2])  # the same random numbers used


@pytest.mark.parametrize("inf, reference", [(dict(STL, num_particles=3), {"kl": "monte_carlo", "num_particles": 3}),
                                            (dict(DREG, num_particles=3), {"objective": "iwae", "num_particles": 3})])
def test_value_is_the_usual_bound(inf, reference):
    vae = small_vae()
    x = torch.rand(4, 5)
    values = []
    for which in (inf, reference):
        pyro.set_rng_seed(2)
        values.append(build_elbo(inference(**which)).differentiable_loss(vae.model, vae.guide, x).detach())
    torch.testing.assert_close(values[0], values[1])


def test_unvectorized_dreg_is_the_iwae_bound_of_its_draws():
    """One trace per particle (``vectorize_particles=False``): the same value as RenyiBound's, same decoder gradient."""
    vae = small_vae()
    x = torch.rand(4, 5)
    out = []
    for elbo in (DoublyReparameterizedIWAE(num_particles=3, vectorize_particles=False, max_plate_nesting=1),
                 RenyiBound(alpha=0.0, num_particles=3, vectorize_particles=False, max_plate_nesting=1)):
        pyro.set_rng_seed(4)
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        out.append((loss.detach(), grads(vae, loss, vae.decoder)))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


def test_registered_for_both_engines():
    vae = small_vae()
    for inf, cls in ((STL, StickingTheLanding), (DREG, DoublyReparameterizedIWAE)):
        cfg = validate_config({**SMALL, "inference": inf, "train": {"engine": "fused"}})
        assert type(build_elbo(cfg.inference)) is cls
        assert unsupported_reason(vae, cfg.inference, torch.rand(1, 5)) is None
        engine, loss = select_engine(cfg, vae, build_elbo(cfg.inference), torch.rand(1, 5))
        assert engine == "fused" and torch.isfinite(loss(torch.rand(3, 5), 1.0))


def test_pyro_form_refuses_a_guide_that_cannot_rsample():
    from pyro_vae.inference.score_function import score_function_guide

    vae = small_vae()
    with pytest.raises(ValueError, match="reparameterized"):
        build_elbo(inference(**STL)).differentiable_loss(vae.model, score_function_guide(vae.guide), torch.rand(2, 5))


# -- 4. config -------------------------------------------------------------------------------------------------
def test_stl_and_dreg_use_the_monte_carlo_kl():
    assert inference(**STL).kl == "monte_carlo" and inference(**DREG).kl == "monte_carlo"


@pytest.mark.parametrize("fields, message", [
    ({"objective": "iwae", "estimator": "stl"}, "inference.estimator"),
    ({"objective": "renyi", "alpha": 0.5, "estimator": "stl"}, "inference.estimator"),
    ({"estimator": "dreg"}, "inference.estimator"),
    ({"objective": "renyi", "alpha": 0.5, "estimator": "dreg"}, "inference.estimator"),
    ({"estimator": "stl", "kl": "analytic"}, "inference.kl"),
    ({"objective": "iwae", "estimator": "dreg", "kl": "analytic"}, "inference.kl"),
])
def test_invalid_combinations_are_one_line_config_errors(fields, message):
    with pytest.raises(ConfigError) as err:
        validate_config({"inference": fields})
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
