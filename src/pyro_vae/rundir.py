"""The run directory: config, metrics, checkpoints, summary and plots of one training run.

Layout::

    DIR/config.yaml      the fully resolved config
    DIR/metrics.jsonl    one JSON object per epoch (nats per data point; higher ELBO is better)
    DIR/checkpoint.pt    parameters, optimizer and every RNG state, written atomically
    DIR/summary.json     final numbers and the per-site KL report
    DIR/plots/           PNG figures
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from .errors import RunDirError

CHECKPOINT_FORMAT = "pyro_vae.checkpoint/2"
# A checkpoint is one header line ``MAGIC <sha256 of payload> <payload bytes>`` and a torch.save payload,
# so truncation (length) and corruption (checksum) are detected before unpickling anything.
CHECKPOINT_MAGIC = b"PYRO_VAE_CHECKPOINT"
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


class CheckpointError(Exception):
    """Why a checkpoint file cannot be used (completes the sentence "checkpoint.pt ...")."""


def encode_checkpoint(state: Dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buf)
    payload = buf.getvalue()
    header = b"%s %s %d\n" % (CHECKPOINT_MAGIC, hashlib.sha256(payload).hexdigest().encode(), len(payload))
    return header + payload


def decode_checkpoint(data: bytes) -> Dict[str, Any]:
    """Check the header, length and checksum, then unpickle with ``weights_only`` (tensors and plain data only)."""
    header, _, payload = data.partition(b"\n")
    parts = header.split(b" ")
    if len(parts) != 3 or parts[0] != CHECKPOINT_MAGIC or not parts[2].isdigit():
        raise CheckpointError("is not a pyro_vae checkpoint" if data else "is empty")
    if len(payload) != int(parts[2]):
        raise CheckpointError(f"is truncated ({len(payload)} of {int(parts[2])} bytes)")
    if hashlib.sha256(payload).hexdigest().encode() != parts[1]:
        raise CheckpointError("is corrupt (checksum mismatch)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a payload it cannot read
        raise CheckpointError(f"cannot be read ({err.__class__.__name__})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"has an unknown format (expected {CHECKPOINT_FORMAT})")
    return state


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


class RunDir:
    """Paths and atomic I/O for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._current_is_good = True  # False after falling back: a corrupt checkpoint.pt must not become .prev

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

    def remove_stale_temporaries(self) -> None:
        """Delete the temporary files of atomic writes that a killed process left behind (only ours)."""
        for tmp in self.path.glob(".*.tmp"):
            if any(tmp.name.startswith(f".{name}.") for name in OWN_FILES + ("checkpoint",)):
                tmp.unlink(missing_ok=True)

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
        """Atomically replace ``checkpoint.pt``, keeping the previous good one as ``checkpoint.prev.pt``.

        The new file is complete on disk (written, flushed, fsynced) before anything is renamed, and
        the old one becomes ``.prev`` through a hard link, so ``checkpoint.pt`` is whole at every moment
        (renaming it away first would leave a window without it: ext4 may flush on a replacing rename).
        """
        data = encode_checkpoint(state)
        fd, tmp = tempfile.mkstemp(prefix=".checkpoint.", suffix=".tmp", dir=self.path)
        link = tmp[: -len(".tmp")] + ".prev.tmp"
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            if self._current_is_good and self.checkpoint.exists():
                try:
                    os.link(self.checkpoint, link)
                    os.replace(link, self.previous_checkpoint)
                except OSError:  # a filesystem without hard links: rename (briefly no checkpoint.pt; .prev is whole)
                    os.replace(self.checkpoint, self.previous_checkpoint)
            os.replace(tmp, self.checkpoint)
            self._current_is_good = True
        except BaseException:
            for path in (tmp, link):
                if os.path.exists(path):
                    os.unlink(path)
            raise

    def load_checkpoint(self, quiet: bool = False) -> Dict[str, Any]:
        """The newest intact checkpoint; a truncated or corrupt newest one falls back (with a one-line
        warning on stderr) to the previous one, and is not rotated over it by the next save."""
        problems = []
        for path in (self.checkpoint, self.previous_checkpoint):
            if not path.is_file():
                continue
            try:
                state = decode_checkpoint(path.read_bytes())
            except CheckpointError as err:
                problems.append(f"{path.name} {err}")
                continue
            if problems and not quiet:
                print(f"pyro-vae: warning: {self.path}: {'; '.join(problems)}; using {path.name} "
                      f"(epoch {state.get('epoch')}, step {state.get('step')})", file=sys.stderr)
            self._current_is_good = path == self.checkpoint
            state["_path"] = str(path)
            state["_problems"] = problems
            return state
        detail = "; ".join(problems) if problems else "no checkpoint.pt"
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
