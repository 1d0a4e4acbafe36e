"""The SVI methods of a comparison: the VAE of the config with a few overrides, one thing changed at a time."""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

from pyro_vae.build import build_seeded
from pyro_vae.compare.methods import METHODS, Budget, Method, MethodResult, configure, test_scores
from pyro_vae.config import Config
from pyro_vae.data import Dataset
from pyro_vae.evaluation.gradients import gradient_statistics
from pyro_vae.evaluation.yardstick import Yardstick
from pyro_vae.inference.engine import FusedELBO
from pyro_vae.inference.objectives import build_elbo, has_pyro_loss
from pyro_vae.model import VAE
from pyro_vae.training.replicas import ReplicaTrainer, unsupported_reason
from pyro_vae.training.trainer import Trainer

# name -> (config overrides, one-line summary): each differs from the base config in one respect
BUILTIN_SETS: Dict[str, tuple] = {
    "analytic_kl": (["inference.objective=elbo", "inference.kl=analytic", "inference.estimator=reparam",
                     "inference.num_particles=1"], "ELBO, closed-form KL(q || p(z)), reparameterized, 1 particle"),
    "monte_carlo_kl": (["inference.objective=elbo", "inference.kl=monte_carlo", "inference.estimator=reparam",
                        "inference.num_particles=1"], "ELBO, Monte Carlo KL (log q - log p at z), reparameterized"),
    "iwae_k5": (["inference.objective=iwae", "inference.kl=monte_carlo", "inference.estimator=reparam",
                 "inference.num_particles=5"], "IWAE bound with K = 5 importance samples (Burda et al.)"),
    "iwae_k50": (["inference.objective=iwae", "inference.kl=monte_carlo", "inference.estimator=reparam",
                  "inference.num_particles=50"], "IWAE bound with K = 50 importance samples"),
    "score_function": (["inference.objective=elbo", "inference.kl=monte_carlo", "inference.estimator=score_function",
                        "inference.num_particles=1"], "ELBO with the score-function (REINFORCE) gradient, TraceGraph_ELBO"),
}


def svi_method(overrides: List[str]) -> Method:
    """A method that trains the VAE of ``cfg`` with ``overrides`` applied, under the budget."""

    def method(cfg: Config, data: Dataset, budget: Budget) -> MethodResult:
        return train_svi(configure(cfg, overrides), data, budget, extra={"overrides": list(overrides)})

    def replicas(cfgs: Sequence[Config], data: Dataset, budget: Budget, name: str = "") -> List[MethodResult]:
        """The runs of ``cfgs`` (its seeds) stacked in one vectorized step: :func:`train_svi_replicas`."""
        return train_svi_replicas([configure(c, overrides) for c in cfgs], data, budget, name,
                                  extra={"overrides": list(overrides)})

    def stack_reason(cfgs: Sequence[Config], vae: Optional[VAE] = None) -> Optional[str]:
        """Why :func:`replicas` cannot stack ``cfgs`` (None: it can); ``vae``, one run's model, checks the
        architecture too."""
        return unsupported_reason([configure(c, overrides) for c in cfgs], vae)

    method.overrides = list(overrides)  # lets a comparison validate every method before training any
    method.tunes_lr = True  # it trains with optim.lr: --lr-grid applies
    method.replicas, method.stack_reason = replicas, stack_reason  # compare --seeds N stacks the seeds with them
    return method


