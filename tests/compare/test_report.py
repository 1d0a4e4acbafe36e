"""A comparison's report as Markdown, figures and one self-contained HTML page, from hand-built report dicts."""

import math

import pytest

from pyro_vae.compare.html import html_report, markdown_to_html
from pyro_vae.compare.report import PLOTS, fmt, markdown, write_plots
from pyro_vae.compare.seeds import summarize

PNG = b"\x89PNG\r\n\x1a\n"
REF = -5.0


def _curve(final, epochs=6, none=False):
    """A yardstick curve approaching ``final`` (nats per point) from far below, one entry per epoch."""
    return [{"epoch": e, "wall_time": 0.5 * e + 0.1, "val_elbo": final - 1.0,
             "val_log_px": None if none else final - 100.0 * 0.3 ** e} for e in range(1, epochs + 1)]


def _row(name, seed, ll, elbo, converged=True, reason="plateau", detail="plateau at the floor step size",
         none_curve=False, se=None):
    extra = {"lr": 0.01, "final_lr": 0.0001, "grad_variance_encoder": 2.0, "grad_variance_decoder": 3.0}
    if se is not None:
        extra["test_log_likelihood_se"] = se
    return {"name": name, "seed": seed, "converged": converged, "stop_reason": reason, "stop_detail": detail,
            "train_elbo": elbo, "val_elbo": elbo, "val_log_px": None if none_curve else ll + 0.5,
            "test_log_likelihood": ll, "exact_log_likelihood": ll, "estimator": "exact", "test_elbo": elbo,
            "seconds": 2.0 + seed, "examples_per_second": 1000.0, "iterations": 60, "epochs": 6 + seed,
            "curve": _curve(ll + 0.5, 6 + seed, none_curve), "extra": extra}


EM_LL, EM_ELBO = [-10.0, -11.0, -12.0], [-10.0, -11.0, -12.0]
SVI_LL, SVI_ELBO = [-9.0, -10.0, -10.5], [-9.5, -10.75, -11.0]


def _report(rows, seeds, baseline="em"):
    return {"command": "pyro-vae compare examples/configs/ppca.yaml --methods em,svi --seeds 3",
            "config": {"data": {"name": "synthetic <ppca>", "n": 200}, "model": {"latent_dim": 2}},
            "budget": {"stop": "converged", "epochs": 50, "seconds": None, "eval_samples": 100, "grad_samples": 4,
                       "yardstick_samples": 100, "yardstick_points": 179, "description": "until converged, capped"},
            "seeds": seeds, "baseline": baseline,
            "yardstick": {"estimator": "exact", "points": 179, "samples": 100, "reference": REF,
                          "reference_kind": "closed-form maximum likelihood"},
            "n_train": 140, "n_val": 30, "n_test": 30, "methods": rows, "summary": summarize(rows, baseline)}


def _multi(svi_name="svi"):
    rows = [_row("em", s, ll, e, reason="tol", detail="log-likelihood change below the tolerance", se=0.2 + 0.1 * s)
            for s, ll, e in zip(range(3), EM_LL, EM_ELBO)]
    rows += [_row(svi_name, s, ll, e, se=0.4) for s, ll, e in zip(range(3), SVI_LL, SVI_ELBO)]
    rows[-1].update(converged=False, stop_reason="max_epochs", stop_detail="reached the cap of 50 epochs")
    return _report(rows, [0, 1, 2])


def _mean_sd(xs):
    mean = sum(xs) / len(xs)
    return mean, math.sqrt(sum((x - mean) ** 2 for x in xs) / (len(xs) - 1))


def test_fmt():
    assert fmt(None) == "n/a" and fmt(1.23456) == "1.235" and fmt(2.0, 1) == "2.0"


def test_markdown_shows_mean_and_sd_across_seeds():
    md = markdown(_multi())
    assert md.startswith("# Comparison: em, svi\n")
    assert "`pyro-vae compare examples/configs/ppca.yaml --methods em,svi --seeds 3`" in md
    assert "until converged, capped" in md and "3 (0, 1, 2)" in md and "mean ± sd across seeds" in md
    assert "closed-form maximum likelihood" in md and "179 validation points" in md and "-5.000" in md
    header = next(line for line in md.splitlines() if line.startswith("| method | test log p(x)"))
    assert header.split("|")[2].strip() == "test log p(x)"  # the table leads with it
    for name, ll, elbo in (("em", EM_LL, EM_ELBO), ("svi", SVI_LL, SVI_ELBO)):
        row = next(line for line in md.splitlines() if line.startswith(f"| {name}") or line.startswith(f"| **{name}"))
        for xs in (ll, elbo):
            mean, sd = _mean_sd(xs)
            assert f"{mean:.3f} ± {sd:.3f}" in row, (name, row)
    assert "-11.000 ± 1.000" in md and "-9.833 ± 0.764" in md  # the hand-computed numbers, literally
    assert "0.01 → 0.0001" in md


