"""The run directory: config, metrics, checkpoints, summary and plots of one training run.

Layout::

    DIR/config.yaml      the fully resolved config
    DIR/metrics.jsonl    one JSON object per epoch (nats per data point; higher ELBO is better)
    DIR/checkpoint.pt    parameters, optimizer and every RNG state, written atomically
    DIR/summary.json     final numbers and the per-site KL report
    DIR/plots/           PNG figures
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from .errors import RunDirError

CHECKPOINT_FORMAT = "pyro_vae.checkpoint/1"
OWN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "summary.json", "evaluation.json")
OWN_DIRS = ("plots",)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


class RunDir:
    """Paths and atomic I/O for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint = property(lambda self: self.path / "checkpoint.prev.pt")
    summary = property(lambda self: self.path / "summary.json")
    plots = property(lambda self: self.path / "plots")

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "RunDir":
        """Make an empty run directory; an existing non-empty one is refused unless ``overwrite``,
        and then only this project's own files in it are removed."""
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirError(f"--out {run.path}: exists and is not a directory")
        if run.path.is_dir() and any(run.path.iterdir()):
            if not overwrite:
                raise RunDirError(f"--out {run.path}: directory exists and is not empty; pass --overwrite or choose another --out")
            for name in OWN_FILES:
                (run.path / name).unlink(missing_ok=True)
            for name in OWN_DIRS:
                shutil.rmtree(run.path / name, ignore_errors=True)
        run.path.mkdir(parents=True, exist_ok=True)
        run.plots.mkdir(exist_ok=True)
        return run

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if not run.path.is_dir():
            raise RunDirError(f"{run.path}: run directory not found")
        if not run.config.is_file():
            raise RunDirError(f"{run.path}: not a run directory (no config.yaml)")
        return run

    def write_config(self, text: str) -> None:
        atomic_write_bytes(self.config, text.encode())

    def write_metrics(self, rows: List[Dict[str, Any]]) -> None:
        """Rewrite ``metrics.jsonl`` whole (atomically), so each epoch appears exactly once."""
        atomic_write_bytes(self.metrics, "".join(json.dumps(r) + "\n" for r in rows).encode())

    def read_metrics(self) -> List[Dict[str, Any]]:
        if not self.metrics.is_file():
            return []
        rows = []
        for i, line in enumerate(self.metrics.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise RunDirError(f"{self.metrics}: line {i} is not valid JSON") from None
        return rows

    def save_checkpoint(self, state: Dict[str, Any]) -> None:
        """Atomically replace ``checkpoint.pt``, keeping the previous one as ``checkpoint.prev.pt``."""
        buf = io.BytesIO()
        torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
        if self.checkpoint.exists():
            os.replace(self.checkpoint, self.previous_checkpoint)
        atomic_write_bytes(self.checkpoint, buf.getvalue())

    def load_checkpoint(self) -> Dict[str, Any]:
        """The newest readable checkpoint; a corrupt newest one falls back to the previous one."""
        errors = []
        for path in (self.checkpoint, self.previous_checkpoint):
            if not path.is_file():
                continue
            try:
                state = torch.load(path, map_location="cpu", weights_only=False)
            except Exception as err:  # torch raises many types for a truncated or corrupt file
                errors.append(f"{path.name} is corrupt ({err.__class__.__name__})")
                continue
            if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
                errors.append(f"{path.name} is not a pyro_vae checkpoint")
                continue
            state["_path"] = str(path)
            state["_problems"] = errors
            return state
        detail = "; ".join(errors) if errors else "no checkpoint.pt"
        raise RunDirError(f"{self.path}: no usable checkpoint ({detail})")

    def write_summary(self, summary: Dict[str, Any]) -> None:
        atomic_write_json(self.summary, summary)

    def read_json(self, name: str) -> Dict[str, Any]:
        path = self.path / name
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            raise RunDirError(f"{path}: not found") from None
        except json.JSONDecodeError:
            raise RunDirError(f"{path}: not valid JSON") from None
