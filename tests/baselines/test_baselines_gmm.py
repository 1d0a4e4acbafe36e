"""Gaussian mixtures: exact EM against scikit-learn, its monotonicity, the two SVI variants against it, and the
k-means++ start with restarts against scikit-learn's ``init_params="kmeans"``, ``n_init``."""

import warnings

import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO, config_enumerate
from sklearn.mixture import GaussianMixture

from pyro_vae import load_config, load_data
from pyro_vae.baselines import gmm
from pyro_vae.baselines.history import ConvergenceWarning
from pyro_vae.data import SyntheticMixture
from pyro_vae.errors import ConfigError


def mixture(covariance_type="diag", n=600):
    cfg = load_config(None, ["data.name=synthetic_mixture", f"data.n={n}", "data.num_components=3",
                             f"data.covariance_type={covariance_type}", "data.separation=3.0"])
    return load_data(cfg.data, cfg.seed).train.double()


@pytest.mark.parametrize("covariance_type", ["spherical", "diag"])
def test_em_matches_sklearn_from_the_same_initialization(covariance_type):
    x = mixture(covariance_type)
    init = gmm.initial_params(x, 3, covariance_type, seed=0)
    fit = gmm.em(x, 3, covariance_type, init=init, tol=1e-10)
    ll = np.array(fit.history.log_likelihood)
    assert fit.converged and (np.diff(ll) >= -1e-12).all()  # EM never decreases the likelihood
    sk = GaussianMixture(3, covariance_type=covariance_type, tol=1e-10, max_iter=1000, reg_covar=0.0,
                         weights_init=init["weights"].numpy(), means_init=init["locs"].numpy(),
                         precisions_init=(1 / init["variances"]).numpy()).fit(x.numpy())
    assert fit.log_likelihood == pytest.approx(sk.score(x.numpy()), abs=1e-7)
    np.testing.assert_allclose(fit.params["locs"].numpy(), sk.means_, atol=1e-4)
    np.testing.assert_allclose(fit.params["weights"].numpy(), sk.weights_, atol=1e-6)
    np.testing.assert_allclose(fit.params["variances"].numpy(), sk.covariances_, atol=1e-4)


def test_enumerated_loss_is_the_exact_negative_log_likelihood():
    x = mixture("spherical", n=200)
    init = gmm.initial_params(x, 3, "spherical", seed=0)
    loss = TraceEnum_ELBO(max_plate_nesting=1).loss(config_enumerate(gmm.model, "parallel"), gmm._empty_guide, x, init)
    assert -loss / len(x) == pytest.approx(gmm.log_likelihood(x, **init), abs=1e-9)


def test_enumerated_svi_reaches_em():
    x = mixture("diag", n=400)
    init = gmm.initial_params(x, 3, "diag", seed=1)
    em = gmm.em(x, 3, "diag", init=init, tol=1e-10)
    svi = gmm.svi_enumerated(x, init, steps=150, lr=0.2, eval_every=50)
    gap = em.log_likelihood - svi.log_likelihood
    print(f"enumerated SVI gap to EM: {gap:.2e} nats/point")
    assert svi.history.log_likelihood[0] == pytest.approx(em.history.log_likelihood[0], abs=1e-9)  # same start
    assert -1e-6 < gap < 1e-3


def test_amortized_score_function_svi_improves_on_init_and_stays_below_em():
    x = mixture("spherical", n=300)
    init = gmm.initial_params(x, 3, "spherical", seed=1)
    em = gmm.em(x, 3, "spherical", init=init, tol=1e-10)
    fit = gmm.svi_amortized(x, init, steps=60, lr=0.05, eval_every=20)
    ll = fit.history.log_likelihood
    assert all(np.isfinite(ll)) and ll[-1] > ll[0] + 0.1
    # EM from the same start found a local maximum that amortized SVI has not passed
    assert ll[-1] <= em.log_likelihood + 1e-3
    print(f"amortized SVI after 60 steps: {ll[-1]:.3f} vs EM {em.log_likelihood:.3f} nats/point")


def test_bad_arguments_are_config_errors():
    x = mixture(n=50)
    with pytest.raises(ConfigError, match="covariance_type"):
        gmm.em(x, 3, "full")
    with pytest.raises(ConfigError, match="num_components"):
        gmm.initial_params(x, 0)


