"""The baselines as ``pyro-vae compare`` methods: ``em``, ``variational_em``, ``svi`` and the three Gaussian-mixture fits.

Budgets: one EM iteration, one variational-EM epoch, one SVI epoch and one full-batch GMM SVI
step each count as one pass over the training data (``Budget.epochs``); ``Budget.seconds`` stops
any of them at the next check. Under ``Budget.stop = "converged"`` exact EM runs until its
log-likelihood changes by less than its tolerance (GMM EM: the best of :data:`GMM_RESTARTS`
k-means++ starts), and variational EM and the GMM SVI fits until their plateau rule stops them.
A Gaussian mixture is read from the config as
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
from pyro_vae.compare.methods import METHODS, Budget, MethodResult, final_test_log_px
from pyro_vae.compare.svi import svi_method
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.iwae import proposal_iwae
from pyro_vae.evaluation.linear_gaussian import exact_log_likelihood, is_linear_gaussian
from pyro_vae.inference.objectives import build_elbo, has_pyro_loss, no_pyro_loss
from pyro_vae.training.stopping import BudgetLimit, Plateau

GMM_LR = 0.1
GMM_RESTARTS = 10  # k-means++ starts of GMM EM, the best kept (scikit-learn's KMeans n_init)
# full-batch GMM SVI takes one step an epoch: its plateau is counted in steps, its improvement far finer
GMM_PATIENCE, GMM_MIN_DELTA, GMM_MIN_LR = 100, 1e-4, 1e-3
INFER_STEPS = 300  # E-step on held-out points for variational EM's test numbers


def _em_stop(fit: Fit, budget: Budget, max_iter: int) -> Dict[str, Any]:
    """The MethodResult fields that say why an EM-type fit stopped: converged at its tolerance, or a cap."""
    if fit.converged:
        return {"converged": True, "stop_reason": "tol", "stop_detail": "log-likelihood change below the tolerance"}
    if fit.iterations >= max_iter:
        return {"converged": False, "stop_reason": "max_epochs",
                "stop_detail": f"reached the cap of {max_iter} iterations"}
    return {"converged": False, "stop_reason": "seconds", "stop_detail": f"reached the cap of {budget.seconds:g} s"}


def _rule_stop(rule) -> Dict[str, Any]:
    return {"converged": rule.converged and not rule.capped, "stop_reason": rule.reason, "stop_detail": rule.describe()}


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


def _curve(fit: Fit) -> List[Dict[str, Any]]:
    """EM's curve: the exact log p(x) of the yardstick's points (its ELBO too: the E-step is exact)."""
    return [{"epoch": int(r["iteration"]), "wall_time": r["seconds"], "val_log_px": r["val_log_likelihood"],
             "val_elbo": r["val_log_likelihood"], "train_log_likelihood": r["log_likelihood"]}
            for r in fit.history.rows]


@METHODS.register("em", check=_linear_gaussian_kind)
def em(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Exact EM: pPCA (learn_scale global) or factor analysis (per_feature); refuses models without an exact E-step."""
    kind = _linear_gaussian_kind(cfg)
    K = cfg.model.latent_dim
    points = budget.yardstick(data).points  # the exact log p(x) is every linear-Gaussian method's yardstick
    algorithm = ppca.ppca_em if kind == "ppca" else ppca.factor_analysis_em
    max_iter = budget.max_iterations()
    with warnings.catch_warnings():  # stopping at a cap is the comparison's verdict, reported as converged=False
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = algorithm(data.train, K, max_iter=max_iter, seed=cfg.seed, x_val=points, seconds=budget.seconds)
    p = fit.params
    x_test = budget.test_split(data)
    test = ppca.log_likelihood(x_test, p["W"], p["b"], p["noise_var"])
    curve = _curve(fit)
    extra: Dict[str, Any] = {"algorithm": f"{kind}_em", "guide": "exact posterior: ELBO = log-likelihood"}
    if kind == "ppca":
        best = ppca.ppca_closed_form(data.train, K)
        extra["closed_form_train_log_likelihood"] = best.log_likelihood
        extra["gap_to_closed_form"] = best.log_likelihood - fit.log_likelihood
        q = best.params
        extra["closed_form_test_log_likelihood"] = ppca.log_likelihood(x_test, q["W"], q["b"], q["noise_var"])
        extra["reference_val_log_px"] = ppca.log_likelihood(points, q["W"], q["b"], q["noise_var"])
    seconds = fit.history.seconds
    return MethodResult(name="em", train_elbo=fit.log_likelihood, val_elbo=curve[-1]["val_elbo"],
                        test_log_likelihood=test, exact_log_likelihood=test, test_elbo=test, seconds=seconds,
                        examples_per_second=fit.iterations * len(data.train) / max(seconds, 1e-9),
                        iterations=fit.iterations, curve=curve, extra=extra, seed=cfg.seed,
                        val_log_px=curve[-1]["val_log_px"], estimator="exact", epochs=fit.iterations,
                        **_em_stop(fit, budget, max_iter))


