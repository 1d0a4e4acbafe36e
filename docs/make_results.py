"""Run the comparisons behind docs/results.md ("Which inference works best here?") and render the page.

    .venv/bin/python docs/make_results.py                 # every run (tens of minutes on 2 cores), then the page
    .venv/bin/python docs/make_results.py --only ppca     # rerun some (comma-separated), keep the others' data
    .venv/bin/python docs/make_results.py --render        # only re-render docs/results.md from docs/results/*.json
    .venv/bin/python docs/make_results.py --collect       # re-copy finished runs/results/*/ into docs/results/

Each run is a real ``pyro-vae compare`` into ``runs/results/<name>/`` (with OMP_NUM_THREADS=1 in its
environment); its comparison.json, trimmed to what the page needs, is copied to ``docs/results/<name>.json``
together with the command, its wall time, the date and the machine, and its yardstick plots to
``docs/results/img/``. The page is rendered from those JSONs alone, so tests/test_results_page.py can
check that every number it quotes comes from the data. Fashion-MNIST runs only where its files are
installed (Debian's dataset-fashion-mnist); elsewhere its committed data, if any, is kept.
"""

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "docs" / "results"
IMG = DATA / "img"
PAGE = ROOT / "docs" / "results.md"
RUNS = ROOT / "runs" / "results"

# name -> (title, the arguments of `pyro-vae compare` after "compare", without --out)
RUN_SPECS = {
    "ppca": ("Synthetic probabilistic PCA (exact log p(x))",
             ["examples/configs/ppca.yaml",
              "--methods", "em,analytic_kl,iwae_k5,rws,wake_sleep,mcem,semi_amortized",
              "--seeds", "3", "--jobs", "2"]),
    "digits": ("The bundled digits (8x8, the default config)",
               ["--methods", "analytic_kl,monte_carlo_kl,iwae_k5,rws,wake_sleep,mcem,semi_amortized",
                "--seeds", "3", "--final", "ais", "--jobs", "2"]),
    "fashion_mnist": ("Fashion-MNIST (28x28, the default architecture)",
                      ["--set", "data.name=fashion_mnist",
                       "--methods", "analytic_kl,iwae_k5,rws",
                       "--seeds", "1", "--final", "ais", "--test-points", "1000", "--jobs", "2"]),
}
# what each data set is for: claims about the setting, not about the results
ABOUT = {
    "ppca": "A linear-Gaussian model on data drawn from one: log p(x) is exact and the maximum-likelihood fit has "
            "a closed form, so every method is measured against a known answer.",
    "digits": "The default config (a 2-d latent, an MLP decoder, a Normal likelihood) on the 8x8 digits bundled "
              "with the package: no closed form, so the test log p(x) is annealed importance sampling from each "
              "method's q to p(z|x), the same reference for every method, with each method's own IWAE bound "
              "beside it.",
    "fashion_mnist": "The default architecture on Fashion-MNIST's 784 pixels: one seed and the default per-method "
                     "time cap on this machine, so this is a test of what each method reaches in that time as much "
                     "as of the method; the test log p(x) is AIS from each method's q on 1000 fixed rows of the "
                     "test split (`--test-points`), as AIS on all 10,000 does not fit this machine.",
}
# copied from each run's plots/ when present
PLOTS = ("yardstick_epoch.png", "yardstick_wall_time.png", "final_log_likelihood.png")


def command_line(name: str) -> str:
    """The command to reproduce run ``name``, as the page prints it."""
    args = RUN_SPECS[name][1] + ["--out", f"runs/results/{name}"]
    return "pyro-vae compare " + " ".join(args)


def fashion_installed() -> bool:
    from pyro_vae.data import FASHION_MNIST_DIR

    return Path(FASHION_MNIST_DIR).is_dir() and any(Path(FASHION_MNIST_DIR).glob("train-images-idx3-ubyte*"))


