"""docs/results.md ("Which inference works best here?") is exactly what docs/make_results.py renders from the
committed docs/results/*.json, so every number it quotes comes from a real `pyro-vae compare` run.

No training: the page is re-rendered from the JSONs (milliseconds) and compared with the committed page.
After rerunning the comparisons (`.venv/bin/python docs/make_results.py`), commit the page and the JSONs together.
"""

import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest

from pyro_vae import cli
from pyro_vae.compare.methods import METHODS

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DATA = DOCS / "results"
PAGE = DOCS / "results.md"


def _script():
    spec = importlib.util.spec_from_file_location("make_results", DOCS / "make_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_results = _script()
COMMITTED = sorted(DATA.glob("*.json"))


def test_the_page_is_what_the_committed_data_renders():
    assert PAGE.read_text() == make_results.render(DATA), (
        "docs/results.md differs from what docs/make_results.py renders from docs/results/*.json: "
        "run `.venv/bin/python docs/make_results.py --render` (and commit the page with its data)")


def test_there_is_data_for_the_datasets_that_need_no_download():
    assert {p.stem for p in COMMITTED} >= {"ppca", "digits"}
    assert {p.stem for p in COMMITTED} <= set(make_results.RUN_SPECS)


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_each_json_has_what_the_page_needs(path):
    data = json.loads(path.read_text())
    meta, cmp = data["run"], data["comparison"]
    for key in ("name", "title", "command", "started_utc", "wall_seconds", "machine", "git_commit", "plots"):
        assert key in meta, key
    for key in ("cores", "cpu", "platform", "python", "torch", "pyro", "omp_num_threads"):
        assert key in meta["machine"], key
    assert meta["name"] == path.stem and meta["command"] == make_results.command_line(path.stem)
    for key in ("config", "budget", "yardstick", "seeds", "n_train", "n_val", "n_test", "summary", "methods",
                "step_sizes"):
        assert key in cmp, key
    summary = cmp["summary"]
    names = [m["name"] for m in summary["methods"]]
    assert summary["baseline"] in names
    for m in summary["methods"]:
        for key in ("n_seeds", "n_converged", "estimator", "test_log_likelihood", "epochs", "seconds"):
            assert key in m, (m["name"], key)
        assert m["n_seeds"] == len(cmp["seeds"])  # every method ran every seed
    others = {d["name"] for d in summary["differences"] if d["metric"] == "test_log_likelihood"}
    assert others == set(names) - {summary["baseline"]}
    for row in cmp["methods"]:
        assert "curve" not in row  # trimmed: the plots carry the curves
        for key in ("name", "seed", "converged", "test_log_likelihood", "estimator", "extra"):
            assert key in row, (row.get("name"), key)
    if path.stem == "ppca":  # the known answer the gaps are taken against
        assert all(m["estimator"] == "exact" for m in summary["methods"])
        assert any("closed_form_test_log_likelihood" in r["extra"] for r in cmp["methods"])
    if path.stem == "digits":  # scored by AIS, with each method's own IWAE beside it
        assert all(m["estimator"].startswith("AIS") for m in summary["methods"])
        assert all("test_iwae" in r["extra"] for r in cmp["methods"])


def test_the_committed_data_stays_small():
    total = sum(p.stat().st_size for p in DATA.rglob("*") if p.is_file())
    assert total < 1.5e6, f"docs/results/ holds {total / 1e6:.2f} MB; trim the JSONs or the plots"


def test_every_command_on_the_page_parses_with_the_real_cli():
    commands = re.findall(r"```bash\n(.*?)\n```", PAGE.read_text(), re.S)
    assert len(commands) == len(make_results.RUN_SPECS)
    parser = cli.parser()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["pyro-vae", "compare"], command
        args = parser.parse_args(argv[1:])
        for method in args.methods.split(","):
            assert method in METHODS.names(), method
        if args.config:
            assert (ROOT / args.config).is_file(), args.config
        assert args.out == f"runs/results/{Path(args.out).name}"


def test_every_image_on_the_page_exists():
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", PAGE.read_text())
    assert images, "the page shows the yardstick plots"
    for image in images:
        assert (DOCS / image).is_file(), image
    committed = {p.name for p in (DATA / "img").glob("*.png")}
    assert committed == {Path(i).name for i in images}, "an image is committed but not shown, or the reverse"


def test_the_page_is_in_the_nav_and_linked_from_home():
    mkdocs = (ROOT / "mkdocs.yml").read_text()
    assert "Which inference works best here?" in mkdocs and "results.md" in mkdocs
    assert "make_results.py" in mkdocs  # excluded from the built site
    assert "results.md" in (DOCS / "index.md").read_text()


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: p.stem)
def test_the_summary_the_page_quotes_is_the_mean_of_the_seed_rows(path):
    cmp = json.loads(path.read_text())["comparison"]
    for m in cmp["summary"]["methods"]:
        rows = [r for r in cmp["methods"] if r["name"] == m["name"]]
        values = [r["test_log_likelihood"] for r in rows]
        assert m["test_log_likelihood"]["mean"] == pytest.approx(sum(values) / len(values), abs=1e-9)
        assert m["n_converged"] == sum(bool(r["converged"]) for r in rows)
        assert {r["estimator"] for r in rows} == {m["estimator"]}


def test_without_fashion_mnist_data_the_page_says_it_was_not_installed(tmp_path):
    for name in ("ppca", "digits"):
        (tmp_path / f"{name}.json").write_text((DATA / f"{name}.json").read_text())
    page = make_results.render(tmp_path)
    fashion = page[page.index("## Fashion-MNIST"):]
    assert "was not installed" in fashion and "not run" in page
    assert make_results.command_line("fashion_mnist") in fashion