def train_svi(cfg: Config, data: Dataset, budget: Budget, name: str = "", extra: Optional[Dict[str, Any]] = None,
              progress: bool = False) -> MethodResult:
    """Train the VAE of ``cfg`` under the budget on the loop of ``pyro-vae train``, scored on the yardstick;
    evaluate the parameters it ends with on the test split (test log p(x): :func:`final_test_log_px`).

    The Trainer is the one :meth:`Trainer.from_config` makes for ``pyro-vae train`` (the same engine,
    fused Adam, device, seeds, data order and non-finite guard), with :meth:`Budget.rule` as its stopping
    rule and :meth:`Budget.yardstick` as its validation score: every epoch ends with the yardstick's log p(x)
    on the fixed validation points, which drives the step-size cuts, the stop and the best epoch kept (with
    ``stop = "converged"``). ``curve`` has one ``{"epoch", "wall_time", "val_log_px", "val_elbo", "train_elbo", "lr"}`` per
    epoch (nats per point at ``wall_time`` seconds of training; the ELBO from the yardstick's own draws).
    Evaluation runs on the CPU: the test bounds with ``budget.eval_samples`` importance samples, and the
    gradient variance and signal-to-noise ratio (:func:`~pyro_vae.evaluation.gradients.gradient_statistics`) of
    the method's own objective over ``budget.grad_samples`` repeats on one batch.
    """
    vae = build_seeded(cfg, data)  # as prepare() builds it for `pyro-vae train`: the same initial parameters
    yardstick, scores = budget.yardstick(data), []

    def validation() -> float:  # the Trainer calls it once per epoch, from a stream seeded by cfg.seed alone
        scores.append(yardstick(vae))
        return scores[-1]["log_px"]

    rule = budget.rule(cfg.train, cfg.optim.lr)
    trainer = Trainer.from_config(cfg, data, vae, stopping=rule, validation=validation, progress=progress,
                                  quiet=not progress)
    trainer.fit()
    return evaluated(cfg, data, budget, trainer, scores, yardstick, name, extra)


def train_svi_replicas(configs: Sequence[Config], data: Dataset, budget: Budget, name: str = "",
                       extra: Optional[Dict[str, Any]] = None) -> List[MethodResult]:
    """:func:`train_svi` of each config (seeds, say), trained together as stacked replicas in one vectorized step
    (:class:`~pyro_vae.training.replicas.ReplicaTrainer`): one row per config, each its own run's up to float
    rounding (its own :meth:`Budget.rule`, yardstick validation, best epoch and post-training evaluation, drawn
    from where its single run leaves torch's stream). Against a ``seconds`` cap each replica is charged the
    whole stacked epoch's time. A replica whose step was not finite is a row that did not converge, with no test
    numbers and the message as ``stop_detail``; the others train on. ``extra`` gains ``replicas`` (R) and
    ``vectorized``. A config the replicas do not cover
    (:func:`~pyro_vae.training.replicas.unsupported_reason`) is a ConfigError: check first, and train those runs
    with :func:`train_svi`."""
    yardstick = budget.yardstick(data)
    scores: List[List[Dict[str, float]]] = [[] for _ in configs]

    def validation(r: int) -> Callable[[VAE], float]:
        def score(vae: VAE) -> float:  # called as train_svi's, by replica r's own Trainer
            scores[r].append(yardstick(vae))
            return scores[r][-1]["log_px"]
        return score

    rt = ReplicaTrainer.from_configs(configs, data, stopping=[budget.rule(c.train, c.optim.lr) for c in configs],
                                     validation=[validation(r) for r in range(len(configs))], quiet=True)
    rt.fit()
    more = {**(extra or {}), "replicas": len(configs), "vectorized": True}
    results = []
    for r, (cfg, trainer) in enumerate(zip(configs, rt.replicas)):
        if r in rt.failures:
            results.append(failed(cfg, data, budget, trainer, scores[r], yardstick, name, more, rt.failures[r]))
            continue
        rt.single_run_streams(r)
        results.append(evaluated(cfg, data, budget, trainer, scores[r], yardstick, name, more))
    return results


def _curve(trainer: Trainer, scores: Sequence[Dict[str, float]]) -> List[Dict[str, Any]]:
    return [{"epoch": r["epoch"], "wall_time": r["wall_time"], "val_log_px": s["log_px"], "val_elbo": s["elbo"],
             "train_elbo": r["train_elbo"], "lr": r["lr"]} for r, s in zip(trainer.metrics, scores)]


def _extra(cfg: Config, trainer: Trainer, yardstick: Yardstick) -> Dict[str, Any]:
    return {"lr": cfg.optim.lr, "final_lr": trainer.stop_rule.lr, "engine": trainer.engine,
            "device": str(trainer.device), "yardstick": yardstick.estimator(trainer.vae)}


