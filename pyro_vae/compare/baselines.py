"""The baselines as ``pyro-vae compare`` methods: ``em``, ``variational_em``, ``svi`` and the three Gaussian-mixture fits.

Budgets: one EM iteration, one variational-EM epoch, one SVI epoch and one full-batch GMM SVI
step each count as one pass over the training data (``Budget.epochs``); ``Budget.seconds`` stops
any of them at the next check. A Gaussian mixture is read from the config as
``model.latent_dim`` components, spherical unless ``model.likelihood.learn_scale: per_feature``
(diagonal), mirroring the pPCA / factor-analysis reading of ``learn_scale``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Dict, List, Optional

import torch
from pyro.infer import TraceGraph_ELBO

from pyro_vae.baselines import gmm, ppca
from pyro_vae.baselines import variational_em as ve
from pyro_vae.baselines.history import ConvergenceWarning, Fit
from pyro_vae.compare.methods import METHODS, Budget, MethodResult
from pyro_vae.compare.svi import svi_method
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.iwae import proposal_iwae
from pyro_vae.evaluation.linear_gaussian import exact_log_likelihood, is_linear_gaussian
from pyro_vae.inference.objectives import build_elbo

MAX_EM_ITERATIONS = 10_000  # when the budget sets only seconds
GMM_LR = 0.1
INFER_STEPS = 300  # E-step on held-out points for variational EM's test numbers


def _max_iter(budget: Budget) -> int:
    return budget.epochs if budget.epochs is not None else MAX_EM_ITERATIONS


def _linear_gaussian_kind(cfg: Config) -> str:
    """``ppca`` or ``factor_analysis`` for a config with an exact EM; a one-line ConfigError otherwise."""
    m = cfg.model
    if not is_linear_gaussian(cfg.model):
        raise ConfigError(
            f"exact EM needs a tractable posterior p(z|x), i.e. model.decoder.name=linear, model.prior.name=normal "
            f"and model.likelihood.name=normal (pPCA / factor analysis), not decoder '{m.decoder.name}', prior "
            f"'{m.prior.name}', likelihood '{m.likelihood.name}'; use variational_em, or gmm_em for a Gaussian mixture")
    learn = m.likelihood.learn_scale
    if learn == "none":
        raise ConfigError("model.likelihood.learn_scale: em fits the noise by maximum likelihood; set global (pPCA) "
                          "or per_feature (factor analysis), not none")
    return "factor_analysis" if learn == "per_feature" else "ppca"


def _curve(fit: Fit, val_key: str = "val_log_likelihood") -> List[Dict[str, Any]]:
    return [{"epoch": int(r["iteration"]), "wall_time": r["seconds"], "val_elbo": r.get(val_key, r["log_likelihood"]),
             "train_log_likelihood": r["log_likelihood"]} for r in fit.history.rows]


def _test(data: Dataset) -> torch.Tensor:
    return data.test if len(data.test) else (data.val if len(data.val) else data.train)


@METHODS.register("em", check=_linear_gaussian_kind)
def em(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Exact EM: pPCA (learn_scale global) or factor analysis (per_feature); refuses models without an exact E-step."""
    kind = _linear_gaussian_kind(cfg)
    K = cfg.model.latent_dim
    val = data.val if len(data.val) else data.train
    algorithm = ppca.ppca_em if kind == "ppca" else ppca.factor_analysis_em
    with warnings.catch_warnings():  # stopping at the budget is the comparison's rule, reported as converged=False
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = algorithm(data.train, K, max_iter=_max_iter(budget), seed=cfg.seed, x_val=val, seconds=budget.seconds)
    p = fit.params
    test = ppca.log_likelihood(_test(data), p["W"], p["b"], p["noise_var"])
    curve = _curve(fit)
    curve[-1]["log_likelihood"] = test
    extra: Dict[str, Any] = {"algorithm": f"{kind}_em", "converged": fit.converged,
                             "guide": "exact posterior: ELBO = log-likelihood"}
    if kind == "ppca":
        best = ppca.ppca_closed_form(data.train, K)
        extra["closed_form_train_log_likelihood"] = best.log_likelihood
        extra["gap_to_closed_form"] = best.log_likelihood - fit.log_likelihood
    seconds = fit.history.seconds
    return MethodResult(name="em", train_elbo=fit.log_likelihood, val_elbo=curve[-1]["val_elbo"],
                        test_log_likelihood=test, exact_log_likelihood=test, test_elbo=test, seconds=seconds,
                        examples_per_second=fit.iterations * len(data.train) / max(seconds, 1e-9),
                        iterations=fit.iterations, curve=curve, extra=extra)


@torch.no_grad()
def _elbo(vae, guide_fn, x: torch.Tensor, elbo) -> float:
    idx = torch.arange(len(x))
    return float(-elbo.loss(lambda xb, i: vae.model(xb), guide_fn, x, idx)) / len(x)