def test_em_recovers_the_synthetic_mixture_truth():
    cfg = load_config(None, ["data.name=synthetic_mixture", "data.n=3000", "data.num_components=3",
                             "data.covariance_type=diag", "data.separation=4.0", "data.val_fraction=0", "data.test_fraction=0"])
    data = load_data(cfg.data, cfg.seed)
    truth = data.truth
    with warnings.catch_warnings():  # a poor start may stall in a split-cluster saddle: keep the best of 4 (n_init)
        warnings.simplefilter("ignore", ConvergenceWarning)
        fits = [gmm.em(data.train, 3, "diag", init=gmm.initial_params(data.train, 3, "diag", seed=s), tol=1e-8,
                       max_iter=200) for s in range(4)]
    fit = max(fits, key=lambda f: f.log_likelihood)
    assert fit.converged
    order = [int(torch.cdist(truth["locs"][k:k + 1].double(), fit.params["locs"]).argmin()) for k in range(3)]
    assert sorted(order) == [0, 1, 2]
    p = {k: v[order] for k, v in fit.params.items()}
    # sampling error of n = 3000 draws: a mean's standard error is below 1.5 / sqrt(3000 * 0.1) < 0.09
    np.testing.assert_allclose(p["locs"].numpy(), truth["locs"].numpy(), atol=0.3)
    np.testing.assert_allclose(p["weights"].numpy(), truth["weights"].numpy(), atol=0.05)
    np.testing.assert_allclose(p["variances"].sqrt().numpy(), truth["scales"].numpy(), rtol=0.15)


def test_kmeans_params_recovers_well_separated_cluster_means():
    # three clusters 12 apart with scales <= 1.5: k-means labels every point by its own cluster, so each loc is
    # that cluster's sample mean, off the true mean by N(0, sigma_k^2 / n_k) per coordinate
    rng = np.random.default_rng(0)
    means, sigmas, sizes = np.array([[0.0, 0.0], [12.0, 0.0], [0.0, 12.0]]), np.array([0.5, 1.0, 1.5]), [100, 200, 300]
    x = np.concatenate([m + s * rng.normal(size=(n, 2)) for m, s, n in zip(means, sigmas, sizes)])
    x = torch.as_tensor(x[rng.permutation(len(x))])
    for covariance_type in ("diag", "spherical"):
        p = gmm.kmeans_params(x, 3, covariance_type, seed=0)
        assert p["weights"].shape == (3,) and p["locs"].shape == (3, 2) and p["locs"].dtype == torch.float64
        assert p["variances"].shape == ((3, 2) if covariance_type == "diag" else (3,))
        order = [int(torch.cdist(torch.as_tensor(means[k:k + 1]), p["locs"]).argmin()) for k in range(3)]
        assert sorted(order) == [0, 1, 2]
        standard_error = sigmas / np.sqrt(sizes)  # (K,): 0.05, 0.07, 0.087
        error = np.abs(p["locs"][order].numpy() - means)  # (K, D)
        assert (error < 4 * standard_error[:, None]).all(), (error, standard_error)
        np.testing.assert_allclose(p["weights"][order].numpy(), np.array(sizes) / sum(sizes), rtol=1e-12)
        var = p["variances"][order].numpy()
        np.testing.assert_allclose(var if covariance_type == "spherical" else var.mean(1), sigmas ** 2, rtol=0.25)


