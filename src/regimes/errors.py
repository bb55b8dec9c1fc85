"""One error hierarchy: every user mistake and every damaged input is a `RegimesError`.

The command line turns a `RegimesError` into one line on stderr and exit status 2; nothing
else is caught, so a bug in regimes keeps its traceback. Each class also derives from the
built-in exception a Python caller would expect (`ValueError`, `FileNotFoundError`, ...),
so `except ValueError` keeps working.

    RegimesError
    ├── UsageError (ValueError)              an argument, option, config value or name is wrong
    │   └── UnsupportedError                 asked of a setup regimes does not support (FSDP1, ...)
    ├── DamagedInputError (ValueError)       a file cannot be read as what it should be
    ├── RunExistsError (FileExistsError)     a run is already where a new one would go
    ├── NoRunError (FileNotFoundError)       no run (or no checkpoint) where one is needed
    ├── MissingInputError (FileNotFoundError) a file the user named is not there
    └── the older names, kept where they were defined: ConfigError, UnknownNameError,
        ModelArgumentError, ProbeError, NoActivationSitesError, MissingExtraError,
        DataNotFoundError, EngineError, RunDirectoryError (RunLockedError, DamagedRecordError),
        UnreadableRunError, NotPiecewiseLinearError
"""

from __future__ import annotations

__all__ = [
    "RegimesError",
    "UsageError",
    "UnsupportedError",
    "DamagedInputError",
    "RunExistsError",
    "NoRunError",
    "MissingInputError",
]


class RegimesError(Exception):
    """A user's mistake or a damaged input: one line and exit status 2 on the command line."""


class UsageError(RegimesError, ValueError):
    """An argument, option, config value or name is wrong; the message says what to pass."""


class UnsupportedError(UsageError, NotImplementedError):
    """A setup regimes does not support (the message names what it supports instead)."""


class DamagedInputError(RegimesError, ValueError):
    """A file cannot be read as what it should be; the message names the file."""


class RunExistsError(RegimesError, FileExistsError):
    """A run is already where a new one would be written (resume it, force it, or go elsewhere)."""


class NoRunError(RegimesError, FileNotFoundError):
    """No run, or no checkpoint, where one is needed."""


class MissingInputError(RegimesError, FileNotFoundError):
    """A file the user named (a config, a grid, a data file) is not there."""