@METHODS.register("variational_em")
def variational_em(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Variational EM: per-point q_n (no encoder), E-steps on q_n then M-steps on theta, minibatch by minibatch."""
    fit = ve.variational_em(cfg, data, epochs=budget.epochs, seconds=budget.seconds)
    vae, elbo = fit.vae, build_elbo(cfg.inference)
    val = data.val if len(data.val) else data.train
    test = _test(data)
    # held-out points have no q_n yet: fit them by an E-step with theta fixed (the cost of not amortizing)
    q_val = ve.infer_locals(vae, elbo, val, steps=INFER_STEPS)
    q_test = ve.infer_locals(vae, elbo, test, steps=INFER_STEPS)
    idx = torch.arange(len(test))
    test_elbo = _elbo(vae, q_test.guide_for(idx), test, elbo)
    iwae = float(torch.cat([proposal_iwae(vae, q_test.q(i), test[i], budget.eval_samples) for i in idx.split(256)]).mean())
    exact = exact_log_likelihood(vae, test) if fit.exact else None
    curve = [{"epoch": int(r["iteration"]), "wall_time": r["seconds"], "val_elbo": r["elbo"],
              "train_log_likelihood": r["log_likelihood"]} for r in fit.history.rows[1:]]
    if curve:
        curve[-1]["log_likelihood"] = exact if exact is not None else iwae
    seconds = fit.history.seconds
    return MethodResult(
        name="variational_em", train_elbo=fit.history.rows[-1]["elbo"],
        val_elbo=_elbo(vae, q_val.guide_for(torch.arange(len(val))), val, elbo),
        test_log_likelihood=exact if exact is not None else iwae, exact_log_likelihood=exact, test_elbo=test_elbo,
        seconds=seconds, examples_per_second=fit.epochs * len(data.train) / max(seconds, 1e-9),
        iterations=fit.gradient_steps, curve=curve,
        extra={"epochs": fit.epochs, "test_iwae": iwae, "held_out_e_steps": INFER_STEPS,
               "curve_val_elbo": "training ELBO per epoch (held-out points need an E-step)"})


METHODS.register("svi", "Joint amortized SVI of the config as given (encoder and decoder together)")(svi_method([]))


def _gmm_setup(cfg: Config, data: Dataset):
    covariance_type = "diag" if getattr(cfg.model.likelihood, "learn_scale", None) == "per_feature" else "spherical"
    x = data.train.double()
    return x, covariance_type, gmm.initial_params(x, cfg.model.latent_dim, covariance_type, seed=cfg.seed)


def _gmm_result(name: str, fit: Fit, data: Dataset, train_elbo: float, test_elbo: Optional[float] = None,
                extra: Optional[Dict[str, Any]] = None) -> MethodResult:
    p = fit.params
    val = data.val if len(data.val) else data.train
    test = gmm.log_likelihood(_test(data), **p)
    curve = [{"epoch": int(r["iteration"]), "wall_time": r["seconds"], "val_elbo": r.get("elbo", r["log_likelihood"]),
              "train_log_likelihood": r["log_likelihood"]} for r in fit.history.rows]
    curve[-1]["log_likelihood"] = test
    seconds = fit.history.seconds
    return MethodResult(name=name, train_elbo=train_elbo, val_elbo=gmm.log_likelihood(val, **p),
                        test_log_likelihood=test, exact_log_likelihood=test,
                        test_elbo=test if test_elbo is None else test_elbo, seconds=seconds,
                        examples_per_second=fit.iterations * len(data.train) / max(seconds, 1e-9),
                        iterations=fit.iterations, curve=curve,
                        extra={"algorithm": fit.kind, "num_components": len(p["weights"]), **(extra or {})})


@METHODS.register("gmm_em")
def gmm_em(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Gaussian mixture (model.latent_dim components) by exact EM: the E-step is Bayes' rule over discrete z."""
    x, covariance_type, init = _gmm_setup(cfg, data)
    with warnings.catch_warnings():  # as in em: the budget, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = gmm.em(x, len(init["weights"]), covariance_type, init=init, max_iter=_max_iter(budget),
                     seconds=budget.seconds)
    return _gmm_result("gmm_em", fit, data, fit.log_likelihood, extra={"converged": fit.converged})


@METHODS.register("gmm_enum_svi")
def gmm_enum_svi(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Gaussian mixture by SVI with z enumerated exactly (TraceEnum_ELBO): gradient ascent on log p(x)."""
    x, _, init = _gmm_setup(cfg, data)
    fit = gmm.svi_enumerated(x, init, steps=_max_iter(budget), lr=GMM_LR, seconds=budget.seconds)
    return _gmm_result("gmm_enum_svi", fit, data, fit.log_likelihood)


@METHODS.register("gmm_amortized_svi")
def gmm_amortized_svi(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Gaussian mixture by SVI with an amortized categorical guide and score-function gradients (TraceGraph_ELBO)."""
    x, _, init = _gmm_setup(cfg, data)
    fit = gmm.svi_amortized(x, init, steps=_max_iter(budget), lr=GMM_LR, seconds=budget.seconds, seed=cfg.seed)
    encoder = fit.modules["encoder"]
    test = _test(data).double()
    with torch.no_grad():
        test_elbo = -TraceGraph_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1).loss(
            gmm.model, encoder.guide, test, fit.params) / len(test)
    last = fit.history.rows[-1].get("elbo", math.nan)
    return _gmm_result("gmm_amortized_svi", fit, data, last, test_elbo=test_elbo)
