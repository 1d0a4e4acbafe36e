r"""EM-style inference for nonlinear decoders as ``pyro-vae compare`` methods: ``rws``, ``wake_sleep``, ``mcem``
and ``semi_amortized``.

EM maximizes :math:`\log p_\theta(x) = \sum_n \log \int p(z)\, p_\theta(x_n|z)\, dz` by alternating an E-step,
:math:`Q_n(z) = p_\theta(z|x_n)`, and an M-step on :math:`\sum_n \mathbb{E}_{Q_n}[\log p_\theta(x_n, z)]`. For a
neural decoder :math:`g(z; \theta)` the E-step is intractable; each method approximates it differently (the fits
are in :mod:`pyro_vae.baselines`; their docstrings have the details):

* ``rws``, reweighted wake-sleep (Bornschein & Bengio 2015), K = 5 particles, wake-phi
  (:func:`~pyro_vae.baselines.wake_sleep.rws`): Q is the self-normalized importance distribution
  :math:`\sum_k \tilde w_k \delta_{z_k}`, :math:`z_k \sim q_\phi(z|x)`,
  :math:`\tilde w_k \propto p_\theta(x, z_k) / q_\phi(z_k|x)`. theta ascends
  :math:`\sum_k \tilde w_k \nabla_\theta \log p_\theta(x, z_k)`, the gradient of the IWAE bound
  :math:`\mathcal{L}_K = \log \frac1K \sum_k w_k`; phi ascends :math:`\sum_k \tilde w_k \nabla_\phi \log q_\phi(z_k|x)`,
  an estimate of :math:`-\nabla_\phi \mathrm{KL}(p_\theta(z|x) \,\|\, q_\phi(z|x))`. Nothing is reparameterized.
* ``wake_sleep`` (Hinton, Dayan, Frey & Neal 1995; :func:`~pyro_vae.baselines.wake_sleep.wake_sleep`): K = 1,
  so theta ascends the ELBO with :math:`Q = q_\phi(z|x)`; phi learns in its sleep: draw :math:`z \sim p(z)`,
  :math:`x' \sim p_\theta(x|z)` and ascend :math:`\log q_\phi(z|x')`, i.e.
  :math:`-\nabla_\phi \mathbb{E}_{p_\theta(x)} \mathrm{KL}(p_\theta(z|x) \,\|\, q_\phi(z|x))` on dreamt data.
* ``mcem``, Monte Carlo EM with a persistent HMC E-step (:func:`~pyro_vae.baselines.mcem.fit`): Q is one HMC
  chain per training point, 5 transitions of 5 leapfrog steps per visit (step size adapted toward acceptance
  0.65), warm-started where the point's last visit left it; the M-step is one Adam step on
  :math:`-\sum_{n \in b} \log p_\theta(x_n, z_n)`, by Fisher's identity a stochastic-approximation ascent of
  :math:`\log p_\theta(x)` itself, not of a bound. No encoder is trained.
* ``semi_amortized`` (Kim, Wiseman, Miller, Sontag & Rush 2018; :func:`~pyro_vae.baselines.semi_amortized.fit`):
  Q starts at the encoder's mean-field Normal :math:`q_\phi(z|x_n)` and takes 5 Adam steps (step size 0.05, 8
  reparameterized draws) on each point's own ELBO; theta steps on the ELBO at the refined Q, phi on the ELBO at its
  own q (no gradient through the refinement).

**Training.** Each trains on the project's Trainer under :meth:`~pyro_vae.compare.methods.Budget.rule` (the plateau
rule, or a fixed budget) at ``optim.lr`` (``--lr-grid`` applies). The rule reads a per-epoch score named in
``rule.score``: for the three methods with an encoder, the comparison's yardstick, exactly as the SVI methods are
scored (:class:`~pyro_vae.evaluation.yardstick.Yardstick`: IWAE with the encoder's q on the fixed validation points,
exact for a linear-Gaussian model), so their curves sit beside the SVI curves; for mcem, which has no encoder,
:func:`~pyro_vae.baselines.mcem.validation_score` (an IWAE bound on training points with a proposal centred on
each point's E-step chain; exact on the validation split for a linear-Gaussian model).

**Scoring**, at the parameters the rule kept. Test log p(x) by
:func:`~pyro_vae.compare.methods.final_test_log_px`: exact for a linear-Gaussian model, else AIS with
``--final ais``, else the method's own IWAE with ``Budget.eval_samples`` draws from its encoder (rws, wake_sleep,
semi_amortized; the encoder's q, not the refined one) or, for mcem, which trains no encoder, from per-point q fitted
to the test points by a 300-step E-step with theta fixed (variational EM's held-out scoring,
:func:`~pyro_vae.compare.baselines.e_step_scores`; the estimator says so). ``val_log_px`` is the comparison's
yardstick: the SVI methods' own (:class:`~pyro_vae.evaluation.yardstick.Yardstick`, the encoder's q) for the
encoder methods, the E-step q's IWAE on the same points for mcem. ELBOs are the encoder's (mcem: the E-step q's);
``train_elbo`` is the kept epoch's mean training objective (rws: the K = 5 bound, like ``iwae_k5``'s; mcem: NaN,
its objective being the complete-data log-likelihood, in ``extra``). A curve row carries the fit's ``score`` and
the epoch's mean training objective (``train_objective``), ``val_log_px`` only where that score is the yardstick (an
exact model scored on the validation split that is the yardstick's points), else None, and ``val_elbo`` None.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from pyro_vae.baselines import mcem as mc
from pyro_vae.baselines import semi_amortized as sa
from pyro_vae.baselines import wake_sleep as ws
from pyro_vae.baselines.fitting import CURVE_POINTS, IWAE_SAMPLES
from pyro_vae.compare.baselines import INFER_STEPS, _rule_stop, e_step_scores
from pyro_vae.compare.methods import METHODS, Budget, MethodResult, test_scores
from pyro_vae.config import Config, InferenceConfig
from pyro_vae.data import Dataset
from pyro_vae.errors import ConfigError
from pyro_vae.evaluation.linear_gaussian import is_linear_gaussian
from pyro_vae.inference.objectives import build_elbo
from pyro_vae.model import own_rng

RWS = {"num_particles": 5, "phi_update": "wake"}
WAKE_SLEEP = {"num_particles": 1, "phi_update": "sleep"}
MCEM = {"e_steps": 5, "num_samples": 1, "leapfrog_steps": 5}
SEMI_AMORTIZED = {"refine_steps": 5, "refine_lr": sa.REFINE_LR, "refine_particles": 8}
MEAN_FIELD_GUIDES = ("mean_field", "conv")  # the guides whose q(z|x) is a mean-field Normal
HELD_OUT_ELBO = InferenceConfig()  # mcem's held-out E-step: the ELBO, closed-form KL where one exists


def _mcem_score(cfg: Config) -> str:
    """What mcem's per-epoch score (its rule's input, :func:`~pyro_vae.baselines.mcem.validation_score`) is."""
    if is_linear_gaussian(cfg.model):
        return "validation log p(x) (exact)"
    return (f"training log p(x) (IWAE-{IWAE_SAMPLES} from a Normal at each point's E-step chain, up to "
            f"{CURVE_POINTS} points)")


def _rule(cfg: Config, budget: Budget, score: str):
    rule = budget.rule(cfg.train, cfg.optim.lr)
    rule.score = score
    return rule


def _kept(fit) -> int:
    """The epoch whose parameters the fit ended with: the rule's best when it restores it, else the last."""
    return fit.rule.best_epoch if fit.rule.restore_best and fit.rule.best_epoch else fit.epochs


