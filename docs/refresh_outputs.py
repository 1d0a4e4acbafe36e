"""Rerun every docs snippet and rewrite the output quoted on its page (then re-read the page's prose!).

    .venv/bin/python docs/refresh_outputs.py [SNIPPET_NAME ...]

tests/test_docs_snippets.py fails when a snippet's printed numbers drift from its page's quote;
after a deliberate change to the code, this updates the quotes. The sentences around a quote
interpret its numbers, so read them again after refreshing.
"""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
QUOTE = re.compile(r"(<!-- output: (\S+) -->\s*```text\n)(.*?)(```)", re.S)


def main(names) -> None:
    for page in sorted((ROOT / "docs").rglob("*.md")):
        text = page.read_text()

        def rerun(m: re.Match) -> str:
            snippet = ROOT / m.group(2)
            if names and snippet.stem not in names:
                return m.group(0)
            out = subprocess.run([sys.executable, str(snippet)], capture_output=True, text=True, check=True).stdout
            print(f"{page.relative_to(ROOT)}: refreshed the output of {m.group(2)}")
            return m.group(1) + out.rstrip("\n") + "\n" + m.group(4)

        new = QUOTE.sub(rerun, text)
        if new != text:
            page.write_text(new)


if __name__ == "__main__":
    main(sys.argv[1:])