def test_markdown_marks_unconverged_rows():
    md = markdown(_multi())
    svi = next(line for line in md.splitlines() if line.startswith("| **svi** †"))
    assert "**NO** (2/3)" in svi and "plateau ×2, max_epochs ×1" in svi
    em = next(line for line in md.splitlines() if line.startswith("| em |"))
    assert "| yes |" in em and "tol ×3" in em
    assert "- svi, seed 2: max_epochs (reached the cap of 50 epochs)" in md
    assert "† **Not converged**" in md
    per_seed = [line for line in md.splitlines() if line.startswith("| **svi** † | 2 |")]
    assert len(per_seed) == 1 and "**NO**" in per_seed[0]


def test_markdown_paired_differences_have_standard_errors():
    md = markdown(_multi())
    assert "## Paired differences vs em" in md and "paired by seed" in md
    row = next(line for line in md.splitlines() if "| 3 (0, 1, 2) |" in line)
    for a, b in ((SVI_LL, EM_LL), (SVI_ELBO, EM_ELBO)):
        d = [x - y for x, y in zip(a, b)]
        mean, sd = _mean_sd(d)
        assert f"{mean:+.3f} ± {sd / math.sqrt(3):.3f}" in row, row
    assert "+1.167 ± 0.167" in row


def test_markdown_how_to_read_names_the_spread_and_the_test_set_error():
    md = markdown(_multi())
    assert "not test-set or Monte Carlo error" in md
    ses = sorted([0.2, 0.3, 0.4, 0.4, 0.4, 0.4])
    assert f"{(ses[2] + ses[3]) / 2:.3f} nats (median over the 6 runs" in md


def test_markdown_with_one_seed_has_no_spread():
    rows = [_row("em", 0, -10.0, -10.0, reason="tol"), _row("svi", 0, -9.25, -9.5)]
    md = markdown(_report(rows, [0]))
    assert "one seed: no spread" in md and "±" not in md.split("## Per seed")[0].replace("mean ± standard", "")
    assert "| -9.250 |" in md
    row = next(line for line in md.splitlines() if line.endswith("| 1 seed |"))
    assert "+0.750" in row and "+0.500" in row


def test_plots_are_written(tmp_path):
    paths = write_plots(_multi(), tmp_path)
    assert [p.name for p in paths] == list(PLOTS)
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(PNG) and len(data) > 1000


def test_plots_with_one_seed_and_a_method_without_a_curve(tmp_path):
    rows = [_row("vem", 0, -10.0, -10.5, none_curve=True), _row("svi", 0, -9.0, -9.5, converged=False,
                                                                  reason="seconds", detail="reached 5 s")]
    report = _report(rows, [0], baseline="vem")
    for directory in (tmp_path / "one", tmp_path / "none"):
        directory.mkdir()
    paths = write_plots(report, tmp_path / "one")
    assert all(p.read_bytes().startswith(PNG) for p in paths)
    assert "scored at the end only" in markdown(report) and "vem" in markdown(report).split("end only")[1]
    nothing = _report([_row("vem", 0, -10.0, -10.5, none_curve=True)], [0], baseline="vem")
    assert all(p.read_bytes().startswith(PNG) for p in write_plots(nothing, tmp_path / "none"))


def test_html_is_self_contained_and_escaped(tmp_path):
    report = _multi(svi_name="svi<b>")
    md = markdown(report)
    page = html_report(report, md, write_plots(report, tmp_path))
    assert page.startswith("<!DOCTYPE html>") and page.count('src="data:image/png;base64,') == 3
    assert 'src="http' not in page and "<link" not in page and "<script" not in page
    assert "<pre>pyro-vae compare examples/configs/ppca.yaml --methods em,svi --seeds 3</pre>" in page
    assert "synthetic &lt;ppca&gt;" in page and "latent_dim: 2" in page
    assert "svi&lt;b&gt;" in page and "svi<b>" not in page
    assert '<tr class="unconverged">' in page and "<strong>NO</strong> (2/3)" in page
    assert "<td class=\"num\">-11.000 ± 1.000</td>" in page


@pytest.mark.parametrize("text, expected", [
    ("a **b** `c|<d>` *e*", "<p>a <strong>b</strong> <code>c|&lt;d&gt;</code> <em>e</em></p>"),
    ("# T\n\n- x\n- y", "<h1>T</h1>\n<ul>\n<li>x</li>\n<li>y</li>\n</ul>"),
    ("| a | b |\n|---|---:|\n| x \\| y | 1 |",
     '<table>\n<thead><tr><th>a</th><th class="num">b</th></tr></thead>\n<tbody>\n'
     '<tr><td>x | y</td><td class="num">1</td></tr>\n</tbody>\n</table>'),
])
def test_markdown_subset_converter(text, expected):
    assert markdown_to_html(text) == expected
