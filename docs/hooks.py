"""MkDocs hook: replace markers in the docs with text generated from the code at build time.

``<!-- generated: NAME -->`` with NAME one of ``components`` (every registered component, the data
of :func:`pyro_vae.components.catalog.describe`), ``config`` (every key of :class:`pyro_vae.config.Config`),
``cli`` (the ``--help`` of every ``pyro-vae`` command), ``methods`` (every method ``pyro-vae
compare`` knows) and ``examples`` (every script under ``examples/``);
``<!-- source: pkg.module.name -->``: the current source of that function or class, with its file
and line numbers; ``<!-- docstring: pkg.module -->``: that object's docstring.

Everything is generated from the tree this file sits in, never from an installed copy of
``pyro_vae`` (see ``on_config``), and the reST in docstrings (``.. math::``, literal blocks,
roles, double backquotes) is turned into Markdown both here and, through ``RestToMarkdown``, in
the ``:::`` blocks that mkdocstrings renders.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import sys
import textwrap
import typing
from pathlib import Path

import griffe  # mkdocstrings' loader, which RestToMarkdown extends
from mkdocs.plugins import event_priority

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_PARENT = ROOT  # the folder holding pyro_vae/ in this tree: the one line to change if it moves

MARKER = re.compile(r"<!-- generated: (\w+) -->")
SOURCE = re.compile(r"<!-- source: ([\w.]+) -->")
DOCSTRING = re.compile(r"<!-- docstring: ([\w.]+) -->")
ROLE = re.compile(r":(?:func|class|meth|mod|attr|data|obj|exc|ref):`(~?)([^`]+)`")  # reST cross-reference
MATH = re.compile(r"(\s*)\.\. math::\s*(.*)$")  # reST display math: a formula on this line and/or indented below


def _import_from_tree() -> None:
    """Make ``import pyro_vae`` load this tree's copy, whichever copy is installed.

    mkdocs executes this file with its folder on ``sys.path`` and restores ``sys.path`` right after,
    so a module-level insert would be undone and every generator would import the installed package
    (another checkout: other docstrings, other source lines). A ``pyro_vae`` imported earlier in the
    process from elsewhere is dropped from ``sys.modules`` so that the next import finds this tree's.
    """
    path = str(PACKAGE_PARENT)
    if path in sys.path:
        sys.path.remove(path)
    sys.path.insert(0, path)
    loaded = sys.modules.get("pyro_vae")
    if loaded is not None and not _in_tree(loaded):
        for name in [n for n in sys.modules if n == "pyro_vae" or n.startswith("pyro_vae.")]:
            del sys.modules[name]
    importlib.invalidate_caches()
    import pyro_vae

    if not _in_tree(pyro_vae):  # e.g. an import hook placed before the path finder
        raise RuntimeError(f"docs/hooks.py: pyro_vae imports from {list(pyro_vae.__path__)}, not from {PACKAGE_PARENT}")


def _in_tree(package) -> bool:
    return all(Path(p).resolve().is_relative_to(PACKAGE_PARENT) for p in package.__path__)


@event_priority(100)  # before mkdocstrings' on_config, which creates its Python handler with its search paths
def on_config(config):
    """Point both the generators below and mkdocstrings' ``:::`` blocks at this tree's ``pyro_vae``."""
    _import_from_tree()
    config.plugins["mkdocstrings"].config.handlers.setdefault("python", {})["paths"] = [str(PACKAGE_PARENT)]
    return config


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
    from pyro_vae.registry import ComponentSpec

    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]

    def walk(model, prefix: str) -> None:
        comments = _field_comments(model)
        for name, field in model.model_fields.items():
            key = f"{prefix}{name}"
            ann = field.annotation
            # a section, walked key by key; a field typed as the bare spec base holds any registered component
            if isinstance(ann, type) and issubclass(ann, BaseModel) and ann is not ComponentSpec:
                doc = (inspect.getdoc(ann) or "").splitlines()[0]
                rows.append(f"| **`{key}`** | section | | {_esc(doc)} |")
                walk(ann, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            if isinstance(default, ComponentSpec):  # a component section
                rows.append(f"| `{key}.name` | component | `{default.name}` | one of the "
                            f"[registered components](components.md); its own keys sit beside `name` |")
                continue
            meaning = comments.get(name, "")
            rows.append(f"| `{key}` | {_type_name(ann)} | `{default!r}` | {_esc(meaning)} |")

    walk(Config, "")
    return "\n".join(rows) + "\n"


def components() -> str:
    """Every registry's entries with their keys, types and defaults (``pyro-vae components --markdown``)."""
    from pyro_vae.components.catalog import describe

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


