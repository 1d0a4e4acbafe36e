"""pPCA and factor analysis: closed form against an independent SVD, exact EM's monotone convergence, runs on disk."""

import math

import numpy as np
import pytest
import torch
from pyro.infer import Trace_ELBO
from sklearn.decomposition import FactorAnalysis

from pyro_vae import load_config, load_run
from pyro_vae.baselines import export, ppca
from pyro_vae.baselines.history import ConvergenceWarning
from pyro_vae.errors import ConfigError
from pyro_vae.build import prepare



def linear_data(n=1500, D=6, K=2, heteroscedastic=False, seed=0):
    g = np.random.default_rng(seed)
    W = g.normal(size=(D, K)) * np.array([3.0, 1.5])[:K]
    noise = np.linspace(0.3, 1.2, D) if heteroscedastic else np.full(D, 0.5)
    x = g.normal(size=(n, K)) @ W.T + 2.0 + noise * g.normal(size=(n, D))
    return torch.as_tensor(x)


def test_closed_form_matches_an_independent_svd():
    x = linear_data()
    K = 2
    fit = ppca.ppca_closed_form(x, K)
    # independent: singular values of the centred data give the eigenvalues of S (numpy, not torch.eigh)
    xc = x.numpy() - x.numpy().mean(0)
    _, s, Vt = np.linalg.svd(xc, full_matrices=False)
    lam = s ** 2 / len(xc)
    D = xc.shape[1]
    sigma2 = lam[K:].mean()
    WWt = (Vt[:K].T * (lam[:K] - sigma2)) @ Vt[:K]
    ll = -0.5 * (D * math.log(2 * math.pi) + np.log(lam[:K]).sum() + (D - K) * math.log(sigma2) + D)  # T&B eq. 13 at the ML
    assert float(fit.params["noise_var"]) == pytest.approx(sigma2, rel=1e-10)
    np.testing.assert_allclose((fit.params["W"] @ fit.params["W"].T).numpy(), WWt, atol=1e-10)
    np.testing.assert_allclose(fit.params["b"].numpy(), x.numpy().mean(0), atol=1e-12)
    assert fit.log_likelihood == pytest.approx(ll, abs=1e-10)
    # and the marginal log N(x; b, WW^T + sigma^2 I) evaluated point by point agrees
    assert ppca.log_likelihood(x, **fit.params) == pytest.approx(ll, abs=1e-9)


def test_ppca_em_is_monotone_and_reaches_the_closed_form_optimum():
    x = linear_data()
    best = ppca.ppca_closed_form(x, 2).log_likelihood
    fit = ppca.ppca_em(x, 2, tol=1e-10, max_iter=5000)
    ll = np.array(fit.history.log_likelihood)
    assert fit.converged and fit.iterations > 5
    assert (np.diff(ll) >= -1e-12).all()  # float64 round-off only
    assert abs(fit.log_likelihood - best) < 1e-4
    assert fit.log_likelihood <= best + 1e-9  # the closed form is the global maximum
    print(f"pPCA EM: {fit.iterations} iterations, gap to closed form {best - fit.log_likelihood:.2e} nats/point")


def test_factor_analysis_em_is_monotone_and_matches_sklearn():
    x = linear_data(heteroscedastic=True)
    fit = ppca.factor_analysis_em(x, 2, tol=1e-10, max_iter=5000)
    ll = np.array(fit.history.log_likelihood)
    assert fit.converged and (np.diff(ll) >= -1e-12).all()
    assert fit.params["noise_var"].shape == (6,)
    sk = FactorAnalysis(n_components=2, tol=1e-10, max_iter=5000, svd_method="lapack").fit(x.numpy())
    assert fit.log_likelihood == pytest.approx(sk.score(x.numpy()), abs=1e-4)
    # per-feature noise fits heteroscedastic data better than pPCA's single sigma^2
    assert fit.log_likelihood > ppca.ppca_closed_form(x, 2).log_likelihood + 0.01