def evaluated(cfg: Config, data: Dataset, budget: Budget, trainer: Trainer, scores: Sequence[Dict[str, float]],
              yardstick: Yardstick, name: str = "", extra: Optional[Dict[str, Any]] = None) -> MethodResult:
    """The row of a trained SVI run (:func:`train_svi`'s, or one replica's of :func:`train_svi_replicas`): the
    parameters it ends with (``vae`` moved to the CPU) evaluated on the test split, ``scores`` the yardstick's
    value at each epoch. The draws come from torch's global stream as it stands."""
    trainer.close()
    vae, rule, rows = trainer.vae, trainer.stop_rule, trainer.metrics
    vae.cpu().eval()
    curve = _curve(trainer, scores)
    kept = rule.best_epoch if trainer.restored else trainer.epoch  # the epoch whose parameters are evaluated
    test = budget.test_split(data)
    scored = test_scores(budget, vae, test)
    exact, final = scored["exact"], scored["final"]
    batch = data.train[: cfg.train.batch_size]
    # of the method's own objective (Pyro's, whatever engine trained it: the fused loss is its twin; the fused
    # loss itself for the objectives without a Pyro form)
    objective = build_elbo(cfg.inference) if has_pyro_loss(cfg.inference) else FusedELBO(cfg.inference)
    noise = gradient_statistics(vae, objective, batch, budget.grad_samples)
    seconds = trainer.seconds
    return MethodResult(
        name=name, train_elbo=rows[kept - 1]["train_elbo"], val_elbo=curve[kept - 1]["val_elbo"],
        test_log_likelihood=final["test_log_likelihood"], exact_log_likelihood=exact, test_elbo=scored["test_elbo"],
        seconds=seconds,
        examples_per_second=trainer.epoch * len(data.train) / max(seconds, 1e-9),
        iterations=trainer.step, curve=curve, seed=cfg.seed, converged=rule.converged and not rule.capped,
        stop_reason=rule.reason, stop_detail=rule.describe(), val_log_px=curve[kept - 1]["val_log_px"],
        estimator=final["estimator"], epochs=trainer.epoch,
        extra={**(extra or {}), "best_epoch": kept, **_extra(cfg, trainer, yardstick),
               **scored["extra"],
               "grad_variance_encoder": noise["encoder"]["variance"],
               "grad_variance_decoder": noise["decoder"]["variance"],
               "grad_snr_encoder": noise["encoder"]["snr"], "grad_snr_decoder": noise["decoder"]["snr"],
               "grad_snr_floor": noise["encoder"]["snr_floor"],
               "inference": cfg.inference.model_dump()},
    )


def failed(cfg: Config, data: Dataset, budget: Budget, trainer: Trainer, scores: Sequence[Dict[str, float]],
           yardstick: Yardstick, name: str, extra: Optional[Dict[str, Any]], message: str) -> MethodResult:
    """The row of a replica stopped by a non-finite step: not converged, ``stop_reason`` ``nonfinite`` and the
    message as ``stop_detail``, its curve up to the last whole epoch, and no test numbers (None or NaN, which
    the summaries leave out)."""
    trainer.close()
    trainer.vae.cpu().eval()
    curve, rows = _curve(trainer, scores), trainer.metrics
    estimator = "exact" if yardstick.estimator(trainer.vae) == "exact" else budget.final_estimator()
    return MethodResult(
        name=name, train_elbo=rows[-1]["train_elbo"] if rows else math.nan,
        val_elbo=curve[-1]["val_elbo"] if curve else math.nan, test_log_likelihood=None, exact_log_likelihood=None,
        test_elbo=math.nan, seconds=trainer.seconds,
        examples_per_second=trainer.epoch * len(data.train) / max(trainer.seconds, 1e-9), iterations=trainer.step,
        curve=curve, seed=cfg.seed, converged=False, stop_reason="nonfinite", stop_detail=message, val_log_px=None,
        estimator=estimator, epochs=trainer.epoch,
        extra={**(extra or {}), **_extra(cfg, trainer, yardstick), "inference": cfg.inference.model_dump()})


for _name, (_overrides, _summary) in BUILTIN_SETS.items():
    METHODS.register(_name, _summary)(svi_method(_overrides))
