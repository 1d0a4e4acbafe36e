"""The docs site builds with warnings as errors, and its generated pages list what the code really has."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import mkdocs  # noqa: F401  (the test extra installs the docs toolchain: a missing one must fail, not skip)
import mkdocstrings  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_site_builds_strictly(site):
    assert (site / "index.html").is_file()
    for page in ("getting-started", "guide/config", "guide/components", "concepts/elbo-gradients", "examples"):
        assert (site / page / "index.html").is_file(), page


def test_components_page_lists_every_registered_component(site):
    from pyro_vae.components import ALL_REGISTRIES

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
    from pyro_vae.methods import METHODS, load_method_modules

    load_method_modules()
    html = (site / "guide" / "evaluate" / "index.html").read_text()
    for entry in METHODS:
        assert f"<code>{entry.name}</code>" in html, entry.name
