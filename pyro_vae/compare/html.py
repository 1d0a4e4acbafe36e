"""A comparison as one self-contained HTML page: its tables, figures (inline PNGs) and config, nothing fetched.

:func:`html_report` converts the Markdown of :func:`pyro_vae.compare.report.markdown` with a small converter for
the subset that page uses (headings, paragraphs, bullet lists, pipe tables, bold, emphasis and inline code), so
the HTML and the Markdown say the same thing; every text is escaped. Table rows holding the not-converged marker
get the ``unconverged`` class and are highlighted.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path
from typing import Any, List, Mapping, Sequence

import yaml

from pyro_vae.compare.report import DAGGER

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 76rem; margin: 2rem auto;
       padding: 0 1rem; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8rem 0; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.55rem; }
th { background: #f2f2f2; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.unconverged td { background: #fde4e4; }
pre { background: #f6f6f6; padding: 0.7rem; overflow-x: auto; font-size: 0.85rem; }
code { background: #f2f2f2; padding: 0 0.2rem; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85rem; color: #555; }
"""
CAPTIONS = {
    "yardstick_epoch.png": "Nats below the yardstick's reference against epoch (log scale).",
    "yardstick_wall_time.png": "Nats below the yardstick's reference against training wall time (log scale).",
    "final_log_likelihood.png": "Final test log p(x) per method: each seed a dot, mean \u00b1 sd across seeds.",
}
_CELL_SPLIT = re.compile(r"(?<!\\)\|")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_EMPH = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def inline(text: str) -> str:
    """One line of Markdown as escaped HTML: ```code```, ``**bold**`` and ``*emphasis*``."""
    parts = text.split("`")
    out = []
    for i, part in enumerate(parts):
        if i % 2 and i < len(parts) - 1:
            out.append(f"<code>{html.escape(part)}</code>")
        else:
            piece = html.escape(part if i % 2 == 0 else "`" + part)
            out.append(_EMPH.sub(r"<em>\1</em>", _BOLD.sub(r"<strong>\1</strong>", piece)))
    return "".join(out)


def _cells(line: str) -> List[str]:
    line = line.strip()
    if line.startswith("|"):
        line = line[1:]
    if line.endswith("|") and not line.endswith("\\|"):
        line = line[:-1]
    return [c.strip().replace("\\|", "|") for c in _CELL_SPLIT.split(line)]


def _table(lines: Sequence[str]) -> str:
    head = _cells(lines[0])
    rule = _cells(lines[1]) if len(lines) > 1 and set(lines[1]) <= set("|-: ") else None
    body = lines[2:] if rule else lines[1:]
    right = [bool(rule and i < len(rule) and rule[i].endswith(":")) for i in range(len(head))]

    def cell(tag: str, i: int, text: str) -> str:
        cls = ' class="num"' if i < len(right) and right[i] else ""
        return f"<{tag}{cls}>{inline(text)}</{tag}>"

    out = ["<table>", "<thead><tr>" + "".join(cell("th", i, c) for i, c in enumerate(head)) + "</tr></thead>",
           "<tbody>"]
    for line in body:
        cls = ' class="unconverged"' if DAGGER in line else ""
        out.append(f"<tr{cls}>" + "".join(cell("td", i, c) for i, c in enumerate(_cells(line))) + "</tr>")
    return "\n".join(out + ["</tbody>", "</table>"])


def markdown_to_html(text: str) -> str:
    """The subset of Markdown :func:`~pyro_vae.compare.report.markdown` writes, as HTML."""
    out: List[str] = []
    block: List[str] = []
    kind = ""

    def flush():
        nonlocal block, kind
        if block:
            if kind == "table":
                out.append(_table(block))
            elif kind == "list":
                out.append("<ul>\n" + "\n".join(f"<li>{inline(b)}</li>" for b in block) + "\n</ul>")
            else:
                out.append(f"<p>{inline(' '.join(block))}</p>")
        block, kind = [], ""

    for raw in text.splitlines():
        line = raw.rstrip()
        heading = re.match(r"^(#{1,6})\s+(.*)$", line)
        new = ("heading" if heading else "" if not line.strip() else "table" if line.lstrip().startswith("|")
               else "list" if re.match(r"^\s*[-*]\s+", line) else "para")
        if new != kind or new in ("heading", ""):
            flush()
        if heading:
            level = len(heading.group(1))
            out.append(f"<h{level}>{inline(heading.group(2))}</h{level}>")
        elif new:
            kind = new
            block.append(re.sub(r"^\s*[-*]\s+", "", line) if new == "list" else line.strip())
    flush()
    return "\n".join(out)


def _figure(path: Path) -> str:
    path = Path(path)
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = CAPTIONS.get(path.name, path.name)
    return (f'<figure><img alt="{html.escape(path.name)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_report(report: Mapping[str, Any], markdown_text: str, plots: Sequence[Path]) -> str:
    """One self-contained HTML page of a comparison: title, the command that reproduces it, the tables of
    ``markdown_text`` (the output of :func:`~pyro_vae.compare.report.markdown`), every plot embedded as a
    base64 PNG, and the config as YAML. Nothing on the page is fetched from anywhere."""
    body = markdown_to_html(markdown_text)
    title_match = re.match(r"^<h1>(.*?)</h1>\n?", body)
    if title_match:
        title_html, body = title_match.group(0), body[title_match.end():]
        title = html.unescape(re.sub(r"<[^>]+>", "", title_match.group(1)))
    else:
        title = "Comparison"
        title_html = f"<h1>{html.escape(title)}</h1>\n"
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             '<meta name="viewport" content="width=device-width, initial-scale=1">',
             f"<title>{html.escape(title)}</title>", f"<style>{STYLE}</style>", "</head>", "<body>",
             title_html.rstrip()]
    if report.get("command"):
        parts += ["<p>Reproduce with:</p>", f"<pre>{html.escape(str(report['command']))}</pre>"]
    parts.append(body)
    if plots:
        parts.append("<h2>Figures</h2>")
        parts += [_figure(p) for p in plots]
    if report.get("config") is not None:
        plain = json.loads(json.dumps(report["config"], default=str))  # tuples and paths as YAML can hold them
        config = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
        parts += ["<h2>Config</h2>", f"<pre>{html.escape(config)}</pre>"]
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"