def _indented_block(lines: list[str], start: int, indent: int) -> tuple[list[str], int]:
    """The lines from ``start`` indented deeper than ``indent`` (blank lines included), dedented, and the index after them."""
    end = start
    while end < len(lines) and (not lines[end].strip() or len(lines[end]) - len(lines[end].lstrip()) > indent):
        end += 1
    block = textwrap.dedent("\n".join(lines[start:end])).strip("\n")
    return (block.splitlines() if block else []), end


def _gap(out: list[str]) -> list[str]:
    """The blank line a Markdown block needs before it, unless ``out`` already ends with one."""
    return [""] if out and out[-1].strip() else []


def _inline(line: str) -> str:
    line = re.sub(r":math:`([^`]+)`", r"\\(\1\\)", line)
    line = ROLE.sub(lambda m: f"`{m.group(2).split('.')[-1] if m.group(1) else m.group(2)}`", line)
    return re.sub(r"``(.+?)``", r"`\1`", line)


def rst_to_markdown(text: str) -> str:
    r"""A docstring's reST as Markdown, for the Sphinx-style docstrings of ``pyro_vae``.

    ``.. math::`` (one line, or an indented block) becomes ``$$`` display math; a paragraph ending in
    ``::`` introduces the indented literal block after it, which becomes a fenced code block (the
    ``::`` becomes ``:``, or goes when a space or nothing precedes it, as in reST); ``:math:`x``` becomes
    ``\(x\)``; a cross-reference role ``:func:`x``` becomes `` `x` `` (``~`` keeps the last name);
    double backquotes become single ones. Literal blocks are left verbatim.
    """
    lines, out, i = text.splitlines(), [], 0
    while i < len(lines):
        line = lines[i]
        math = MATH.match(line)
        if math:
            indent = math.group(1)
            body, i = _indented_block(lines, i + 1, len(indent))
            formula = [math.group(2).strip()] if math.group(2).strip() else []
            out += [*_gap(out), f"{indent}$$", *(indent + f for f in formula + body), f"{indent}$$", ""]
            continue
        if line.rstrip().endswith("::") and not line.lstrip().startswith(".."):
            indent = line[: len(line) - len(line.lstrip())]
            head = line.rstrip()[:-2]
            head = head.rstrip() if not head.strip() or head.endswith(" ") else head + ":"
            if head.strip():
                out.append(_inline(head))
            body, i = _indented_block(lines, i + 1, len(indent))
            out += [*_gap(out), f"{indent}```text", *(indent + b if b else "" for b in body), f"{indent}```", ""]
            continue
        out.append(_inline(line))
        i += 1
    return "\n".join(out)


def docstring(dotted: str) -> str:
    """The docstring of a module, class or function as a quoted block, its reST made Markdown."""
    text = rst_to_markdown(inspect.getdoc(_resolve(dotted)) or "")
    return f"!!! quote \"`{dotted}`\"\n\n" + "\n".join(f"    {line}" if line else "" for line in text.splitlines()) + "\n"


class RestToMarkdown(griffe.Extension):
    """Griffe extension (``extensions`` of mkdocstrings' Python handler): ``rst_to_markdown`` on every docstring.

    Griffe's Sphinx parser reads the ``:param:`` fields but leaves the rest of the reST as it is, and
    Markdown would print ``.. math::``, ``::`` and the roles literally.
    """

    def on_object(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rst_to_markdown(obj.docstring.value)


def methods() -> str:
    """Every method ``pyro-vae compare`` can run (built-in SVI variants and those other modules register)."""
    from pyro_vae.compare.methods import METHODS

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
