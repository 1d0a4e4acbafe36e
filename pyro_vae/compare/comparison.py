"""Run several methods on one split, architecture and budget, with one or more seeds; write the table, the JSON,
the figures and an HTML report.

Every check that can refuse (each method's config and model on this data, ``--out``) runs before any method trains."""

from __future__ import annotations

import math
import re
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from pyro_vae.compare.html import html_report
from pyro_vae.compare.jobs import Run, run_all, spec
from pyro_vae.compare.methods import METHODS, Budget, Method, MethodResult, configure  # noqa: E402
from pyro_vae.compare.report import fmt, markdown, write_plots
from pyro_vae.compare.seeds import summarize
from pyro_vae.compare.svi import svi_method  # noqa: E402
from pyro_vae.config import Config  # noqa: E402
from pyro_vae.errors import ConfigError, RunDirError  # noqa: E402
from pyro_vae.rundir import (  # noqa: E402
    atomic_write_bytes,
    atomic_write_json,
    check_writable_dir,
)

OWN_FILES = ("comparison.json", "comparison.md", "report.html")
_SET_SPLIT = re.compile(r",(?=\s*[A-Za-z_][\w.]*\s*=)")  # commas that start a new key=value, not inside [16, 16]


def parse_method_set(text: str) -> Tuple[str, List[str]]:
    """``NAME:KEY=V,KEY=V`` -> ``(NAME, ["KEY=V", "KEY=V"])``; values may hold commas (``hidden=[16,16]``)."""
    name, sep, body = text.partition(":")
    name = name.strip()
    if not sep or not name or not body.strip():
        raise ConfigError(f"--method-set {text!r}: expected NAME:KEY=VALUE[,KEY=VALUE...]")
    overrides = [part.strip() for part in _SET_SPLIT.split(body) if part.strip()]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ConfigError(f"--method-set {name}: {bad[0]!r} is not KEY=VALUE")
    return name, overrides


def resolve_methods(names: Sequence[str], method_sets: Sequence[str] = ()) -> List[Tuple[str, Method]]:
    """The methods to run, in order: registered ones by name, plus ``--method-set`` definitions."""
    custom: Dict[str, Method] = {}
    for text in method_sets:
        name, overrides = parse_method_set(text)
        if name in METHODS or name in custom:
            raise ConfigError(f"--method-set {name}: a method with that name already exists")
        custom[name] = svi_method(overrides)
    names = list(dict.fromkeys(list(names) + [n for n in custom if n not in names]))
    if not names:
        raise ConfigError("--methods: no methods given")
    return [(n, custom[n] if n in custom else METHODS.get(n).fn) for n in names]


def check_out(out: Path, overwrite: bool) -> Path:
    """Refuse an ``out`` that cannot take a comparison, before anything is trained or written: not a writable
    directory, or holding files already (unless ``overwrite``, and then only a comparison's own files)."""
    out = Path(out)
    check_writable_dir(out)
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunDirError(f"--out {out}: directory is not empty (use --overwrite to replace an earlier comparison)")
        foreign = [p.name for p in out.iterdir() if p.name not in OWN_FILES + ("plots",)]
        if foreign:
            raise RunDirError(f"--out {out}: holds files that are not a comparison's ({foreign[0]}); refusing to overwrite")
    return out


def yardstick_reference(rows: Sequence[MethodResult]) -> Tuple[Optional[float], str]:
    """The value the curves are measured from: the log p(x) of the yardstick's points under the closed-form
    maximum-likelihood fit to the training split when a method supplies it (``extra["reference_val_log_px"]``,
    pPCA's), else the best yardstick value any method reached at any epoch with any seed.

    A model selected on the yardstick's points can score above the closed-form fit there by chance (it is the
    optimum on the training split, not on these points); the curves clip such gaps at their floor."""
    exact = [r.extra["reference_val_log_px"] for r in rows if r.extra.get("reference_val_log_px") is not None]
    seen = [v for r in rows for v in [r.val_log_px] + [c.get("val_log_px") for c in r.curve]
            if v is not None and math.isfinite(v)]
    if exact:
        return exact[0], "closed-form maximum likelihood"
    return (max(seen), "best value reached by any method and seed") if seen else (None, "none")