def _encoder_scores(vae, data: Dataset, budget: Budget) -> Dict[str, Any]:
    """The held-out numbers of a method with an encoder, as the SVI methods get them: the test bounds with
    ``budget.eval_samples`` draws from q(z|x), the final test log p(x), the yardstick (seeded stream 0)."""
    scored = test_scores(budget, vae, budget.test_split(data))
    yardstick = budget.yardstick(data)
    with own_rng(0, vae.device):
        ys = yardstick(vae)
    return {**scored, "val_elbo": ys["elbo"], "val_log_px": ys["log_px"],
            "extra": {**scored["extra"], "yardstick": yardstick.estimator(vae)}}


def _on_yardstick(data: Dataset, budget: Budget) -> Tuple[Callable[[Any], float], List[Dict[str, float]]]:
    """The comparison's yardstick as a fit's ``validation(vae)``, and the list its scores (``{"log_px", "elbo"}``,
    the fit's initial score first, then one per epoch) are appended to, for the curve."""
    yardstick, seen = budget.yardstick(data), []

    def validation(vae) -> float:
        seen.append(yardstick(vae))
        return seen[-1]["log_px"]

    return validation, seen


def _result(name: str, fit, cfg: Config, data: Dataset, budget: Budget, scores: Dict[str, Any], *, iterations: int,
            scored_on: torch.Tensor, settings: Dict[str, Any], train_elbo: Optional[float] = None,
            extra: Optional[Dict[str, Any]] = None, seen: Optional[List[Dict[str, float]]] = None) -> MethodResult:
    """The MethodResult of a fit (``.vae, .history, .epochs, .exact, .rule``) and its ``scores``.

    ``seen``: the yardstick's scores when the fit was scored on it (:func:`_on_yardstick`): the curve's ``val_log_px``
    and ``val_elbo``. Else ``scored_on``: the rows the fit's per-epoch score was computed on (its curve is on the
    yardstick only when those are the yardstick's points and the score is exact) and ``val_elbo`` is None.
    ``train_elbo`` overrides the kept epoch's training objective; ``train_objective`` is each epoch's mean one."""
    rule, rows = fit.rule, fit.history.rows
    points = budget.yardstick(data).points
    on_yardstick = fit.exact and scored_on.shape == points.shape and bool(torch.equal(scored_on, points))
    seen = seen[1:] if seen is not None and len(seen) == len(rows) else None  # seen[0]: the initial parameters'
    curve = [{"epoch": int(r["iteration"]), "wall_time": r["seconds"],
              "val_log_px": seen[i]["log_px"] if seen else r["log_likelihood"] if on_yardstick else None,
              "val_elbo": seen[i]["elbo"] if seen else None, "score": r["log_likelihood"], "train_objective": r["elbo"]}
             for i, r in enumerate(rows[1:])]
    kept = _kept(fit)
    final, seconds = scores["final"], fit.history.seconds
    return MethodResult(
        name=name, train_elbo=rows[kept]["elbo"] if train_elbo is None else train_elbo, val_elbo=scores["val_elbo"],
        test_log_likelihood=final["test_log_likelihood"], exact_log_likelihood=scores["exact"],
        test_elbo=scores["test_elbo"], seconds=seconds,
        examples_per_second=fit.epochs * len(data.train) / max(seconds, 1e-9), iterations=iterations, curve=curve,
        seed=cfg.seed, val_log_px=scores["val_log_px"], estimator=final["estimator"], epochs=fit.epochs,
        **_rule_stop(rule),
        extra={**scores.get("extra", {}), **final["extra"], "algorithm": fit.kind, "settings": dict(settings),
               "best_epoch": kept, "lr": cfg.optim.lr, "final_lr": rule.lr, "curve_score": rule.score,
               "inference": "its own objective (the config's inference section is not used)", **(extra or {})})


