"""User-facing errors: each becomes one line on stderr and exit status 2 in the CLI."""

import errno
import re
from typing import Optional


class UserError(Exception):
    """A problem with what the user gave us (a config, a file, a run directory).

    The message must name the key, file or value at fault and fit on one line.
    """

    exit_code = 2


class ConfigError(UserError):
    """An invalid config key, type or value."""


class DataError(UserError):
    """A missing, unreadable or invalid data file, or data a likelihood cannot model."""


class RunDirError(UserError):
    """A run directory that is missing, incomplete, corrupt, or would be overwritten."""


class FileSystemError(UserError):
    """The file system refused a read or write: permission, read-only, disk full, not a directory, a link loop."""


# errno -> what the user can do about it
_ADVICE = {
    errno.EACCES: "check its permissions or choose another path",
    errno.EPERM: "check its permissions or choose another path",
    errno.EROFS: "the file system is read-only; choose another path",
    errno.ENOSPC: "the disk is full; free some space (the last complete checkpoint is kept: 'pyro-vae resume' continues from it)",
    errno.EDQUOT: "the disk quota is exceeded; free some space",
    errno.ENOTDIR: "a part of the path is a file, not a directory; choose another path",
    errno.EISDIR: "it is a directory; give a file",
    errno.ELOOP: "it is a loop of symbolic links; choose another path",
    errno.ENAMETOOLONG: "the name is too long; choose a shorter path",
}


def file_system_error(err: OSError, path=None) -> FileSystemError:
    """One line for an ``OSError``: the path, what went wrong and what to do."""
    where = path if path is not None else (err.filename if err.filename is not None else "file system")
    what = err.strerror or err.__class__.__name__
    advice = _ADVICE.get(err.errno)
    return FileSystemError(f"{where}: {what}" + (f"; {advice}" if advice else ""))


def one_line(err: BaseException) -> str:
    """``Type: message`` on one line; a first line that only announces a list (``...state_dict for VAE:``)
    is followed by the list's first item, which says what is wrong."""
    text = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if not text:
        return err.__class__.__name__
    head = text[0] + (f" {text[1]}" if text[0].endswith(":") and len(text) > 1 else "")
    return f"{err.__class__.__name__}: {head[:300]}"


class OutOfMemory(UserError):
    """An allocation the machine cannot make: a config asking for more memory than there is."""


def out_of_memory(err: BaseException) -> Optional[OutOfMemory]:
    """One line for a failed allocation (NumPy's MemoryError, torch's on CPU or GPU), else None: the sizes that
    multiply into memory are the usual cause, so name them."""
    text = str(err)
    if not (isinstance(err, MemoryError) or err.__class__.__name__ == "OutOfMemoryError"
            or (isinstance(err, RuntimeError) and "can't allocate memory" in text)):
        return None
    size = re.search(r"allocate (\d+) bytes|allocate ([\d.]+ [KMGT]iB)", text)
    asked = "" if size is None else f" ({int(size.group(1)) / 2**30:.1f} GiB)" if size.group(1) else f" ({size.group(2)})"
    return OutOfMemory(f"out of memory: an allocation failed{asked}; lower what multiplies into memory "
                       f"(model.latent_dim, layer sizes, inference.num_particles, train.batch_size)")
