"""Every docs snippet runs, and prints the numbers its concept page quotes."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SNIPPETS = sorted((DOCS / "snippets").glob("*.py"))
QUOTE = re.compile(r"<!-- output: (\S+) -->\s*```text\n(.*?)```", re.S)
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?")


def quoted_outputs():
    """``{snippet path: the output quoted on its page}`` over every docs page."""
    found = {}
    for page in DOCS.rglob("*.md"):
        for path, text in QUOTE.findall(page.read_text()):
            found[path] = (page, text)
    return found


def tokens(text):
    """Split text into (words, numbers): words must match exactly, numbers within tolerance."""
    numbers = NUMBER.findall(text)
    return NUMBER.sub("#", " ".join(text.split())), numbers


def close(printed: str, quoted: str) -> bool:
    """Same to 0.1% or to 2 units of the last quoted digit, whichever is looser.

    The snippets fix every seed and run single-threaded, so on the same torch build and CPU they print
    identical text; the tolerance only absorbs float32 rounding differences between CPUs/BLAS kernels,
    which a few hundred training steps can amplify in the last printed digit.
    """
    a, b = float(printed), float(quoted)
    decimals = len(quoted.split(".")[1].split("e")[0]) if "." in quoted else 0
    return abs(a - b) <= max(1e-3 * abs(b), 2 * 10.0 ** -decimals)


def test_every_snippet_is_quoted_on_a_page():
    quoted = quoted_outputs()
    missing = [p.name for p in SNIPPETS if str(p.relative_to(ROOT)) not in quoted]
    assert SNIPPETS and not missing, f"snippets without a quoted output on any page: {missing}"


def test_tolerance_rejects_a_changed_number():
    assert close("-21.1169", "-21.1169") and not close("-21.1469", "-21.1169")
    assert tokens("ELBO -25.49 +- 0.02") == ("ELBO # +- #", ["-25.49", "0.02"])


@pytest.mark.parametrize("snippet", SNIPPETS, ids=lambda p: p.stem)
def test_snippet_prints_the_quoted_numbers(snippet, tmp_path):
    page, quoted = quoted_outputs()[str(snippet.relative_to(ROOT))]
    env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    words_out, numbers_out = tokens(proc.stdout)
    words_quoted, numbers_quoted = tokens(quoted)
    assert words_out == words_quoted, f"{page.name}: the printed text differs from the quote:\n{proc.stdout}"
    bad = [(o, q) for o, q in zip(numbers_out, numbers_quoted) if not close(o, q)]
    assert not bad, f"{page.name}: printed vs quoted numbers differ: {bad}\n{proc.stdout}"