def _wake_sleep_method(name: str, settings: Dict[str, Any]) -> Callable[[Config, Dataset, Budget], MethodResult]:
    def method(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
        rule = budget.rule(cfg.train, cfg.optim.lr)  # scored on the yardstick: its default rule.score
        validation, seen = _on_yardstick(data, budget)
        fit = ws.fit(cfg, data, stopping=rule, validation=validation, **settings)
        return _result(name, fit, cfg, data, budget, _encoder_scores(fit.vae, data, budget),
                       iterations=fit.gradient_steps, scored_on=data.train, settings=settings,
                       extra={"gradient_steps": fit.gradient_steps}, seen=seen)

    method.__name__ = method.__qualname__ = name
    method.tunes_lr = True  # Adam on theta and phi at optim.lr: --lr-grid applies
    return method


rws = METHODS.register("rws", "Reweighted wake-sleep, K = 5 particles, wake-phi (Bornschein & Bengio 2015)")(
    _wake_sleep_method("rws", RWS))
wake_sleep = METHODS.register("wake_sleep", "Wake-sleep: ELBO wake-theta, sleep-phi on dreamt data (Hinton et al. "
                              "1995)")(_wake_sleep_method("wake_sleep", WAKE_SLEEP))


def _check_mcem(cfg: Config) -> None:
    if cfg.data.binarize == "dynamic":
        raise ConfigError("data.binarize: mcem keeps an HMC chain per training point, which a fresh binarization "
                          "every epoch would strand; use static, not dynamic")


@METHODS.register("mcem", "Monte Carlo EM: a persistent HMC E-step per training point, no encoder", check=_check_mcem)
def mcem(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Monte Carlo EM with a persistent HMC E-step (no encoder), scored with held-out E-step q."""
    _check_mcem(cfg)
    rule = _rule(cfg, budget, _mcem_score(cfg))
    fit = mc.fit(cfg, data, stopping=rule, **MCEM)
    scores = e_step_scores(fit.vae, build_elbo(HELD_OUT_ELBO), data, budget, fit.exact)
    per_step = MCEM["e_steps"] * MCEM["leapfrog_steps"] + 2  # gradient evaluations per minibatch
    return _result("mcem", fit, cfg, data, budget, {**scores, "extra": {"test_iwae": scores["test_iwae"]}},
                   iterations=fit.gradient_evaluations // per_step, scored_on=data.val if len(data.val) else data.train,
                   settings=MCEM, train_elbo=math.nan,
                   extra={"gradient_evaluations": fit.gradient_evaluations, "held_out_e_steps": INFER_STEPS,
                          "train_complete_data_log_likelihood": fit.history.rows[_kept(fit)]["elbo"],
                          "hmc_accept": fit.history.rows[-1]["accept"]})


mcem.tunes_lr = True  # its M-step Adam follows optim.lr: --lr-grid applies


def _check_semi_amortized(cfg: Config) -> None:
    inf = cfg.inference
    if (inf.objective, inf.estimator) != ("elbo", "reparam"):
        raise ConfigError(f"inference: semi_amortized refines and trains on the ELBO with reparameterized draws; got "
                          f"objective={inf.objective}, estimator={inf.estimator} (set elbo, reparam)")
    if cfg.guide.name not in MEAN_FIELD_GUIDES:
        raise ConfigError(f"guide.name: semi_amortized refines a mean-field Normal q(z|x) "
                          f"({', '.join(MEAN_FIELD_GUIDES)}), not '{cfg.guide.name}'")


@METHODS.register("semi_amortized", "Semi-amortized VI: the encoder's q refined by 5 Adam steps per point (Kim et al. "
                  "2018)", check=_check_semi_amortized)
def semi_amortized(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
    """Semi-amortized VI: the encoder's q refined per point before each step (Kim et al. 2018)."""
    _check_semi_amortized(cfg)
    rule = budget.rule(cfg.train, cfg.optim.lr)  # scored on the yardstick: its default rule.score
    validation, seen = _on_yardstick(data, budget)
    fit = sa.fit(cfg, data, stopping=rule, validation=validation, **SEMI_AMORTIZED)
    scores = _encoder_scores(fit.vae, data, budget)
    # what refinement recovers on the test points
    gap = sa.amortization_gap(fit.vae, budget.test_split(data), **SEMI_AMORTIZED)
    return _result("semi_amortized", fit, cfg, data, budget, scores,
                   iterations=fit.gradient_steps // (SEMI_AMORTIZED["refine_steps"] + 1),
                   scored_on=data.val if len(data.val) else data.train, settings=SEMI_AMORTIZED,
                   extra={"gradient_steps": fit.gradient_steps, "test_refined_elbo": gap["refined"],
                          "test_amortization_gap_recovered": gap["recovered"], "inference": cfg.inference.model_dump()},
                   seen=seen)


semi_amortized.tunes_lr = True  # Adam on theta and phi at optim.lr: --lr-grid applies
