"""Run several methods on one split, seed, architecture and budget; write the table, the JSON and the figures.

Every check that can refuse (each method's config and model on this data, ``--out``) runs before any method trains."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

from pyro_vae.compare.methods import METHODS, Budget, Method, MethodResult, configure  # noqa: E402
from pyro_vae.compare.report import fmt, markdown, write_plots
from pyro_vae.compare.svi import svi_method  # noqa: E402
from pyro_vae.config import Config  # noqa: E402
from pyro_vae.errors import ConfigError, RunDirError  # noqa: E402
from pyro_vae.rundir import (  # noqa: E402
    atomic_write_bytes,
    atomic_write_json,
    check_writable_dir,
)

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
    from pyro_vae.build import build_vae, prepare

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
            print(f"    val_elbo {result.val_elbo:.3f}  test_log_likelihood {fmt(result.test_log_likelihood)}  "
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