def machine() -> dict:
    import pyro
    import torch

    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cores": os.cpu_count(), "cpu": model, "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "pyro": pyro.__version__,
            "omp_num_threads": "1"}


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def uncommitted() -> list:
    """The files under pyro_vae/ whose working-tree state differs from the commit (what the run also ran)."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--", "pyro_vae"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return sorted(line[3:] for line in out.splitlines() if line.strip())


def package_changed(start: str, end: str) -> bool:
    """Whether pyro_vae/ differs between commits ``start`` and ``end`` (a run that outlived a commit to it)."""
    if start == end:
        return False
    return subprocess.run(["git", "diff", "--quiet", start, end, "--", "pyro_vae"], cwd=ROOT).returncode != 0


def trim(comparison: dict) -> dict:
    """What the page and its test need of a comparison.json: every row without its learning curve (the plots
    show the curves; the curves are most of the file's size), the summary, budget, yardstick and config."""
    keep = dict(comparison)
    keep["methods"] = [{k: v for k, v in row.items() if k != "curve"} for row in comparison["methods"]]
    return keep


def run(name: str) -> None:
    out = RUNS / name
    exe = Path(sys.executable).parent / "pyro-vae"
    cmd = [str(exe), "compare"] + RUN_SPECS[name][1] + ["--out", str(out), "--overwrite"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    started = datetime.datetime.now(datetime.timezone.utc)
    commit, dirty = git_commit(), uncommitted()  # the code the run starts from
    print(f"[make_results] {name}: {' '.join(cmd)}", flush=True)
    (out / "run_meta.json").unlink(missing_ok=True)  # ours: compare --overwrite refuses a folder with other files
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    wall = time.perf_counter() - t0
    print(f"[make_results] {name}: {wall:.0f} s", flush=True)
    meta = {"name": name, "title": RUN_SPECS[name][0], "command": command_line(name),
            "started_utc": started.strftime("%Y-%m-%d %H:%M UTC"), "wall_seconds": round(wall, 1),
            "machine": machine(), "git_commit": commit, "git_commit_end": git_commit(), "uncommitted": dirty}
    meta["package_changed"] = package_changed(commit, meta["git_commit_end"]) or uncommitted() != dirty
    (out / "run_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    collect(name)


def shrink_png(src: Path, dst: Path) -> None:
    """Copy a plot as a 256-colour PNG (a third of matplotlib's size, the same to the eye), or as it is."""
    try:
        from PIL import Image

        with Image.open(src) as im:
            im.convert("RGB").quantize(colors=256).save(dst, optimize=True)
    except ImportError:
        shutil.copyfile(src, dst)


def collect(name: str) -> None:
    """Copy run ``name``'s trimmed comparison.json (with run_meta.json) and its plots into docs/results/."""
    out = RUNS / name
    comparison = json.loads((out / "comparison.json").read_text())
    meta = json.loads((out / "run_meta.json").read_text())
    DATA.mkdir(parents=True, exist_ok=True)
    IMG.mkdir(parents=True, exist_ok=True)
    plots = []
    for plot in PLOTS:
        src = out / "plots" / plot
        if src.is_file():
            dst = IMG / f"{name}_{plot}"
            shrink_png(src, dst)
            plots.append(dst.name)
    meta["plots"] = plots
    meta.setdefault("uncommitted", uncommitted())  # a run_meta.json from before this field: the state now
    (DATA / f"{name}.json").write_text(json.dumps({"run": meta, "comparison": trim(comparison)}, indent=1) + "\n")


# ----------------------------------------------------------------------------------------------- the page
# Everything below reads docs/results/*.json only (no pyro_vae import), so the page renders anywhere, fast.

PM = "\u00b1"
DAGGER = "\u2020"
NOT_INSTALLED = {"fashion_mnist": "Fashion-MNIST was not installed on the machine that generated this page "
                                  "(`apt-get install dataset-fashion-mnist`, or set `data.path`), so it was not run."}


def spread(values):
    """mean, sd (n - 1), se and n of the values that are not None."""
    kept = [float(v) for v in values if v is not None]
    n = len(kept)
    if not n:
        return {"mean": None, "sd": None, "se": None, "n": 0}
    mean = math.fsum(kept) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in kept) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "se": None if sd is None else sd / math.sqrt(n), "n": n}


def num(v, digits: int, sign: bool = False) -> str:
    if v is None:
        return "n/a"
    text = f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"
    return text.replace("-", "\u2212")  # a real minus sign


def pm(s, digits: int, key: str = "sd", sign: bool = False) -> str:
    if not s["n"]:
        return "n/a"
    if s[key] is None:
        return num(s["mean"], digits, sign)
    return f"{num(s['mean'], digits, sign)} {PM} {num(s[key], digits)}"


def names(ms) -> str:
    ms = [f"`{m}`" for m in ms]
    return ", ".join(ms[:-1]) + " and " + ms[-1] if len(ms) > 1 else (ms[0] if ms else "none")


class Run:
    """One data set's committed JSON, with the derived numbers the page quotes."""

    def __init__(self, data: dict):
        self.meta, self.cmp = data["run"], data["comparison"]
        self.summary = self.cmp["summary"]
        self.baseline = self.summary["baseline"]
        self.methods = [m["name"] for m in self.summary["methods"]]
        self.by_name = {m["name"]: m for m in self.summary["methods"]}
        self.rows = {n: [r for r in self.cmp["methods"] if r["name"] == n] for n in self.methods}
        self.diffs = {d["name"]: d for d in self.summary["differences"] if d["metric"] == "test_log_likelihood"}
        self.n_seeds = len(self.cmp["seeds"])
        self.estimators = list(dict.fromkeys(m["estimator"] for m in self.summary["methods"]))
        self.exact = self.estimators == ["exact"]
        self.ais = any(e.startswith("AIS") for e in self.estimators)
        self.digits = 4 if self.exact else 2
        closed = spread(r.get("extra", {}).get("closed_form_test_log_likelihood") for r in self.cmp["methods"])
        self.closed_form = closed["mean"]

    def ll(self, name):
        return self.by_name[name]["test_log_likelihood"]

    def all_converged(self, name) -> bool:
        m = self.by_name[name]
        return m["n_converged"] == m["n_seeds"]

    def gap(self, name):
        """closed-form test log p(x) minus the method's, over its seeds (positive: short of the maximum)."""
        return spread(self.closed_form - r["test_log_likelihood"] for r in self.rows[name])

    def iwae(self, name):
        return spread(r.get("extra", {}).get("test_iwae") for r in self.rows[name])

    def ais_minus_iwae(self, name):
        return spread(r["test_log_likelihood"] - r["extra"]["test_iwae"] for r in self.rows[name]
                      if r.get("extra", {}).get("test_iwae") is not None)

    def unconverged(self):
        return [r for r in self.cmp["methods"] if not r.get("converged")]

    def test_se(self):
        ses = sorted(r["extra"]["test_log_likelihood_se"] for r in self.cmp["methods"]
                     if r.get("extra", {}).get("test_log_likelihood_se"))
        if not ses:
            return None
        mid = len(ses) // 2
        return ses[mid] if len(ses) % 2 else (ses[mid - 1] + ses[mid]) / 2


def machine_line(meta) -> str:
    m = meta["machine"]
    wall = meta["wall_seconds"]
    dirty = meta.get("uncommitted") or []
    tree = (f"commit `{meta['git_commit']}` with uncommitted changes to {', '.join(f'`{f}`' for f in dirty)}"
            if dirty else f"commit `{meta['git_commit']}`")
    if meta.get("package_changed"):
        tree += (f" (pyro_vae/ changed under the run: the checkout was at `{meta['git_commit_end']}` when it "
                 "finished)")
    return (f"Run on {meta['started_utc']} from {tree}, on {m['cores']} cores "
            f"({m['cpu']}; {m['platform']}), Python {m['python']}, torch {m['torch']}, pyro {m['pyro']}, "
            f"`OMP_NUM_THREADS={m['omp_num_threads']}`. Wall time of the command: "
            f"{int(wall // 60)} min {int(round(wall % 60))} s.")


def model_line(cfg: dict) -> str:
    """The model and guide of a comparison's config, in one line (what every method shares)."""
    def spec(d: dict) -> str:
        keys = ", ".join(f"{k} {v}" for k, v in d.items() if k != "name")
        return f"{d['name']} ({keys})" if keys else d["name"]

    m = cfg["model"]
    return (f"latent dimension {m['latent_dim']}; prior {spec(m['prior'])}; decoder {spec(m['decoder'])}; "
            f"likelihood {spec(m['likelihood'])}; guide {spec(cfg['guide'])}")


def table(run: Run):
    d = run.digits
    head = ["method", "test log p(x)", "estimator"]
    if run.closed_form is not None:
        head.append("gap to closed-form ML")
    if run.ais:
        head += ["IWAE from its own q", "AIS \u2212 IWAE"]
    head += [f"\u0394 vs `{run.baseline}` (paired)", "converged", "epochs", "seconds"]
    lines = ["| " + " | ".join(head) + " |", "|---|---:|---|" + "---:|" * (len(head) - 3)]
    for name in run.methods:
        m = run.by_name[name]
        label = f"`{name}`" if run.all_converged(name) else f"**`{name}`** {DAGGER}"
        cells = [label, pm(m["test_log_likelihood"], d), m["estimator"]]
        if run.closed_form is not None:
            cells.append(pm(run.gap(name), d))
        if run.ais:
            cells += [pm(run.iwae(name), d), pm(run.ais_minus_iwae(name), d, sign=True)]
        if name == run.baseline:
            cells.append("baseline")
        else:
            diff = run.diffs.get(name)
            cells.append(pm(diff, d, key="se", sign=True) if diff else "n/a")
        conv = f"{m['n_converged']} of {m['n_seeds']}"
        cells += [conv if run.all_converged(name) else f"**{conv}**", pm(m["epochs"], 0), pm(m["seconds"], 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def conclusions(run: Run):
    d = run.digits
    out = []
    best = max(run.methods, key=lambda n: run.ll(n)["mean"])
    b = run.by_name[best]
    what = "Highest mean test log p(x)" if run.n_seeds > 1 else "Highest test log p(x), one seed"
    out.append(f"**{what}:** `{best}`, {pm(b['test_log_likelihood'], d)} nats per point "
               f"({b['estimator']}; {b['n_converged']} of {b['n_seeds']} seeds converged).")
    others = [n for n in run.methods if n != run.baseline and n in run.diffs]
    if run.n_seeds > 1 and others:
        better = [n for n in others if run.diffs[n]["se"] is not None
                  and run.diffs[n]["mean"] > 2 * run.diffs[n]["se"]]
        worse = [n for n in others if run.diffs[n]["se"] is not None
                 and run.diffs[n]["mean"] < -2 * run.diffs[n]["se"]]
        within = [n for n in others if n not in better and n not in worse]
        out.append(f"**Against `{run.baseline}`, paired by seed over {run.n_seeds} seeds:** better by more than two "
                   f"paired standard errors: {names(better)}; worse by more than two: {names(worse)}; "
                   f"not separated from it at two standard errors: {names(within)}.")
        if worse:
            w = min(worse, key=lambda n: run.diffs[n]["mean"])
            out.append(f"**The largest paired deficit** is `{w}`'s, "
                       f"{pm(run.diffs[w], d, key='se', sign=True)} nats per point.")
    if run.closed_form is not None:
        gaps = {n: run.gap(n)["mean"] for n in run.methods}
        lo, hi = min(gaps, key=gaps.get), max(gaps, key=gaps.get)
        close = [n for n in run.methods if abs(gaps[n]) <= 0.01]
        out.append(f"**Against the known answer:** the closed-form maximum likelihood scores "
                   f"{num(run.closed_form, d)} on the test split. Mean gaps to it run from {num(gaps[lo], d)} "
                   f"(`{lo}`) to {num(gaps[hi], d)} (`{hi}`) nats per point; within 0.01 nats of it: {names(close)}. "
                   "A negative gap is a fit that scores above the training-set maximum on the test points, "
                   "which a fit to the training data can do by chance.")
    if run.ais:
        gaps = {n: run.ais_minus_iwae(n)["mean"] for n in run.methods if run.ais_minus_iwae(n)["n"]}
        if gaps:
            lo, hi = min(gaps, key=gaps.get), max(gaps, key=gaps.get)
            by_ais = sorted(gaps, key=lambda n: -run.ll(n)["mean"])
            by_iwae = sorted(gaps, key=lambda n: -run.iwae(n)["mean"])
            same = by_ais == by_iwae
            out.append(f"**AIS against each method's own IWAE bound:** AIS is higher by {num(gaps[lo], d)} (`{lo}`) "
                       f"to {num(gaps[hi], d)} (`{hi}`) nats per point on average, so the IWAE bound from q "
                       f"understates some methods more than others. Ranked by the IWAE bound the order is "
                       f"{' > '.join(f'`{n}`' for n in by_iwae)}; by AIS it is "
                       f"{' > '.join(f'`{n}`' for n in by_ais)}"
                       + (" (the same)." if same else " (different: judge these methods by AIS, not by the bound)."))
    un = run.unconverged()
    total = len(run.cmp["methods"])
    if un:
        listed = "; ".join(f"`{r['name']}` seed {r['seed']} ({r.get('stop_detail') or r.get('stop_reason')})"
                           for r in un)
        out.append(f"**Convergence:** {len(un)} of {total} runs did not converge: {listed}.")
    else:
        out.append(f"**Convergence:** all {total} runs (methods \u00d7 seeds) met their own convergence test "
                   "before a cap.")
    fast = min(run.methods, key=lambda n: run.by_name[n]["seconds"]["mean"])
    slow = max(run.methods, key=lambda n: run.by_name[n]["seconds"]["mean"])
    out.append(f"**Cost:** the fastest method per seed was `{fast}` ({num(run.by_name[fast]['seconds']['mean'], 1)} s "
               f"mean), the slowest `{slow}` ({num(run.by_name[slow]['seconds']['mean'], 1)} s).")
    return out


def cautions(run: Run):
    out = []
    if run.n_seeds == 1:
        out.append("**One seed:** there is no spread between training runs and no paired standard error, so a "
                   "difference in this table mixes the method with its one initialisation and minibatch order. "
                   "Nothing here says one method is better than another by a margin you could rely on.")
    else:
        out.append(f"**± is not test error.** In the test log p(x) column it is the sd across {run.n_seeds} seeds "
                   "(training runs); in the Δ column it is the standard error of the paired per-seed differences. "
                   f"With {run.n_seeds} seeds a standard error is itself a rough estimate, so treat the "
                   "two-standard-error split above as a screen, not a test.")
    se = run.test_se()
    if se is not None and not run.exact:
        out.append(f"**Test-set error:** one run's test log p(x) has a standard error over the "
                   f"{run.cmp.get('n_test_scored', run.cmp['n_test'])} test points scored of about "
                   f"{num(se, run.digits)} nats (median over runs). The "
                   "paired differences share the test points, so they are tighter than that; unpaired numbers "
                   "from different runs are not.")
    if run.unconverged():
        secs = run.cmp["budget"].get("seconds")
        cap = f"the {secs:g} s cap" if secs else "a cap"
        out.append(f"**Unconverged rows ({DAGGER})** are where {cap} left them on this machine: they rank what "
                   "each method reaches in that time here, not where it would converge. A faster machine, or a "
                   "larger `--seconds`, can change that order.")
    steps = run.cmp.get("step_sizes", {})
    if not steps.get("grid"):
        out.append(f"**One step size:** every method that takes one trained with `optim.lr` = "
                   f"{run.cmp['config']['optim']['lr']:g} (no `--lr-grid`). A method that wants another step size "
                   "is at a disadvantage here; rerun with `--lr-grid` before reading a small difference as a "
                   "property of the method.")
    if run.cmp["yardstick"]["estimator"].startswith("IWAE"):
        out.append(f"**The curves are not the table.** The yardstick plots show {run.cmp['yardstick']['estimator']} "
                   "with each method's own q on validation points, which flatters the methods that train q as a "
                   "proposal" + ("; the table's test column is the like-for-like number." if run.exact or run.ais else
                                 "; so does the table's test column here, which is the same kind of bound."))
    if not run.exact and not run.ais:
        out.append("**IWAE from each method's own q** is a lower bound whose looseness depends on that q: it favours "
                   "methods that train q as a proposal (IWAE, RWS) over those that do not. `--final ais` gives "
                   "every method the same reference.")
    if run.ais:
        out.append("**AIS is an estimate, not the truth:** it is a stochastic lower bound on log p(x) whose bias "
                   "shrinks with more temperatures; see [How good is my log-likelihood estimate?]"
                   "(concepts/log-likelihood-estimates.md).")
    jobs = run.cmp.get("jobs", 1)
    out.append(f"**Seconds** are wall seconds of runs sharing {run.meta['machine']['cores']} cores "
               f"(`--jobs {jobs}`, possibly with other work on the machine): compare them within this table, "
               "not with another machine's.")
    out.append("**This data set and this architecture only.** A ranking here is not a ranking of the methods in "
               "general: the latent dimension, decoder and likelihood are the config's, and another model can "
               "reverse it.")
    return out


def section(name: str, data) -> list:
    title = RUN_SPECS[name][0]
    lines = [f"## {title}", ""]
    if data is None:
        reason = NOT_INSTALLED.get(name, "This run has not been generated yet.")
        return lines + [reason, "", "The command it would run:", "", "```bash", command_line(name), "```", ""]
    run = Run(data)
    cmp = run.cmp
    ys = cmp["yardstick"]
    lines += [ABOUT[name], "", "```bash", run.meta["command"], "```", "", machine_line(run.meta), ""]
    scored = cmp.get("n_test_scored", cmp["n_test"])
    subset = f", of which {scored} fixed rows score the test numbers (`--test-points`)" if scored != cmp["n_test"] \
        else ""
    lines += [f"- **Data:** `{cmp['config']['data']['name']}`, {cmp['n_train']} train / {cmp['n_val']} validation / "
              f"{cmp['n_test']} test points{subset}.",
              f"- **Model:** {model_line(cmp['config'])}.",
              f"- **Budget:** {cmp['budget']['description']}.",
              f"- **Seeds:** {run.n_seeds} ({', '.join(map(str, cmp['seeds']))}); the data split is the same for all.",
              f"- **Yardstick while training:** {ys['estimator']} log p(x) on {ys['points']} validation points.",
              f"- **Test log p(x):** {', '.join(run.estimators)}"
              + (" (closed form)." if run.exact else "."), ""]
    lines += table(run) + [""]
    if run.n_seeds > 1:
        legend = (f"Test log p(x) is mean {PM} sd over {run.n_seeds} seeds; the paired Δ is mean {PM} standard error "
                  f"of the per-seed differences against `{run.baseline}` (positive is better); epochs and seconds "
                  f"are mean {PM} sd.")
    else:
        legend = (f"One seed: every number is one training run, with no spread; Δ is the difference from "
                  f"`{run.baseline}` on the same test points (positive is better).")
    lines += [f"{legend} A {DAGGER} and a bold count mark a method with a run that stopped at a cap instead of "
              "converging.", ""]
    if run.ais:
        notes = [f"*IWAE from its own q* is IWAE-{cmp['budget']['eval_samples']} with each method's q(z|x) as "
                 "the proposal"]
        if "mcem" in run.methods:
            notes.append("`mcem` trains no encoder, so its q is a Normal per test point fitted by a 300-step E-step "
                         "with θ fixed")
        if "semi_amortized" in run.methods:
            notes.append("`semi_amortized`'s is its encoder's q before the per-point refinement")
        lines += ["; ".join(notes) + ". AIS starts from the same q and anneals to p(z|x).", ""]
    for plot in run.meta.get("plots", []):
        what = ("the yardstick against epochs" if "epoch" in plot else
                "the yardstick against training wall time" if "wall_time" in plot else
                "the final test log p(x) of each seed")
        lines += [f"![{title}: {what}](results/img/{plot})", ""]
    lines += ["### What to conclude", ""] + [f"- {c}" for c in conclusions(run)] + [""]
    lines += ["### What not to conclude", ""] + [f"- {c}" for c in cautions(run)] + [""]
    return lines


def load(directory: Path) -> dict:
    return {name: json.loads((directory / f"{name}.json").read_text()) if (directory / f"{name}.json").is_file()
            else None for name in RUN_SPECS}


def render(directory: Path = DATA) -> str:
    """docs/results.md from the JSONs in ``directory`` (docs/results/) alone."""
    runs = load(Path(directory))
    lines = ["# Which inference works best here?", "",
             "<!-- Generated by docs/make_results.py from docs/results/*.json: do not edit by hand. -->", "",
             "Each section below is one real `pyro-vae compare` run: every method trains until it converges or "
             "hits a cap (and says which), with seeds, and is judged on one yardstick and one test estimator "
             "of log p(x). [Reading a comparison](guide/compare.md) explains the columns; "
             "[EM-style inference](guide/em-style.md) explains `rws`, `wake_sleep`, `mcem` and `semi_amortized`.",
             "",
             "The page is generated: `docs/make_results.py` runs each command below, copies the trimmed "
             "`comparison.json` to `docs/results/<name>.json` and renders this page from those files alone "
             "(`--render` re-renders without training, `--only NAME` reruns one data set); "
             "`tests/test_results_page.py` checks that the page is exactly what the files give.", "",
             "| data set | run on | wall time | seeds | methods | runs converged |", "|---|---|---:|---:|---:|---:|"]
    for name, data in runs.items():
        title = RUN_SPECS[name][0]
        anchor = "#" + "".join(c for c in title.lower().replace(" ", "-") if c.isalnum() or c in "-_")
        if data is None:
            lines.append(f"| [{title}]({anchor}) | not run | | | | |")
            continue
        run = Run(data)
        rows = run.cmp["methods"]
        ok = sum(bool(r.get("converged")) for r in rows)
        lines.append(f"| [{title}]({anchor}) | {run.meta['started_utc']}, {run.meta['machine']['cores']} cores "
                     f"| {num(run.meta['wall_seconds'] / 60, 1)} min | {run.n_seeds} | {len(run.methods)} "
                     f"| {ok} of {len(rows)} |")
    lines.append("")
    for name, data in runs.items():
        lines += section(name, data)
    return "\n".join(lines).rstrip("\n") + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", help="comma-separated runs to redo, from: " + ", ".join(RUN_SPECS))
    p.add_argument("--render", action="store_true", help="only re-render docs/results.md from docs/results/*.json")
    p.add_argument("--collect", action="store_true",
                   help="re-copy finished runs from runs/results/ into docs/results/ (no training)")
    args = p.parse_args(argv)
    names = list(RUN_SPECS) if not args.only else args.only.split(",")
    unknown = [n for n in names if n not in RUN_SPECS]
    if unknown:
        p.error(f"--only: unknown run(s) {', '.join(unknown)}; choose from {', '.join(RUN_SPECS)}")
    if not args.render:
        for name in names:
            if args.collect:
                if (RUNS / name / "run_meta.json").is_file():
                    collect(name)
                continue
            if name == "fashion_mnist" and not fashion_installed():
                print("[make_results] fashion_mnist: Fashion-MNIST is not installed "
                      "(apt-get install dataset-fashion-mnist); keeping its committed data, if any", flush=True)
                continue
            run(name)
    PAGE.write_text(render(DATA))
    print(f"[make_results] wrote {PAGE}")


if __name__ == "__main__":
    main()
