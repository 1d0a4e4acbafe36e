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
import sys
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from pyro_vae.errors import FileSystemError, RunDirError, file_system_error

CHECKPOINT_FORMAT = "pyro_vae.checkpoint/2"


# A checkpoint is one header line ``MAGIC <sha256 of payload> <payload bytes>`` and a torch.save payload,
# so truncation (length) and corruption (checksum) are detected before unpickling anything.
CHECKPOINT_MAGIC = b"PYRO_VAE_CHECKPOINT"
OWN_FILES = ("config.yaml", "metrics.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "summary.json", "evaluation.json")
OWN_PLOTS = ("learning_curves.png", "reconstructions.png", "samples.png", "latent.png")  # in plots/; a user's own figures there stay
STAGING = ".pyro_vae-new"  # where an --overwrite run is built until its first checkpoint, inside the old run's directory


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give: mkstemp's 0600 would hide run files from a user's group


def check_writable_dir(path: Path, flag: str = "--out") -> None:
    """Refuse, before anything is written, a ``path`` that cannot become a writable directory: under a file,
    in a symlink loop, or below a directory this process may not write (permission, read-only file system)."""
    path, probe = Path(path), Path(path)
    while True:
        try:
            probe.stat()
            break
        except FileNotFoundError:
            if probe.parent == probe:
                break
            probe = probe.parent
        except OSError as err:
            raise file_system_error(err, f"{flag} {path}") from None
    if not probe.is_dir():
        what = "exists and is not a directory" if probe == path else f"{probe} is a file, not a directory"
        raise RunDirError(f"{flag} {path}: {what}; choose another {flag}")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FileSystemError(f"{flag} {path}: {probe} is not writable (permission denied or a read-only file system); "
                              f"choose another {flag}")


def _write_synced(fd: int, data: bytes) -> None:
    """Write ``data`` to the new file ``fd`` (the mode open() would give) and make it durable before any rename."""
    with os.fdopen(fd, "wb") as f:
        os.fchmod(f.fileno(), FILE_MODE)
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either the old file or the new one, never half."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        _write_synced(fd, data)
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


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:  # unreadable (permissions, I/O error): the previous checkpoint may still serve
        raise CheckpointError(f"cannot be read ({err.strerror or err.__class__.__name__})") from None


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


class RunDir:
    """Paths and atomic I/O for one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.final: Optional[Path] = None  # set while an --overwrite run is staged (see create)
        self.made: List[Path] = []  # folders this run created, removed again by abandon()
        self._current_is_good = True  # False after falling back: a corrupt checkpoint.pt must not become .prev

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    checkpoint = property(lambda self: self.path / "checkpoint.pt")
    previous_checkpoint = property(lambda self: self.path / "checkpoint.prev.pt")
    summary = property(lambda self: self.path / "summary.json")
    plots = property(lambda self: self.path / "plots")

    @classmethod
    def create(cls, path: str | Path, overwrite: bool = False) -> "RunDir":
        """A run directory for a new run, after every check that can refuse (nothing is written before).

        A new or empty ``path`` is used directly. An existing non-empty one is refused unless ``overwrite``;
        then the old run stays whole while the new one is built in ``path/.pyro_vae-new/``, and
        :meth:`commit` moves it in (pyro_vae's own files only, one by one) once it has its first checkpoint.
        """
        target = Path(path)
        check_writable_dir(target)
        if target.is_dir() and any(target.iterdir()):
            if not overwrite:
                raise RunDirError(f"--out {target}: directory exists and is not empty; pass --overwrite or choose another --out")
            if not os.access(target, os.W_OK | os.X_OK):
                raise FileSystemError(f"--out {target}: not writable (permission denied or a read-only file system)")
            run = cls(target / STAGING)
            run._remove_own(run.path)  # a staging folder left by an --overwrite run killed before its commit
            run.final = target
        else:
            run = cls(target)
            run.made = [p for p in (target, *target.parents) if not p.exists()]
        run.path.mkdir(parents=True, exist_ok=True)
        run.plots.mkdir(exist_ok=True)
        return run

    def commit(self) -> None:
        """Move a staged ``--overwrite`` run into its directory: the old run's pyro_vae files are replaced or
        removed one by one (in ``plots/`` only pyro_vae's figures); anything else there is left as it was."""
        if self.final is None:
            return
        staged, final = self.path, self.final
        for directory, names in ((final, OWN_FILES), (final / "plots", OWN_PLOTS)):
            directory.mkdir(exist_ok=True)
            new_dir = staged if directory == final else staged / "plots"
            for name in sorted(names, key=lambda n: n in ("checkpoint.pt", "config.yaml")):  # stale files go first
                if (new_dir / name).exists():
                    os.replace(new_dir / name, directory / name)
                else:
                    (directory / name).unlink(missing_ok=True)
        self._remove_own(staged)
        staged.rmdir()
        self.path, self.final = final, None
        self.remove_stale_temporaries()

    def abandon(self) -> None:
        """Undo a run that failed before its first checkpoint: remove what it wrote (its staging folder, or the
        folders this run made), leaving an old run, and anything not pyro_vae's, as they were."""
        self._remove_own(self.path)
        for folder in [self.path] if self.final is not None else self.made:
            try:
                folder.rmdir()  # only if empty: a folder someone else filled meanwhile stays
            except FileNotFoundError:
                continue
            except OSError:
                break

    @staticmethod
    def _remove_own(folder: Path) -> None:
        """Delete pyro_vae's files (and atomic-write leftovers) in ``folder`` and in its plots/ (then plots/ if empty)."""
        for directory, names in ((folder / "plots", OWN_PLOTS), (folder, OWN_FILES)):
            if not directory.is_dir():
                continue
            for name in names:
                (directory / name).unlink(missing_ok=True)
            for tmp in directory.glob(".*.tmp"):
                tmp.unlink(missing_ok=True)
        try:
            (folder / "plots").rmdir()
        except OSError:
            pass

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        run = cls(path)
        if run.path.exists() and not run.path.is_dir():
            raise RunDirError(f"{run.path}: is a file, not a run directory")
        if not run.path.is_dir():
            raise RunDirError(f"{run.path}: run directory not found")
        if not run.config.is_file():
            raise RunDirError(f"{run.path}: not a run directory (no config.yaml)")
        return run

    def check_writable(self, why: str) -> None:
        """Refuse, before any work, a run directory whose files cannot be written (``why``: what needs it).

        A real probe (an empty temporary file, removed at once) rather than ``os.access``, which a read-only
        mount or a root process would answer wrongly."""
        try:
            fd, probe = tempfile.mkstemp(prefix=".probe.", suffix=".tmp", dir=self.path)
            os.close(fd)
            os.unlink(probe)
        except OSError as err:
            raise FileSystemError(f"{self.path}: cannot write here ({err.strerror or err.__class__.__name__}); "
                                  f"{why}") from None

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
            _write_synced(fd, data)
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
                state = decode_checkpoint(_read(path))
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
