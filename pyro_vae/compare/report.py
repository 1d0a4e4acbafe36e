"""A comparison's report dict as a Markdown page and figures: each method across seeds, on one yardstick.

The report (built by :mod:`pyro_vae.compare.comparison`) holds one :class:`~pyro_vae.compare.methods.MethodResult`
dict per method and seed and their :func:`~pyro_vae.compare.seeds.summarize`. :func:`markdown` writes the page a
researcher reads (the main table leads with test log p(x), then paired differences against the baseline, a
"how to read this" paragraph and one row per seed); :func:`write_plots` draws the gap to the yardstick's reference
against epoch and wall time (median and min-max band across seeds, log axis) and the final test log p(x) of every
seed. Numbers are nats per point, higher is better.
"""

from __future__ import annotations

import math
from pathlib import Path
from statistics import median
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")  # files only: runs on machines with no display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import ticker  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from pyro_vae.compare.seeds import by_method, spread, summarize  # noqa: E402

GAP_FLOOR = 1e-4  # nats: a gap to the reference at or below this (an exact hit) is drawn here on the log axis
DAGGER = "\u2020"  # marks a row where some seed did not converge
PLOTS = ("yardstick_epoch.png", "yardstick_wall_time.png", "final_log_likelihood.png")


def fmt(v: Optional[float], digits: int = 3) -> str:
    """``v`` with ``digits`` decimals; ``"n/a"`` for None (and NaN)."""
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _num(v: Optional[float], spec: str) -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def _pm(s: Mapping[str, Any], spec: str = ".3f", key: str = "sd") -> str:
    """``mean ± sd`` (or ``± se`` with ``key="se"``) of a :func:`spread`; the mean alone below two values."""
    if not s["n"]:
        return "n/a"
    if s[key] is None:
        return _num(s["mean"], spec)
    return f"{_num(s['mean'], spec)} \u00b1 {_num(s[key], spec.lstrip('+'))}"