def test_kmeans_params_is_sklearns_kmeans_start_and_floors_a_single_point_cluster():
    x = mixture("diag", n=300)
    for covariance_type in ("diag", "spherical"):
        p = gmm.kmeans_params(x, 3, covariance_type, seed=5)
        sk = GaussianMixture(3, covariance_type=covariance_type, reg_covar=0.0)
        sk._initialize_parameters(x.numpy(), np.random.RandomState(5))  # private: the start fit() would use
        np.testing.assert_allclose(p["weights"].numpy(), sk.weights_, rtol=1e-12)
        np.testing.assert_allclose(p["locs"].numpy(), sk.means_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(p["variances"].numpy(), sk.covariances_, rtol=1e-10)
    # a far outlier is a cluster of its own: zero variance, raised to the floor
    p = gmm.kmeans_params(torch.cat([x, torch.full((1, x.shape[1]), 1e3, dtype=x.dtype)]), 4, "diag", seed=0)
    lone = int(p["locs"][:, 0].argmax())
    assert p["weights"][lone] * (len(x) + 1) == pytest.approx(1.0)
    assert (p["variances"][lone] == gmm.VARIANCE_FLOOR).all() and (p["variances"] >= gmm.VARIANCE_FLOOR).all()


def test_em_restarts_keeps_the_best_restart_and_records_each():
    raw = SyntheticMixture(x_dim=3, num_components=6, separation=2.0, covariance_type="diag", n=500, seed=1).load()
    x = torch.as_tensor(raw.x)
    fit = gmm.em_restarts(x, 6, "diag", n_init=5, seed=3, tol=1e-6)
    lls = [r["log_likelihood"] for r in fit.restarts]
    assert [r["seed"] for r in fit.restarts] == [3, 4, 5, 6, 7]
    assert all(set(r) == {"seed", "log_likelihood", "iterations", "converged", "seconds"} for r in fit.restarts)
    assert max(lls) - min(lls) > 1e-3  # the restarts reach different local maxima, so the choice matters
    assert all(fit.log_likelihood >= ll for ll in lls) and fit.log_likelihood == max(lls)
    best = fit.restarts[lls.index(max(lls))]
    # the history is the kept restart's own: it starts at that restart's k-means start and ends at its maximum
    assert fit.iterations == best["iterations"] == len(fit.history.rows) - 1 and fit.converged == best["converged"]
    start = gmm.kmeans_params(x, 6, "diag", seed=best["seed"])
    assert fit.history.log_likelihood[0] == pytest.approx(gmm.log_likelihood(x, **start), abs=1e-12)
    assert fit.total_seconds == pytest.approx(sum(r["seconds"] for r in fit.restarts))
    assert fit.total_seconds >= fit.history.seconds > 0


def test_em_restarts_budget_and_bad_n_init():
    x = mixture("diag", n=200)
    # a spent budget: the first restart still starts (k-means, then no EM step), no later one does
    fit = gmm.em_restarts(x, 3, "diag", n_init=4, seconds=0.0)
    assert len(fit.restarts) == 1 and fit.iterations == 0 and not fit.converged
    assert gmm.em_restarts(x, 3, "diag", n_init=2, seconds=60.0).restarts[1]["converged"]
    with pytest.raises(ConfigError, match="n_init"):
        gmm.em_restarts(x, 3, "diag", n_init=0)


def test_em_restarts_reaches_sklearn_kmeans_n_init_where_one_random_start_does_not():
    # 4 diagonal components in 5-D (seed 2): every one of the 10 k-means++ restarts, ours and scikit-learn's, and
    # EM started at the true parameters reach the same maximum, -8.4972 nats/pt, which we take as the global one;
    # EM from 4 random data points (initial_params, seed 0) stalls in a local maximum 0.23 nats/pt below it
    raw = SyntheticMixture(x_dim=5, num_components=4, covariance_type="diag", n=2000, seed=2).load()
    x = torch.as_tensor(raw.x)
    fit = gmm.em_restarts(x, 4, "diag", n_init=10, seed=0, tol=1e-8, max_iter=2000)
    sk = GaussianMixture(n_components=4, covariance_type="diag", n_init=10, init_params="kmeans", tol=1e-8,
                         max_iter=2000, reg_covar=0.0, random_state=0).fit(raw.x)
    single = gmm.em(x, 4, "diag", seed=0, tol=1e-8, max_iter=2000)
    truth = {"weights": torch.as_tensor(raw.truth["weights"]), "locs": torch.as_tensor(raw.truth["locs"]),
             "variances": torch.as_tensor(raw.truth["scales"]) ** 2}
    from_truth = gmm.em(x, 4, "diag", init=truth, tol=1e-8)
    print(f"k-means++ x10 {fit.log_likelihood:.6f}, scikit-learn {sk.score(raw.x):.6f}, "
          f"from the truth {from_truth.log_likelihood:.6f}, one random start {single.log_likelihood:.6f} nats/pt")
    assert sk.converged_ and fit.converged and all(r["converged"] for r in fit.restarts)
    # both stop within tol of the same maximum; the 2e-3 of a meaningful gap is far looser than needed
    assert fit.log_likelihood == pytest.approx(sk.score(raw.x), abs=1e-6)
    assert fit.log_likelihood == pytest.approx(from_truth.log_likelihood, abs=1e-6)
    assert fit.log_likelihood >= single.log_likelihood - 1e-9
    assert fit.log_likelihood - single.log_likelihood > 0.1
