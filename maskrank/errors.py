"""User-facing errors.

A :class:`MaskRankError` is raised for a *user* mistake (a bad flag, a missing or corrupt file, a
value outside its range). Its message is one line that names the flag or file and says what was
expected. The CLI prints it without a traceback and exits with status 2; library callers catch it
like any other exception. Programming errors stay ordinary exceptions with tracebacks.
"""

from __future__ import annotations


class MaskRankError(Exception):
    """A user mistake, explained in one line that names the flag or file involved."""


class MissingFileError(MaskRankError, FileNotFoundError):
    """A file or folder named by the user does not exist."""


class DatasetNotFoundError(MissingFileError):
    """A dataset's files are not where the config says they are."""


class CorruptFileError(MaskRankError, ValueError):
    """A file exists but cannot be read as what it should be (image, checkpoint, ...)."""


class ConfigError(MaskRankError, ValueError):
    """A config value is out of range or inconsistent with another value."""


class NoCheckpointToResumeError(MissingFileError):
    """``--ckpt_path last`` was given but no earlier run of the experiment left a ``last.ckpt``."""


class NonFiniteLossError(MaskRankError, FloatingPointError):
    """Training produced a NaN/inf loss or gradient and was stopped before it changed the weights."""