def test_em_warns_when_max_iter_runs_out_and_refuses_bad_latent_dim():
    x = linear_data(n=200)
    with pytest.warns(ConvergenceWarning, match="max_iter=2"):
        fit = ppca.ppca_em(x, 2, max_iter=2)
    assert not fit.converged and fit.iterations == 2
    with pytest.raises(ConfigError, match="model.latent_dim"):
        ppca.factor_analysis_em(x, 6)


@pytest.mark.parametrize("method", ["ppca_em", "factor_analysis_em"])
def test_em_result_is_a_loadable_run_whose_guide_is_the_exact_posterior(tmp_path, method):
    cfg = load_config(None, ["data.name=synthetic", "data.n=400", "data.x_dim=5", "model.latent_dim=2"])
    data, _ = prepare(cfg)
    fit = getattr(ppca, method)(data.train, 2, x_val=data.val)
    written = export.write_run(cfg, data, fit, tmp_path / "em")
    run = load_run(tmp_path / "em")
    assert run.config.model.decoder.name == "linear" and run.config.guide.hidden == []
    assert run.config.model.likelihood.learn_scale == ("per_feature" if method == "factor_analysis_em" else "global")
    for a, b in zip(written.vae.state_dict().values(), run.vae.state_dict().values()):
        assert torch.equal(a, b)
    vae = run.vae
    W, b = vae.decoder.weight.double(), vae.decoder.bias.double()
    noise_var = (2 * vae.likelihood.log_scale.double()).exp()
    # the loaded run is the same model (W is rotated, W W^T is not)
    assert ppca.log_likelihood(data.test, W, b, noise_var) == pytest.approx(written.summary["log_likelihood"]["test"], abs=1e-5)
    # with q(z|x) = p(z|x), log p(x, z) - log q(z|x) = log p(x) for every z: the one-sample ELBO is exact
    x = data.test
    with torch.no_grad():
        elbo = -Trace_ELBO().loss(vae.model, vae.guide, x) / len(x)
    assert elbo == pytest.approx(written.summary["log_likelihood"]["test"], abs=2e-3)  # float32 round-off
    assert written.summary["converged"] and len(run.metrics) == fit.iterations + 1
    assert all(np.diff([m["train_elbo"] for m in run.metrics]) >= -1e-12)


def test_an_em_run_is_finished_for_resume_and_its_checkpoint_fits_a_trainer(tmp_path, capsys):
    """The export writes the checkpoint `pyro-vae train` would hold at the fit's counters, without a Trainer:
    `pyro-vae resume` finds it finished, and it loads into the Trainer of its own config."""
    from pyro_vae.cli import main
    from pyro_vae.rundir import RunDir
    from pyro_vae.training.trainer import Trainer

    cfg = load_config(None, ["data.name=synthetic", "data.n=200", "data.x_dim=5", "model.latent_dim=2"])
    data, _ = prepare(cfg)
    fit = ppca.ppca_em(data.train, 2)
    written = export.write_run(cfg, data, fit, tmp_path / "em")
    before = {p: p.read_bytes() for p in (tmp_path / "em").rglob("*") if p.is_file()}
    assert main(["resume", str(tmp_path / "em")]) == 0
    assert "already finished; nothing to do" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in (tmp_path / "em").rglob("*") if p.is_file()} == before
    state = RunDir(tmp_path / "em").load_checkpoint(quiet=True)
    assert state["finished"] and state["epoch"] == state["step"] == fit.iterations
    assert state["config_hash"] == written.config.hash()
    trainer = Trainer.from_config(written.config, data, export.build_exact_vae(cfg, fit, data.x_dim)[1], quiet=True)
    trainer.load_state(state)
    assert trainer.epoch == fit.iterations and trainer.metrics == written.metrics
    assert all(torch.equal(a, b) for a, b in zip(trainer.vae.state_dict().values(), written.vae.state_dict().values()))
