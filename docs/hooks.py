"""MkDocs hook: replace markers in the docs with text generated from the code at build time.

``<!-- generated: NAME -->`` with NAME one of ``components`` (every registered component, the data
of :func:`pyro_vae.components.describe`), ``config`` (every key of :class:`pyro_vae.config.Config`),
``cli`` (the ``--help`` of every ``pyro-vae`` command), ``methods`` (every method ``pyro-vae
compare`` knows) and ``examples`` (every script under ``examples/``);
``<!-- source: pkg.module.name -->``: the current source of that function or class, with its file
and line numbers; ``<!-- docstring: pkg.module -->``: that object's docstring.
"""

from __future__ import annotations

import ast
import inspect
import re
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))  # build from the source tree even without `pip install -e .`

MARKER = re.compile(r"<!-- generated: (\w+) -->")
SOURCE = re.compile(r"<!-- source: ([\w.]+) -->")
DOCSTRING = re.compile(r"<!-- docstring: ([\w.]+) -->")


def _field_comments(cls) -> dict:
    """``{field: comment}`` from the ``name: type = default  # comment`` lines of a pydantic class."""
    comments = {}
    for line in inspect.getsource(cls).splitlines():
        m = re.match(r"\s+(\w+)\s*:[^#]*#\s*(.+)$", line)
        if m:
            comments[m.group(1)] = m.group(2).strip()
    return comments


def _esc(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|")


def _type_name(annotation) -> str:
    text = getattr(annotation, "__name__", None) if not typing.get_args(annotation) else None
    text = text or str(annotation).replace("typing.", "")
    text = re.sub(r"Annotated\[(\w+), Gt\(gt=0\)\]", r"\1 > 0", text)
    text = re.sub(r"Optional\[(.*)\]$", r"\1 or None", text)
    return _esc(text)


def config_table() -> str:
    """Every config key with its type, default and meaning, walked from the pydantic models."""
    from pydantic import BaseModel

    from pyro_vae.config import Config

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model, prefix: str) -> None:
        comments = _field_comments(model)
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                doc = (inspect.getdoc(ann) or "").splitlines()[0]
                rows.append(f"| **`{key}`** | section | | {_esc(doc)} |")
                walk(ann, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, dict) and "name" in default:  # a component section
                rows.append(f"| `{key}.name` | component | `{default['name']}` | one of the "
                            f"[registered components](components.md); its own keys sit beside `name` |")
                continue
            meaning = comments.get(name, "")
            rows.append(f"| `{key}` | {_type_name(ann)} | `{default!r}` | {_esc(meaning)} |")

    walk(Config, "")
    return "\n".join(rows) + "\n"


def components() -> str:
    """Every registry's entries with their keys, types and defaults (``pyro-vae components --markdown``)."""
    from pyro_vae.components import describe

    return describe(markdown=True, heading="##")


def cli() -> str:
    """``pyro-vae --help`` and the help of every registered command, in the order of ``COMMANDS``."""
    from pyro_vae import cli as cli_module

    parser = cli_module.parser()
    out = ["## `pyro-vae`", "", "```text", parser.format_help().replace("pyro-vae:", "pyro-vae"), "```", ""]
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name in cli_module.COMMANDS:
        out += [f"## `pyro-vae {name}`", "", "```text", sub.choices[name].format_help().rstrip(), "```", ""]
    return "\n".join(out)


def examples() -> str:
    """One row per ``examples/*.py``: its name and the first line of its docstring."""
    rows = ["| script | what it shows |", "|---|---|"]
    for path in sorted((ROOT / "examples").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        first = doc.strip().splitlines()[0] if doc.strip() else ""
        rows.append(f"| `examples/{path.name}` | {first} |")
    return "\n".join(rows) + "\n"


def _resolve(dotted: str):
    """The module, class or function named ``dotted`` (modules need no ``__init__.py``)."""
    import importlib

    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):  # longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def source(dotted: str) -> str:
    """The current source of a function or class, with its file and line numbers (cannot drift)."""
    obj = _resolve(dotted)
    lines, first = inspect.getsourcelines(obj)
    path = Path(inspect.getsourcefile(obj)).resolve().relative_to(ROOT)
    return (f"`{path}`, lines {first}-{first + len(lines) - 1}:\n\n"
            f"```python linenums=\"{first}\"\n{''.join(lines).rstrip()}\n```\n")


def docstring(dotted: str) -> str:
    """The docstring of a module, class or function as a quoted block (RST ``.. math::`` made display math)."""
    text = inspect.getdoc(_resolve(dotted)) or ""
    text = re.sub(r"\.\. math::\s*(.+)", lambda m: f"\n$$\n{m.group(1).strip()}\n$$\n", text)
    text = re.sub(r":math:`([^`]+)`", r"\\(\1\\)", text)
    return f"!!! quote \"`{dotted}`\"\n\n" + "\n".join(f"    {line}" if line else "" for line in text.splitlines()) + "\n"


def methods() -> str:
    """Every method ``pyro-vae compare`` can run (built-in SVI variants and those other modules register)."""
    from pyro_vae.methods import METHODS, load_method_modules

    load_method_modules()
    rows = ["| method | what it trains |", "|---|---|"]
    rows += [f"| `{entry.name}` | {_esc(entry.summary)} |" for entry in METHODS]
    return "\n".join(rows) + "\n"


GENERATORS = {"components": components, "config": config_table, "cli": cli, "examples": examples,
              "methods": methods}


def on_page_markdown(markdown: str, page, config, files) -> str:
    def replace(m: re.Match) -> str:
        name = m.group(1)
        if name not in GENERATORS:
            raise ValueError(f"{page.file.src_path}: unknown marker 'generated: {name}'")
        return GENERATORS[name]()

    markdown = SOURCE.sub(lambda m: source(m.group(1)), MARKER.sub(replace, markdown))
    return DOCSTRING.sub(lambda m: docstring(m.group(1)), markdown)