def check_seeds(seeds: int, baseline: Optional[str], methods: Sequence[Tuple[str, Method]]) -> None:
    """Refuse a seed count below 1 or a baseline that is not among the methods (before anything runs)."""
    if not (isinstance(seeds, int) and seeds >= 1):
        raise ConfigError(f"--seeds {seeds}: must be a whole number >= 1")
    names = [name for name, _ in methods]
    if baseline is not None and baseline not in names:
        raise ConfigError(f"--baseline {baseline}: not one of the compared methods ({', '.join(names)})")


def tunes_lr(method: Method) -> bool:
    """Whether ``method`` trains with ``optim.lr`` (the SVI methods and variational EM), so a grid applies."""
    return bool(getattr(method, "tunes_lr", False))


def select_lr(name: str, method: Method, cfg: Config, data, budget: Budget, grid: Sequence[float],
              say) -> Tuple[float, MethodResult, List[Dict[str, Any]]]:
    """Train ``method`` with seed ``cfg.seed`` at each step size of ``grid`` and keep the one whose final
    yardstick (validation log p(x), never the test split) is highest; returns it, its run and every candidate."""
    candidates, runs = [], []
    for lr in grid:
        say(f"    {name}: optim.lr={lr:g}")
        run = method(configure(cfg, [f"optim.lr={lr}"]), data, budget)
        runs.append(run)
        candidates.append({"lr": lr, "val_log_px": run.val_log_px, "converged": run.converged,
                           "stop_reason": run.stop_reason, "seconds": run.seconds})
    scores = [c["val_log_px"] if c["val_log_px"] is not None and math.isfinite(c["val_log_px"]) else -math.inf
              for c in candidates]
    best = max(range(len(grid)), key=lambda i: scores[i])
    return grid[best], runs[best], candidates


def _step_sizes(cfg: Config, methods: Sequence[Tuple[str, Method]], chosen: Dict[str, float],
                grid: Sequence[float], selection: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Any]:
    tuned = [name for name, m in methods if tunes_lr(m)]
    if not grid:
        text = (f"optim.lr = {cfg.optim.lr:g} for every method that takes one ({', '.join(tuned) or 'none'}), "
                "no per-method search; the plateau rule cuts it") if tuned else "no method takes optim.lr"
    else:
        picks = ", ".join(f"{name} {chosen[name]:g}" for name in tuned)
        text = (f"chosen per method from the grid {', '.join(f'{v:g}' for v in grid)} by the validation yardstick "
                f"of seed {cfg.seed}: {picks}")
    return {"grid": list(grid), "chosen": chosen, "selection": selection, "description": text}