@torch.no_grad()
def _elbo(vae, guide_fn, x: torch.Tensor, elbo) -> float:
    idx = torch.arange(len(x))
    return float(-elbo.loss(lambda xb, i: vae.model(xb), guide_fn, x, idx)) / len(x)


def e_step_scores(vae, elbo, data: Dataset, budget: Budget, exact: bool, steps: int = INFER_STEPS) -> Dict[str, Any]:
    """The held-out numbers of a method without an encoder (variational EM, MCEM): q for the validation, test and
    yardstick points by a ``steps``-step E-step with theta fixed
    (:func:`~pyro_vae.baselines.variational_em.infer_locals` on the ELBO ``elbo``), the cost of not amortizing.

    Returns ``val_elbo`` and ``test_elbo`` (with those q), ``test_iwae`` (IWAE with ``budget.eval_samples`` draws
    from the test points' q), ``exact`` (the test log p(x) when ``exact``, else None), ``final``
    (:func:`final_test_log_px`: exact, or AIS started at the test points' q, or that IWAE, labelled with the E-step,
    its standard error over the points in ``extra``) and ``val_log_px`` (the yardstick: exact, or IWAE with
    ``budget.yardstick_samples`` draws from its points' q)."""
    val = data.val if len(data.val) else data.train
    test = budget.test_split(data)
    yardstick = budget.yardstick(data)
    q_val = ve.infer_locals(vae, elbo, val, steps=steps)
    q_test = ve.infer_locals(vae, elbo, test, steps=steps)
    idx = torch.arange(len(test))
    test_elbo = _elbo(vae, q_test.guide_for(idx), test, elbo)
    points = torch.cat([proposal_iwae(vae, q_test.q(i), test[i], budget.eval_samples) for i in idx.split(256)])
    iwae = float(points.mean())
    se = float(points.std() / math.sqrt(len(points))) if len(points) > 1 else math.nan
    exact_ll = exact_log_likelihood(vae, test) if exact else None
    final = final_test_log_px(budget, vae, test, exact_ll, {"mean": iwae, "se": se}, proposal=q_test.q,
                              iwae_label=f"IWAE-{budget.eval_samples} (after a {steps}-step E-step)")
    if exact:
        val_log_px = exact_log_likelihood(vae, yardstick.points)
    else:
        q_points = ve.infer_locals(vae, elbo, yardstick.points, steps=steps)
        val_log_px = float(proposal_iwae(vae, q_points.q(torch.arange(len(yardstick.points))), yardstick.points,
                                         budget.yardstick_samples).mean())
    val_elbo = _elbo(vae, q_val.guide_for(torch.arange(len(val))), val, elbo)
    return {"val_elbo": val_elbo, "test_elbo": test_elbo, "test_iwae": iwae, "exact": exact_ll, "final": final,
            "val_log_px": val_log_px}


def _has_pyro_loss(cfg: Config) -> None:
    """variational_em's E- and M-steps climb the config's Pyro ELBO: refuse an objective without one (rws, ...)."""
    if not has_pyro_loss(cfg.inference):
        raise ConfigError(f"{no_pyro_loss(cfg.inference)}; set inference.objective to elbo, "
                          f"iwae or renyi for it")


