"""User-facing errors: each becomes one line on stderr and exit status 2 in the CLI."""


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