def compare(cfg: Config, methods: List[Tuple[str, Method]], budget: Budget, out: Path,
            overwrite: bool = False, verbose: bool = True, seeds: int = 1, baseline: Optional[str] = None,
            command: str = "", lr_grid: Sequence[float] = (), jobs: int = 1,
            stack_seeds: bool = True) -> Dict[str, Any]:
    """Run each method with seeds ``cfg.seed, ..., cfg.seed + seeds - 1`` on the data of ``cfg`` and write
    ``out/comparison.{json,md}``, ``out/report.html`` and ``out/plots/``.

    The data split is ``cfg.seed``'s for every seed (a seed changes the initialisation and the minibatch order),
    so paired differences against ``baseline`` (default: the first method) compare methods on the same points.
    With ``lr_grid``, every method that takes ``optim.lr`` first has its step size chosen by :func:`select_lr`
    (its run at the chosen one is its first seed's row), then trains its other seeds at that step size.
    The seeds of an SVI method that the replicas cover (:func:`~pyro_vae.training.replicas.unsupported_reason`)
    train together, stacked in one vectorized step (:func:`~pyro_vae.compare.svi.train_svi_replicas`), in this
    process; each row equals its own run's up to float rounding, and is charged the whole stacked epoch's time
    against a ``seconds`` cap. Other runs train one at a time, the reason said once per method
    (``stack_seeds=False``: every run). ``jobs > 1`` runs those other (method, seed) trainings in that many
    worker processes (:mod:`.jobs`), after the stacked ones.
    Every check that can refuse (the seeds and baseline, the config of each method, its model on this data,
    ``out``) runs first; ``out`` is written only once every run has finished, each file replaced whole."""
    from pyro_vae.build import build_vae, prepare

    check_seeds(seeds, baseline, methods)
    data, _ = prepare(cfg)  # every user error surfaces before anything is trained or written
    models: Dict[str, Any] = {}  # method -> its model on this data (the replicas check its architecture)
    for name, method in methods:
        try:
            if hasattr(method, "overrides"):  # its model must build on this data (conv needs the image shape)
                models[name] = build_vae(configure(cfg, method.overrides), data.x_dim, data.image_shape)
            if hasattr(method, "check"):
                method.check(cfg)
        except ConfigError as err:
            raise ConfigError(f"method '{name}': {err}") from None
    if any(not (math.isfinite(lr) and lr > 0) for lr in lr_grid):
        raise ConfigError(f"--lr-grid {','.join(map(str, lr_grid))}: every step size must be a finite number > 0")
    if not (isinstance(jobs, int) and jobs >= 1):
        raise ConfigError(f"--jobs {jobs}: must be a whole number >= 1")
    specs = {name: spec(name, method) for name, method in methods} if jobs > 1 else {}
    out = check_out(out, overwrite)
    chosen: Dict[str, float] = {}
    selection: Dict[str, List[Dict[str, Any]]] = {}

    def say(message: str) -> None:
        if verbose:
            print(message, file=sys.stderr, flush=True)

    runs: List[Run] = []
    first: Dict[int, MethodResult] = {}  # run index -> the step-size search's run that is that row
    stacks: List[Tuple[str, Method, List[int], List[Config]]] = []  # seeds trained as stacked replicas
    alone: Dict[str, str] = {}  # method -> why its seeds train one run at a time
    for name, method in methods:
        base = cfg
        if lr_grid and tunes_lr(method):
            say(f"{name}: choosing optim.lr from {', '.join(f'{v:g}' for v in lr_grid)}")
            lr, best, selection[name] = select_lr(name, method, cfg, data, budget, lr_grid, say)
            base = configure(cfg, [f"optim.lr={lr}"])
            best.name, best.seed = name, cfg.seed
            first[len(runs)] = best
            say(f"    {name}: optim.lr={lr:g} (best validation log p(x))")
        if tunes_lr(method):
            chosen[name] = base.optim.lr
        start, configs = len(runs), []
        for i in range(seeds):
            seeded = base if i == 0 else configure(base, [f"seed={cfg.seed + i}"])
            runs.append(Run(name, seeded.to_dict(), specs.get(name), None if jobs > 1 else method))
            configs.append(seeded)
        index = [k for k in range(start, len(runs)) if k not in first]  # the seeds still to train
        if len(index) < 2:
            if index and seeds > 1:
                alone[name] = "one seed left after the step-size search"
            continue
        reason = _stack_reason(method, [configs[k - start] for k in index], models.get(name), stack_seeds)
        if reason is None:
            stacks.append((name, method, index, [configs[k - start] for k in index]))
        else:
            alone[name] = reason
            if hasattr(method, "replicas") and stack_seeds:
                say(f"{name}: its seeds train one run at a time ({reason})")
    stacked = {k for _, _, index, _ in stacks for k in index}
    todo = [i for i in range(len(runs)) if i not in first and i not in stacked]
    total, finished = len(todo) + len(stacked), [0]

    def started(k: int) -> None:
        run = runs[todo[k]]
        say(f"[{len(stacked) + k + 1}/{total}] {run.name}" + (f" (seed {run.config['seed']})" if seeds > 1 else ""))

    def done(k: int, result: MethodResult, together: bool = False) -> None:
        finished[0] += 1
        state = "converged" if result.converged else f"NOT converged: {result.stop_detail}"
        head = f"    [{finished[0]}/{total} done] {result.name}" if jobs > 1 else "   "
        say(head + (f" seed {result.seed}:" if (jobs > 1 or together) and seeds > 1 else "")
            + f" test log p(x) {fmt(result.test_log_likelihood)} ({result.estimator}), {result.epochs} epochs, "
              f"{result.seconds:.1f} s, {state}")

    trained: Dict[int, MethodResult] = {}
    position = 0
    for group in list(stacks):  # in this process, before any worker starts
        name, method, index, configs = group
        say(f"[{position + 1}-{position + len(index)}/{total}] {name} (seeds "
            f"{', '.join(str(c.seed) for c in configs)}): stacked as {len(index)} replicas in one vectorized step")
        position += len(index)
        try:
            results = method.replicas(configs, data, budget, name)
        except ConfigError as err:  # a check only the built replicas make (no fused Adam on this device, ...)
            say(f"{name}: its seeds train one run at a time ({err})")
            alone[name] = str(err)
            stacks.remove(group)
            stacked.difference_update(index)
            todo[:] = sorted(todo + index)
            continue
        for k, seeded, result in zip(index, configs, results):
            result.name, result.seed = name, seeded.seed
            trained[k] = result
            done(k, result, together=True)
    if jobs > 1 and todo:
        say(f"training {len(todo)} runs in {min(jobs, len(todo))} processes")
    trained.update(zip(todo, run_all([runs[i] for i in todo], data, budget, jobs, done, started)))
    rows = [first[i] if i in first else trained[i] for i in range(len(runs))]
    svi = {name for name, method in methods if hasattr(method, "replicas")}
    for row in rows:  # which runs were stacked, for the report
        if row.name in svi:
            row.extra.setdefault("replicas", 1)
            row.extra.setdefault("vectorized", False)
    reference, kind = yardstick_reference(rows)
    yardstick = budget.yardstick(data)
    estimators = sorted({r.extra.get("yardstick", "exact" if r.estimator == "exact" else
                                     f"IWAE-{budget.yardstick_samples}") for r in rows})
    description = budget.describe(cfg.train.epochs)
    if stacks and budget.seconds is not None:
        description += "; a stacked seed is charged the whole stacked epoch's time"
    report = {"command": command, "config": cfg.to_dict(),
              "budget": {**asdict(budget), "description": description},
              "seeds": [cfg.seed + i for i in range(seeds)], "baseline": baseline or methods[0][0],
              "yardstick": {"estimator": ", ".join(estimators), "points": len(yardstick.points),
                            "samples": budget.yardstick_samples, "reference": reference, "reference_kind": kind},
              "step_sizes": _step_sizes(cfg, methods, chosen, lr_grid, selection),
              "seed_runs": _seed_runs(stacks, alone, seeds, bool(lr_grid), jobs),
              "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
              "n_test_scored": len(budget.test_split(data)), "jobs": jobs,
              "methods": [r.to_dict() for r in rows]}
    report["summary"] = summarize(report["methods"], report["baseline"])
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = write_plots(report, out / "plots")
    report["plots"] = [str(p.relative_to(out)) for p in plots]
    text = markdown(report)
    atomic_write_json(out / "comparison.json", report)
    atomic_write_bytes(out / "comparison.md", text.encode())
    atomic_write_bytes(out / "report.html", html_report(report, text, plots).encode())
    return report


