"""The docs site builds with warnings as errors from the tree it is in, and its generated pages list what the code really has."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mkdocs  # noqa: F401  (the test extra installs the docs toolchain: a missing one must fail, not skip)
import mkdocstrings  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
# Text planted in the copy's source only: the site must show it, proving it was built from that copy
COPY_ONLY = {"docstring marker": "COPYONLYDOCSTRING", "config comment": "COPYONLYCOMMENT",
             "mkdocstrings": "COPYONLYAPI"}


def _load_hook():
    """docs/hooks.py as a module (its ``PACKAGE_PARENT`` says where the package sits in a tree)."""
    spec = importlib.util.spec_from_file_location("docs_hooks_under_test", ROOT / "docs" / "hooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _copy_tree(dest: Path) -> None:
    """The files git would commit (tracked, or new and not ignored) copied to ``dest``: a fresh checkout."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        if (ROOT / rel).is_file():  # a tracked file deleted in the working tree is not part of it
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)


def _plant(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text()
    new, count = re.subn(pattern, replacement, text, count=1, flags=re.M)
    assert count == 1, f"{path}: nothing matches {pattern!r}"
    path.write_text(new)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site built by ``mkdocs build --strict`` in a copy of the tree whose source differs from the installed one.

    The installed ``pyro_vae`` (this checkout) is importable in the build's process, so a hook that
    imported it instead of the copy's would render this checkout's text, or fail on its paths.
    """
    tree, out = tmp_path_factory.mktemp("tree"), tmp_path_factory.mktemp("site")
    _copy_tree(tree)
    package = tree / _load_hook().PACKAGE_PARENT.relative_to(ROOT) / "pyro_vae"
    # a module docstring shown by <!-- docstring: pyro_vae.baselines.export --> on guide/baselines
    _plant(package / "baselines" / "export.py", r'\A"""', f'"""{COPY_ONLY["docstring marker"]} ')
    # the comment on Config.seed, the "meaning" of the generated config table on guide/config
    _plant(package / "config.py", r"^(    seed: .*#)", rf"\1 {COPY_ONLY['config comment']}")
    # a module docstring rendered by mkdocstrings (``::: pyro_vae.config`` on reference/config)
    _plant(package / "config.py", r'\A"""', f'"""{COPY_ONLY["mkdocstrings"]} ')
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          capture_output=True, text=True, cwd=tree, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    for page in ("getting-started", "guide/config", "guide/components", "concepts/elbo-gradients", "examples"):
        assert (site / page / "index.html").is_file(), page


def test_components_page_lists_every_registered_component(site):
    from pyro_vae.components.catalog import ALL_REGISTRIES

    html = (site / "guide" / "components" / "index.html").read_text()
    for section, registry in ALL_REGISTRIES.items():
        for entry in registry:
            assert f"<code>{entry.name}</code>" in html, f"{section}: {entry.name}"


def test_config_page_lists_every_config_key(site):
    from pydantic import BaseModel

    from pyro_vae.config import Config

    html = (site / "guide" / "config" / "index.html").read_text()
    for name, field in Config.model_fields.items():
        ann = field.annotation
        keys = [f"{name}.{sub}" for sub in ann.model_fields] if isinstance(ann, type) and issubclass(ann, BaseModel) else [name]
        for key in keys:
            assert f"<code>{key}" in html, key


def test_cli_page_documents_every_command(site):
    from pyro_vae.cli import COMMANDS

    html = (site / "guide" / "cli" / "index.html").read_text()
    for name in COMMANDS:
        assert f"pyro-vae {name}" in html, name


def test_examples_page_lists_every_example(site):
    html = (site / "examples" / "index.html").read_text()
    for script in (ROOT / "examples").glob("*.py"):
        assert script.name in html, script.name


def test_evaluate_page_lists_every_compare_method(site):
    from pyro_vae.compare.methods import METHODS

    html = (site / "guide" / "evaluate" / "index.html").read_text()
    for entry in METHODS:
        assert f"<code>{entry.name}</code>" in html, entry.name


def test_site_is_built_from_its_own_tree_not_the_installed_package(site):
    pages = {"docstring marker": "guide/baselines", "config comment": "guide/config", "mkdocstrings": "reference/config"}
    for what, page in pages.items():
        assert COPY_ONLY[what] in (site / page / "index.html").read_text(), f"{what}: {page} shows the installed source"
    # <!-- source: ... --> names the copy's file relative to the copy, not a path into this checkout
    html = (site / "concepts" / "vae-and-em" / "index.html").read_text()
    assert str(ROOT) not in html and "pyro_vae/baselines/ppca.py" in html


def test_no_rest_markup_in_rendered_prose(site):
    """Docstrings are reST; the hook and its griffe extension turn them into Markdown before rendering."""
    leftover = re.compile(r"\.\. \w+::|::</p>|:(?:func|class|meth|mod|attr|data|math):|``")
    for page in site.rglob("index.html"):
        html = re.sub(r"<pre.*?</pre>", "", page.read_text(), flags=re.S)  # code listings show source as it is
        found = leftover.findall(html)
        assert not found, f"{page.relative_to(site)}: {found[:5]}"


def test_readme_cli_synopsis_lists_every_command_and_only_real_options():
    """The README keeps a short synopsis (every option is on the generated cli page): it may omit an
    option, never show one that does not exist, and names every command."""
    import argparse

    from pyro_vae.cli import COMMANDS, parser

    section = (ROOT / "README.md").read_text().split("## CLI reference", 1)[1]
    block = re.search(r"```\n(.*?)```", section, re.S).group(1)
    shown = dict(re.findall(r"^pyro-vae (\S+)(.*)$", block, re.M))
    assert set(shown) == set(COMMANDS)
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, synopsis in shown.items():
        real = {option for action in sub.choices[name]._actions for option in action.option_strings}
        assert set(re.findall(r"--[\w-]+", synopsis)) <= real, f"pyro-vae {name}: {synopsis}"