def _cell(text: Any) -> str:
    """Text safe inside a pipe-table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _summary(report: Mapping[str, Any]) -> Dict[str, Any]:
    return report.get("summary") or summarize(report["methods"], report.get("baseline"))


def _has_curve(rows: Sequence[Mapping[str, Any]]) -> bool:
    return any(c.get("val_log_px") is not None for r in rows for c in r.get("curve") or [])


def _lr(rows: Sequence[Mapping[str, Any]]) -> str:
    """The first step size(s) and, where a schedule cut it, the final ones: ``0.01 -> 0.0001``."""
    first = list(dict.fromkeys(r["extra"]["lr"] for r in rows if r.get("extra", {}).get("lr") is not None))
    final = list(dict.fromkeys(r["extra"]["final_lr"] for r in rows if r.get("extra", {}).get("final_lr") is not None))
    if not first:
        return "n/a"
    text = ", ".join(f"{v:g}" for v in first)
    if final and final != first:
        text += " \u2192 " + (f"{final[0]:g}" if len(final) == 1 else f"{min(final):g}\u2013{max(final):g}")
    return text


def _header(report: Mapping[str, Any], names: Sequence[str]) -> List[str]:
    budget, ys, seeds = report.get("budget", {}), report.get("yardstick", {}), list(report.get("seeds") or [])
    if not seeds:
        seeds = list(dict.fromkeys(r["seed"] for r in report["methods"]))
    description = budget.get("description") or " ".join(
        str(v) for v in (budget.get("stop"), budget.get("epochs") and f"{budget['epochs']} epochs",
                         budget.get("seconds") and f"{budget['seconds']:g} s") if v) or "n/a"
    spread_text = ("each number is mean \u00b1 sd across seeds" if len(seeds) > 1 else "one seed: no spread")
    estimators: Dict[str, List[str]] = {}
    for name, rows in by_method(report["methods"]).items():
        for est in dict.fromkeys(r.get("estimator") or "n/a" for r in rows):
            estimators.setdefault(est, []).append(name)
    test_est = (f"{next(iter(estimators))}, for every method" if len(estimators) == 1 else
                "; ".join(f"{est} ({', '.join(ns)})" for est, ns in estimators.items()))
    lines = [f"# Comparison: {', '.join(names)}", ""]
    if report.get("command"):
        lines.append(f"- **Reproduce:** `{report['command']}`")
    lines += [f"- **Budget:** {description}",
              f"- **Seeds:** {len(seeds)} ({', '.join(map(str, seeds))}); {spread_text}",
              f"- **Yardstick:** {ys.get('estimator', 'n/a')} log p(x) on {ys.get('points', 'n/a')} validation points; "
              f"reference {fmt(ys.get('reference'))} nats per point ({ys.get('reference_kind', 'n/a')})",
              f"- **Test log p(x):** {test_est}"]
    if len(seeds) > 1 and (report.get("seed_runs") or {}).get("description"):
        lines.append(f"- **Seed runs:** {report['seed_runs']['description']}")
    if report.get("jobs", 1) > 1:
        lines.append(f"- **Runs:** {report['jobs']} at a time in worker processes: seconds and examples/s are "
                     "those of runs sharing the machine's cores")
    steps = report.get("step_sizes")
    if steps:
        lines.append(f"- **Step sizes:** {steps['description']}")
    if "n_train" in report:
        scored = report.get("n_test_scored", report.get("n_test", 0))
        subset = f" (test numbers on {scored} of them, fixed rows: --test-points)" \
            if scored != report.get("n_test", 0) else ""
        lines.append(f"- **Data:** {report['n_train']} train / {report.get('n_val', 0)} validation / "
                     f"{report.get('n_test', 0)} test points{subset}")
    return lines + [""]


def _main_table(summary: Mapping[str, Any], groups: Mapping[str, List[Mapping[str, Any]]],
                n_seeds: int) -> List[str]:
    lines = ["## Results", "",
             "| method | test log p(x) | test ELBO | val log p(x) (yardstick) | converged | stopped | epochs | seconds "
             "| examples/s | lr | grad var (enc) | grad var (dec) | grad SNR (enc) | grad SNR (dec) |",
             "|---|---:|---:|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    many = n_seeds > 1
    for m in summary["methods"]:
        rows = groups[m["name"]]
        ok = m["n_converged"] == m["n_seeds"]
        name = _cell(m["name"]) if ok else f"**{_cell(m['name'])}** {DAGGER}"
        if m["n_seeds"] != n_seeds:
            name += f" ({m['n_seeds']} seeds)"
        conv = "yes" if ok else ("**NO**" + (f" ({m['n_converged']}/{m['n_seeds']})" if m["n_seeds"] > 1 else ""))
        stops = ", ".join(f"{r} \u00d7{c}" if many else str(r) for r, c in m["stop_reasons"].items())
        grads = [_pm(spread(r.get("extra", {}).get(k) for r in rows), ".3g")
                 for k in ("grad_variance_encoder", "grad_variance_decoder", "grad_snr_encoder", "grad_snr_decoder")]
        lines.append(f"| {name} | {_pm(m['test_log_likelihood'])} | {_pm(m['test_elbo'])} | {_pm(m['val_log_px'])} "
                     f"| {conv} | {_cell(stops)} | {_pm(m['epochs'], '.0f')} | {_pm(m['seconds'], '.1f')} "
                     f"| {_pm(m['examples_per_second'], '.0f')} | {_lr(rows)} | {' | '.join(grads)} |")
    unconverged = [r for rows in groups.values() for r in rows if not r.get("converged")]
    if unconverged:
        lines += ["", f"{DAGGER} **Not converged**: these runs stopped at a cap, so their numbers are where the cap "
                      "left them, not at convergence:", ""]
        lines += [f"- {_cell(r['name'])}, seed {r['seed']}: {r.get('stop_reason') or 'n/a'} "
                  f"({r.get('stop_detail') or 'no detail'})" for r in unconverged]
    return lines + [""]


def _difference_table(summary: Mapping[str, Any]) -> List[str]:
    baseline = summary.get("baseline")
    diffs = {(d["name"], d["metric"]): d for d in summary.get("differences", [])}
    others = [m for m in summary["methods"] if m["name"] != baseline]
    if baseline is None or not others:
        return []
    lines = [f"## Paired differences vs {_cell(baseline)}", "",
             f"Each method minus {_cell(baseline)}, paired by seed (the same seed's initialisation and minibatches): "
             "mean \u00b1 standard error of the per-seed differences; positive is better than the baseline.", "",
             f"| method | \u0394 test log p(x) vs {_cell(baseline)} | \u0394 test ELBO | seeds |",
             "|---|---:|---:|---|"]
    for m in others:
        ll, elbo = diffs.get((m["name"], "test_log_likelihood")), diffs.get((m["name"], "test_elbo"))
        ok = m["n_converged"] == m["n_seeds"]
        name = _cell(m["name"]) if ok else f"**{_cell(m['name'])}** {DAGGER}"
        n = ll["n"] if ll else 0
        seeds = "1 seed" if n == 1 else f"{n} ({', '.join(map(str, ll['seeds']))})" if n else "0"
        d_ll, d_elbo = (_pm(d, "+.3f", "se") if d else "n/a" for d in (ll, elbo))
        lines.append(f"| {name} | {d_ll} | {d_elbo} | {seeds} |")
    return lines + [""]


def _how_to_read(report: Mapping[str, Any], groups: Mapping[str, List[Mapping[str, Any]]], n_seeds: int) -> List[str]:
    ys = report.get("yardstick", {})
    text = (f"**How to read this.** Every method is scored on one yardstick, whatever its own training objective: "
            f"the same estimator of log p(x) ({ys.get('estimator', 'n/a')}) on the same {ys.get('points', 'n/a')} "
            "validation points (the val log p(x) column, at the final parameters). *Converged* means the method's "
            "own convergence test said so (SVI: a plateau of the yardstick at the floor step size; EM: a change below "
            f"its tolerance); a row where some seed stopped at a cap instead is bold and marked {DAGGER}. ")
    if n_seeds > 1:
        text += ("\u00b1 is the standard deviation between training runs with different seeds (initialisation "
                 "and minibatch order, the same data split), not test-set or Monte Carlo error")
    else:
        text += "With one seed there is no spread between training runs: each number is one run"
    ses = [r["extra"]["test_log_likelihood_se"] for rows in groups.values() for r in rows
           if r.get("extra", {}).get("test_log_likelihood_se") is not None]
    if ses:
        text += (f"; the test-set standard error of one run's test log p(x) is {median(ses):.3f} nats "
                 f"(median over the {len(ses)} runs that report it)")
    text += ". "
    text += "All numbers are nats per point; higher is better."
    floors = [r["extra"]["grad_snr_floor"] for rows in groups.values() for r in rows
              if r.get("extra", {}).get("grad_snr_floor") is not None]
    if floors:
        text += (" *grad var* and *grad SNR* are the trace of the covariance and the mean per-coordinate "
                 "signal-to-noise ratio |mean| / sd (Rainforth et al. 2018) of the method's own gradient on one "
                 f"batch at the final parameters; an SNR near {floors[0]:.2f} is indistinguishable from no signal.")
    lines = [text, ""]
    missing = [n for n, rows in groups.items() if not _has_curve(rows)]
    if missing:
        lines += [f"No yardstick curve during training (scored at the end only; not in the curve figures): "
                  f"{', '.join(_cell(n) for n in missing)}.", ""]
    return lines


def _per_seed_table(groups: Mapping[str, List[Mapping[str, Any]]]) -> List[str]:
    lines = ["## Per seed", "",
             "| method | seed | test log p(x) | test ELBO | val log p(x) | converged | stop reason | epochs "
             "| seconds |",
             "|---|---:|---:|---:|---:|---|---|---:|---:|"]
    for rows in groups.values():
        for r in rows:
            ok = bool(r.get("converged"))
            name = _cell(r["name"]) if ok else f"**{_cell(r['name'])}** {DAGGER}"
            lines.append(f"| {name} | {r['seed']} | {fmt(r.get('test_log_likelihood'))} | {fmt(r.get('test_elbo'))} "
                         f"| {fmt(r.get('val_log_px'))} | {'yes' if ok else '**NO**'} "
                         f"| {r.get('stop_reason') or 'n/a'} | {r.get('epochs', 0)} | {fmt(r.get('seconds'), 1)} |")
    return lines + [""]


def markdown(report: Mapping[str, Any]) -> str:
    """The comparison as a Markdown page: header, main table, paired differences, how to read it, per-seed rows."""
    summary = _summary(report)
    groups = by_method(report["methods"])
    seeds = report.get("seeds") or list(dict.fromkeys(r["seed"] for r in report["methods"]))
    lines = _header(report, list(groups))
    lines += _main_table(summary, groups, len(seeds))
    lines += _difference_table(summary)
    lines += _how_to_read(report, groups, len(seeds))
    lines += _per_seed_table(groups)
    return "\n".join(lines).rstrip("\n") + "\n"


# ----------------------------------------------------------------------------------------------- figures


def _colours(names: Sequence[str]) -> Dict[str, Any]:
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _reference(report: Mapping[str, Any]) -> Optional[float]:
    ref = report.get("yardstick", {}).get("reference")
    if ref is not None:
        return float(ref)
    seen = [c["val_log_px"] for r in report["methods"] for c in r.get("curve") or [] if c.get("val_log_px") is not None]
    seen += [r["val_log_px"] for r in report["methods"] if r.get("val_log_px") is not None]
    return max(seen) if seen else None


def _gap_curve(row: Mapping[str, Any], key: str, ref: float) -> Tuple[np.ndarray, np.ndarray]:
    """``(x, gap)`` of one run, sorted by ``x``: ``ref - val_log_px`` clipped at :data:`GAP_FLOOR`, None skipped."""
    pts = sorted((float(c[key]), max(ref - float(c["val_log_px"]), GAP_FLOOR)) for c in row.get("curve") or []
                 if c.get("val_log_px") is not None and c.get(key) is not None
                 and math.isfinite(float(c["val_log_px"])))
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


def _band(curves: Sequence[Tuple[np.ndarray, np.ndarray]]) -> Tuple[np.ndarray, ...]:
    """Median, min and max across runs on the union of their x, each run interpolated (in log gap) only within
    its own range: past the end of a run, the band is of the runs still going."""
    grid = np.unique(np.concatenate([x for x, _ in curves]))
    stack = np.full((len(curves), len(grid)), np.nan)
    for i, (x, y) in enumerate(curves):
        inside = (grid >= x[0]) & (grid <= x[-1])
        stack[i, inside] = np.interp(grid[inside], x, np.log(y))
    keep = (~np.isnan(stack)).any(axis=0)
    grid, stack = grid[keep], stack[:, keep]
    return grid, np.exp(np.nanmedian(stack, axis=0)), np.exp(np.nanmin(stack, axis=0)), np.exp(np.nanmax(stack, axis=0))


def _curve_plot(report: Mapping[str, Any], key: str, xlabel: str, path: Path, colours: Mapping[str, Any]) -> Path:
    groups = by_method(report["methods"])
    ys = report.get("yardstick", {})
    ref = _reference(report)
    fig, ax = plt.subplots(figsize=(7, 4.4))
    missing, lows, highs = [], [], []
    for name, rows in groups.items():
        curves = [c for c in (_gap_curve(r, key, ref) for r in rows) if len(c[0])] if ref is not None else []
        if not curves:
            missing.append(name)
            continue
        colour = colours[name]
        if len(curves) == 1:
            x, y = curves[0]
            ax.plot(x, y, color=colour, marker="." if len(x) < 60 else None, label=name)
        else:
            x, mid, lo, hi = _band(curves)
            ax.plot(x, mid, color=colour, label=f"{name} (median of {len(curves)} seeds)")
            ax.fill_between(x, lo, hi, color=colour, alpha=0.2, linewidth=0)
        lows += [float(y.min()) for _, y in curves]
        highs += [float(y[1:].max() if len(y) > 1 else y.max()) for _, y in curves]  # not the first epoch's gap
    if lows:
        ax.set_yscale("log")
        bottom, top = max(GAP_FLOOR, min(lows)) / 2, max(highs) * 3
        ax.set_ylim(bottom, top)
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)  # 0.01, 1, 100 rather than powers of ten
        ax.yaxis.set_minor_formatter(plain if top / bottom < 100 else ticker.NullFormatter())
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no method has a yardstick curve", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"nats below the reference (log scale;\nclipped at {GAP_FLOOR:g})")
    ax.set_title(f"Yardstick ({ys.get('estimator', '?')} log p(x), {ys.get('points', '?')} validation points): gap "
                 f"to the reference\n({ys.get('reference_kind', 'best value reached')}, {fmt(ref)} nats per point)",
                 fontsize="medium")
    ax.grid(alpha=0.3)
    ax.grid(alpha=0.1, which="minor")
    if missing:
        fig.text(0.01, 0.01, f"no yardstick curve (scored at the end only): {', '.join(missing)}", fontsize="small")
    return _save(fig, path, bottom=0.06 if missing else 0.0)


def _final_plot(report: Mapping[str, Any], path: Path, colours: Mapping[str, Any]) -> Path:
    groups = by_method(report["methods"])
    names = list(groups)
    fig, ax = plt.subplots(figsize=(8.5, max(2.5, 0.55 * len(names) + 1.6)))
    hollow = False
    for i, name in enumerate(names):
        rows = [r for r in groups[name] if r.get("test_log_likelihood") is not None]
        colour = colours[name]
        offsets = np.linspace(0.14, 0.3, len(rows)) if len(rows) > 1 else [0.22]  # a strip under the mean
        for off, r in zip(offsets, rows):
            ok = bool(r.get("converged"))
            hollow |= not ok
            ax.plot(r["test_log_likelihood"], i + off, marker="o" if ok else "s", markersize=5, linestyle="none",
                    color=colour, markerfacecolor=colour if ok else "none")
        s = spread(r["test_log_likelihood"] for r in rows)
        if s["n"]:
            ax.errorbar(s["mean"], i, xerr=s["sd"] if s["sd"] is not None else None, marker="D", markersize=9,
                        color=colour, capsize=4, linestyle="none", zorder=3)
    closed = spread(r.get("extra", {}).get("closed_form_test_log_likelihood") for r in report["methods"])
    if closed["n"]:
        ax.axvline(closed["mean"], color="grey", linestyle=":", label="closed-form maximum likelihood")
    ax.set_yticks(range(len(names)), names)
    ax.set_ylim(len(names) - 0.5, -0.5)  # first method on top
    ax.set_xlabel("test log p(x), nats per point (higher is better)")
    ax.set_title("Final test log p(x): each seed a dot, mean \u00b1 sd across seeds", fontsize="medium")
    handles = [Line2D([], [], marker="o", color="black", linestyle="none", markersize=5, label="one seed, converged"),
               Line2D([], [], marker="D", color="black", linestyle="none", markersize=8, label="mean \u00b1 sd")]
    if hollow:
        handles.insert(1, Line2D([], [], marker="s", color="black", markerfacecolor="none", linestyle="none",
                                 markersize=5, label="one seed, NOT converged (hollow)"))
    if closed["n"]:
        handles.append(Line2D([], [], color="grey", linestyle=":", label="closed-form maximum likelihood"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def write_plots(report: Mapping[str, Any], directory: Path) -> List[Path]:
    """Write :data:`PLOTS` into ``directory`` (which must exist): the gap to the yardstick's reference against
    epoch and against wall time, and the final test log p(x) per method and seed. Returns the paths written."""
    directory = Path(directory)
    colours = _colours(list(by_method(report["methods"])))
    return [_curve_plot(report, "epoch", "epoch", directory / PLOTS[0], colours),
            _curve_plot(report, "wall_time", "training wall time (s)", directory / PLOTS[1], colours),
            _final_plot(report, directory / PLOTS[2], colours)]


def _save(fig, path: Path, bottom: float = 0.0) -> Path:
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
