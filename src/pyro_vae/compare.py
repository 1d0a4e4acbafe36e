"""Train several methods on the same split, seed, architecture and budget; write a table, JSON and plots."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines with no display
import matplotlib.pyplot as plt  # noqa: E402

from .config import Config  # noqa: E402
from .errors import ConfigError, RunDirError  # noqa: E402
from .methods import METHODS, Budget, Method, MethodResult, configure, load_method_modules, svi_method  # noqa: E402
from .rundir import atomic_write_bytes, atomic_write_json, check_writable_dir  # noqa: E402

OWN_FILES = ("comparison.json", "comparison.md")
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
    load_method_modules()
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


def compare(cfg: Config, methods: List[Tuple[str, Method]], budget: Budget, out: Path,
            overwrite: bool = False, verbose: bool = True) -> Dict[str, Any]:
    """Run each method on the data of ``cfg`` and write ``out/comparison.{json,md}`` and ``out/plots/``.

    Every check that can refuse (the config of each method, its model on this data, ``out``) runs first;
    ``out`` is written only once every method has trained, each file replaced whole."""
    from .build import build_vae
    from .train import prepare

    data, _ = prepare(cfg)  # every user error surfaces before anything is trained or written
    for name, method in methods:
        try:
            if hasattr(method, "overrides"):  # its model must build on this data (conv needs the image shape)
                build_vae(configure(cfg, method.overrides), data.x_dim, data.image_shape)
            if hasattr(method, "check"):
                method.check(cfg)
        except ConfigError as err:
            raise ConfigError(f"method '{name}': {err}") from None
    out = check_out(out, overwrite)
    rows: List[MethodResult] = []
    for name, method in methods:
        if verbose:
            print(f"[{len(rows) + 1}/{len(methods)}] {name}", file=sys.stderr, flush=True)
        result = method(cfg, data, budget)
        result.name = name
        rows.append(result)
        if verbose:
            print(f"    val_elbo {result.val_elbo:.3f}  test_log_likelihood {_fmt(result.test_log_likelihood)}  "
                  f"{result.seconds:.1f} s", file=sys.stderr, flush=True)
    report = {"config": cfg.to_dict(), "budget": {"epochs": budget.epochs, "seconds": budget.seconds,
                                                  "eval_samples": budget.eval_samples, "grad_samples": budget.grad_samples},
              "n_train": len(data.train), "n_val": len(data.val), "n_test": len(data.test),
              "methods": [r.to_dict() for r in rows]}
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = write_plots(rows, out / "plots")
    report["plots"] = [str(p.relative_to(out)) for p in plots]
    atomic_write_json(out / "comparison.json", report)
    atomic_write_bytes(out / "comparison.md", markdown(rows, budget).encode())
    return report


def _fmt(v: Optional[float], digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def markdown(rows: Sequence[MethodResult], budget: Budget) -> str:
    """The comparison as a Markdown table (bounds in nats per test point, higher is better)."""
    limit = " and ".join(s for s in (f"{budget.epochs} epochs" if budget.epochs else "",
                                      f"{budget.seconds:g} s" if budget.seconds else "") if s)
    lines = [f"# Comparison (budget: {limit}; test log-likelihood: exact where it exists, else IWAE with "
             f"K = {budget.eval_samples})", "",
             "| method | train ELBO | val ELBO | test ELBO | test log-lik | exact log p(x) | seconds | examples/s | "
             "iterations | grad var (encoder) | grad var (decoder) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.name} | {_fmt(r.train_elbo)} | {_fmt(r.val_elbo)} | {_fmt(r.test_elbo)} | "
                     f"{_fmt(r.test_log_likelihood)} | {_fmt(r.exact_log_likelihood)} | {r.seconds:.1f} | "
                     f"{r.examples_per_second:.0f} | {r.iterations} | {r.extra.get('grad_variance_encoder', float('nan')):.4g} | "
                     f"{r.extra.get('grad_variance_decoder', float('nan')):.4g} |")
    lines += ["", "Train ELBO is each method's own objective averaged over the last epoch (an IWAE or Renyi bound "
              "for those methods); val and test ELBO are the standard ELBO for all. Gradient variance: trace of the "
              "covariance of the per-point stochastic gradient at the final parameters on one fixed batch."]
    return "\n".join(lines) + "\n"


def write_plots(rows: Sequence[MethodResult], directory: Path) -> List[Path]:
    """Validation ELBO against wall time and against epoch (overlaid), and a bar chart of final bounds."""
    paths = []
    for key, label, name in (("wall_time", "training wall time (s)", "learning_curves_wall_time.png"),
                             ("epoch", "epoch", "learning_curves_epoch.png")):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        for r in rows:
            ax.plot([c[key] for c in r.curve], [c["val_elbo"] for c in r.curve], marker=".", label=r.name)
        ax.set_xlabel(label)
        ax.set_ylabel("validation ELBO (nats per point)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        paths.append(_save(fig, directory / name))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(rows) + 2), 4))
    xs = range(len(rows))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], [r.test_elbo for r in rows], width, label="test ELBO")
    ax.bar([x + width / 2 for x in xs], [r.test_log_likelihood if r.test_log_likelihood is not None else float("nan")
                                         for r in rows], width, label="test log-likelihood (exact or IWAE)")
    ax.set_xticks(list(xs), [r.name for r in rows], rotation=20, ha="right")
    ax.set_ylabel("nats per test point (higher is better)")
    values = [v for r in rows for v in (r.test_elbo, r.test_log_likelihood) if v is not None]
    if values:  # bars of large negative numbers differ at the top: zoom there
        lo, hi = min(values), max(values)
        pad = 0.1 * (hi - lo) + 1e-3 * abs(hi) + 1e-6
        ax.set_ylim(lo - 3 * pad, hi + pad)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3, axis="y")
    paths.append(_save(fig, directory / "final_bounds.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
