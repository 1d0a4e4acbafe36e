"""The SVI methods of a comparison: the VAE of the config with a few overrides, one thing changed at a time."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Dict, List, Optional

import torch

from pyro_vae.compare.methods import METHODS, Budget, Method, MethodResult, configure
from pyro_vae.config import Config, InferenceConfig
from pyro_vae.data import Dataset, binarize_batch

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

    method.overrides = list(overrides)  # lets a comparison validate every method before training any
    return method


def train_svi(cfg: Config, data: Dataset, budget: Budget, name: str = "", extra: Optional[Dict[str, Any]] = None,
              progress: bool = False) -> MethodResult:
    """Train with SVI until the budget is spent; evaluate the final parameters on the test split."""
    from pyro_vae.build import build_vae, seed_everything
    from pyro_vae.evaluation.bounds import elbo_per_point
    from pyro_vae.evaluation.evaluate import evaluate_points
    from pyro_vae.evaluation.gradients import gradient_variance
    from pyro_vae.inference.objectives import build_elbo

    seed_everything(cfg.seed)
    vae = build_vae(cfg, data.x_dim, data.image_shape)
    elbo = build_elbo(cfg.inference)
    standard = build_elbo(InferenceConfig())  # val/test numbers are the ELBO whatever the training objective
    optimizer = torch.optim.Adam(vae.parameters(), lr=cfg.optim.lr)
    order = torch.Generator().manual_seed(cfg.seed + 1)
    binarizer = torch.Generator().manual_seed(cfg.seed + 2)
    inf, batch_size = cfg.inference, cfg.train.batch_size
    warmup_steps = inf.kl_warmup_epochs * math.ceil(len(data.train) / batch_size)
    curve, train_elbo, val_elbo, epochs, steps, seconds = [], math.nan, math.nan, 0, 0, 0.0
    val = data.val if len(data.val) else data.train
    while not budget.exhausted(epochs, seconds):
        start, total = time.perf_counter(), 0.0
        x = binarize_batch(data.train, binarizer) if data.binarize == "dynamic" else data.train
        vae.train()
        for idx in torch.randperm(len(x), generator=order).split(batch_size):
            vae.kl_weight = inf.beta * (min(1.0, (steps + 1) / warmup_steps) if warmup_steps else 1.0)
            loss = elbo.differentiable_loss(vae.model, vae.guide, x[idx]) / len(idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.optim.clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(vae.parameters(), cfg.optim.clip_norm)
            optimizer.step()
            total += float(loss.detach()) * len(idx)
            steps += 1
        vae.kl_weight = 1.0
        seconds += time.perf_counter() - start
        epochs += 1
        train_elbo = -total / len(x)
        val_elbo = elbo_per_point(vae, standard, val)
        curve.append({"epoch": epochs, "wall_time": seconds, "val_elbo": val_elbo})
        if progress:
            print(f"  epoch {epochs:>4}  train_elbo {train_elbo:10.3f}  val_elbo {val_elbo:10.3f}",
                  file=sys.stderr, flush=True)
    vae.eval()
    test = data.test if len(data.test) else val
    ev = evaluate_points(vae, test, samples=budget.eval_samples)
    exact = ev["log_likelihood"]["mean"] if ev["log_likelihood"] is not None else None
    if curve and exact is not None:
        curve[-1]["log_likelihood"] = exact
    batch = data.train[: cfg.train.batch_size]
    variance = gradient_variance(vae, elbo, batch, budget.grad_samples)  # of the method's own objective
    return MethodResult(
        name=name, train_elbo=train_elbo, val_elbo=val_elbo,
        test_log_likelihood=exact if exact is not None else ev["iwae"]["mean"],
        exact_log_likelihood=exact, test_elbo=ev["elbo"]["mean"], seconds=seconds,
        examples_per_second=epochs * len(data.train) / max(seconds, 1e-9),
        iterations=steps, curve=curve,
        extra={**(extra or {}), "epochs": epochs, "test_iwae": ev["iwae"]["mean"],
               "test_iwae_se": ev["iwae"]["se"], "test_elbo_se": ev["elbo"]["se"],
               "grad_variance_encoder": variance["encoder"], "grad_variance_decoder": variance["decoder"],
               "inference": cfg.inference.model_dump()},
    )


for _name, (_overrides, _summary) in BUILTIN_SETS.items():
    METHODS.register(_name, _summary)(svi_method(_overrides))
