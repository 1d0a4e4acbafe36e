"""Every script in examples/ runs under CI=true and writes the plots it says it wrote."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = sorted((Path(__file__).resolve().parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs_and_writes_its_plots(script, tmp_path):
    env = {**os.environ, "CI": "true", "MPLBACKEND": "Agg"}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # every figure path the script printed (with a directory: a bare name inside a printed report is a link)
    plots = re.findall(r"[^\s,:'\"()\[\]]*/[^\s,:'\"()\[\]]+\.(?:png|pdf|svg)\b", proc.stdout)
    assert plots, f"{script.name} does not print where its plots are:\n{proc.stdout}"
    for path in plots:
        assert (tmp_path / path).is_file() and (tmp_path / path).stat().st_size > 0, path