def _stack_reason(method: Method, configs: Sequence[Config], model, stack_seeds: bool) -> Optional[str]:
    """Why the seeds ``configs`` of ``method`` cannot train as stacked replicas (None: they can)."""
    if not stack_seeds:
        return "stacking turned off"
    if not hasattr(method, "replicas"):
        return "its own training loop"
    return method.stack_reason(configs, model)


def _seed_runs(stacks, alone: Dict[str, str], seeds: int, searched: bool, jobs: int) -> Dict[str, Any]:
    """Which methods' seeds trained as stacked replicas and which one run at a time (and why), for the report."""
    stacked = {name: len(index) for name, _, index, _ in stacks}
    sizes = sorted(set(stacked.values()))
    parts = []
    if stacked:
        search = " (the first seed trained in the step-size search)" if searched else ""
        search += " (in the main process, before the worker processes)" if jobs > 1 and alone else ""
        parts.append(f"stacked as {'/'.join(map(str, sizes))} replicas in one vectorized step for "
                     f"{', '.join(stacked)}{search}")
    if alone:
        parts.append("one run at a time for " + ", ".join(f"{name} ({why})" for name, why in alone.items()))
    text = "; ".join(parts) if seeds > 1 else "one seed: nothing to stack"
    return {"stacked": stacked, "alone": alone, "description": text}