@METHODS.register("variational_em", check=_has_pyro_loss)
def variational_em(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Variational EM: per-point q_n (no encoder), E-steps on q_n then M-steps on theta, minibatch by minibatch."""
    rule = budget.rule(cfg.train, cfg.optim.lr)
    rule.score = "training-point log p(x)"  # its validation score: it has q_n for the training points alone
    fit = ve.variational_em(cfg, data, stopping=rule)
    # held-out points have no q_n yet: fit them by an E-step with theta fixed (the cost of not amortizing)
    s = e_step_scores(fit.vae, build_elbo(cfg.inference), data, budget, fit.exact)
    final = s["final"]
    # per epoch it is scored on its training points (with their q_n), not on the yardstick's held-out points
    curve = [{"epoch": int(r["iteration"]), "wall_time": r["seconds"], "val_log_px": None, "val_elbo": r["elbo"],
              "train_log_likelihood": r["log_likelihood"]} for r in fit.history.rows[1:]]
    seconds = fit.history.seconds
    return MethodResult(
        name="variational_em", train_elbo=fit.history.rows[-1]["elbo"], val_elbo=s["val_elbo"],
        test_log_likelihood=final["test_log_likelihood"], exact_log_likelihood=s["exact"], test_elbo=s["test_elbo"],
        seconds=seconds, examples_per_second=fit.epochs * len(data.train) / max(seconds, 1e-9),
        iterations=fit.gradient_steps, curve=curve, seed=cfg.seed, val_log_px=s["val_log_px"],
        estimator=final["estimator"], epochs=fit.epochs, **_rule_stop(fit.rule),
        extra={**final["extra"], "test_iwae": s["test_iwae"], "held_out_e_steps": INFER_STEPS, "lr": cfg.optim.lr,
               "final_lr": fit.rule.lr,
               "curve_val_elbo": "training ELBO per epoch (held-out points need an E-step)"})


variational_em.tunes_lr = True  # its M-step (and E-step) Adam step sizes follow optim.lr: --lr-grid applies


METHODS.register("svi", "Joint amortized SVI of the config as given (encoder and decoder together)")(svi_method([]))


def _covariance_type(cfg: Config) -> str:
    return "diag" if getattr(cfg.model.likelihood, "learn_scale", None) == "per_feature" else "spherical"


def _gmm_setup(cfg: Config, data: Dataset):
    x = data.train.double()
    return x, gmm.kmeans_params(x, cfg.model.latent_dim, _covariance_type(cfg), seed=cfg.seed)


def _gmm_rule(budget: Budget, steps_cap: int):
    """Full-batch GMM SVI: a fixed budget as for every method, or the plateau rule counted in steps."""
    if budget.stop == "fixed":
        return BudgetLimit(GMM_LR, max_epochs=budget.epochs, seconds=budget.seconds, patience=GMM_PATIENCE,
                           min_delta=GMM_MIN_DELTA)
    rule = Plateau(steps_cap, GMM_LR, patience=GMM_PATIENCE, min_delta=GMM_MIN_DELTA, min_lr=GMM_MIN_LR,
                   seconds=budget.seconds)
    rule.score = "training log p(x)"
    return rule


def _gmm_result(name: str, fit: Fit, cfg: Config, data: Dataset, budget: Budget, train_elbo: float,
                stop: Dict[str, Any], test_elbo: Optional[float] = None,
                extra: Optional[Dict[str, Any]] = None) -> MethodResult:
    p = fit.params
    val = data.val if len(data.val) else data.train
    test = gmm.log_likelihood(budget.test_split(data), **p)
    # scored on the training points while it trains (its history); on the yardstick's points at the end
    curve = [{"epoch": int(r["iteration"]), "wall_time": r["seconds"], "val_log_px": None,
              "val_elbo": r.get("elbo", r["log_likelihood"]), "train_log_likelihood": r["log_likelihood"]}
             for r in fit.history.rows]
    seconds = fit.total_seconds
    return MethodResult(name=name, train_elbo=train_elbo, val_elbo=gmm.log_likelihood(val, **p),
                        test_log_likelihood=test, exact_log_likelihood=test,
                        test_elbo=test if test_elbo is None else test_elbo, seconds=seconds,
                        examples_per_second=fit.iterations * len(data.train) / max(seconds, 1e-9),
                        iterations=fit.iterations, curve=curve, seed=cfg.seed, estimator="exact", epochs=fit.iterations,
                        val_log_px=gmm.log_likelihood(budget.yardstick(data).points, **p), **stop,
                        extra={"algorithm": fit.kind, "num_components": len(p["weights"]), **(extra or {})})


@METHODS.register("gmm_em")
def gmm_em(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Gaussian mixture (model.latent_dim components) by exact EM from the best of 10 k-means++ starts."""
    max_iter = budget.max_iterations()
    with warnings.catch_warnings():  # as in em: a cap, not a failure
        warnings.simplefilter("ignore", ConvergenceWarning)
        fit = gmm.em_restarts(data.train.double(), cfg.model.latent_dim, _covariance_type(cfg), n_init=GMM_RESTARTS,
                              seed=cfg.seed, max_iter=max_iter, seconds=budget.seconds)
    return _gmm_result("gmm_em", fit, cfg, data, budget, fit.log_likelihood, _em_stop(fit, budget, max_iter),
                       extra={"restarts": fit.restarts})


@METHODS.register("gmm_enum_svi")
def gmm_enum_svi(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Gaussian mixture by SVI with z enumerated exactly (TraceEnum_ELBO): gradient ascent on log p(x)."""
    x, init = _gmm_setup(cfg, data)
    rule = _gmm_rule(budget, budget.max_iterations())
    fit = gmm.svi_enumerated(x, init, lr=GMM_LR, stopping=rule)
    return _gmm_result("gmm_enum_svi", fit, cfg, data, budget, fit.log_likelihood, _rule_stop(rule))


@METHODS.register("gmm_amortized_svi")
def gmm_amortized_svi(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Gaussian mixture by SVI with an amortized categorical guide and score-function gradients (TraceGraph_ELBO)."""
    x, init = _gmm_setup(cfg, data)
    rule = _gmm_rule(budget, budget.max_iterations())
    fit = gmm.svi_amortized(x, init, lr=GMM_LR, seed=cfg.seed, stopping=rule)
    encoder = fit.modules["encoder"]
    test = budget.test_split(data).double()
    with torch.no_grad():
        test_elbo = -TraceGraph_ELBO(num_particles=10, vectorize_particles=True, max_plate_nesting=1).loss(
            gmm.model, encoder.guide, test, fit.params) / len(test)
    last = fit.history.rows[-1].get("elbo", math.nan)
    return _gmm_result("gmm_amortized_svi", fit, cfg, data, budget, last, _rule_stop(rule), test_elbo=test_elbo)
