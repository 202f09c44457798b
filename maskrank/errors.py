"""User-facing errors: the one-line format, the exit status, and the one interval check.

A :class:`MaskRankError` is raised for a *user* mistake or a bad environment (a bad flag, a missing
or corrupt file, a value outside its range, a disk that cannot be written). Its message is one line
that names the flag or file and says what was expected and what was found. The CLI prints it as
``maskrank: error: <message>`` (:func:`format_user_error`) and exits with :data:`EXIT_USER_ERROR`;
library callers catch it like any other exception. Programming errors stay ordinary exceptions
with tracebacks.

A :class:`ConfigError` about one setting of a task carries that setting's name in ``field``,
relative to the task (``mask_ratio``, ``lora.r``: each spec knows its own argument name); the
message shows it as the command-line flag (``model.init_args.lora.r``). That prefix is written
here and nowhere else.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Iterator
from contextlib import contextmanager

__all__ = [
    "EXIT_USER_ERROR",
    "ConfigError",
    "CorruptFileError",
    "DatasetNotFoundError",
    "DiskFullError",
    "EnvironmentProblem",
    "MaskRankError",
    "MissingFileError",
    "NoCheckpointToResumeError",
    "NonFiniteLossError",
    "check_interval",
    "flag_of",
    "format_user_error",
    "settings_of",
    "user_error_in",
]

EXIT_USER_ERROR = 2  # what argparse and jsonargparse use for a bad command line
TASK_FLAGS = "model.init_args"  # where LightningCLI puts a task's __init__ arguments


class MaskRankError(Exception):
    """A user mistake, explained in one line that names the flag or file involved."""


class MissingFileError(MaskRankError, FileNotFoundError):
    """A file or folder named by the user does not exist."""


class DatasetNotFoundError(MissingFileError):
    """A dataset's files are not where the config says they are."""


class CorruptFileError(MaskRankError, ValueError):
    """A file exists but cannot be read as what it should be (image, checkpoint, ...)."""


def flag_of(field: str) -> str:
    """The command-line flag of a task setting: ``lora.r`` -> ``model.init_args.lora.r``."""
    return f"{TASK_FLAGS}.{field}"


class ConfigError(MaskRankError, ValueError):
    """A config value is out of range or inconsistent with another value.

    Args:
        message: the one-line explanation; ``{field}`` in it is replaced by the setting's flag
            (``model.init_args.<field>``); without it the flag leads the message.
        field: the setting's dotted name among the task's arguments (``lora.r``), or None when
            the message names its flags or files itself.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def flag(self) -> str | None:
        """The command-line name of the setting, or None."""
        return None if self.field is None else flag_of(self.field)

    def within(self, prefix: str) -> ConfigError:
        """The same error with its field one level down (``r`` under ``lora`` is ``lora.r``)."""
        if self.field is None:
            return self
        inner = copy.copy(self)
        inner.field = f"{prefix}.{self.field}" if self.field else prefix
        return inner

    def __str__(self) -> str:
        if self.field is None:
            return self.message
        if "{field}" in self.message:
            return self.message.replace("{field}", self.flag)
        return f"{self.flag}: {self.message}"


class EnvironmentProblem(MaskRankError, OSError):
    """The machine cannot do what was asked: a read-only or full disk, a missing permission."""


class DiskFullError(EnvironmentProblem):
    """A write ran out of space; the message says whether the previous file is intact."""


class NoCheckpointToResumeError(MissingFileError):
    """``--ckpt_path last`` was given but no earlier run of the experiment left a ``last.ckpt``."""


class NonFiniteLossError(MaskRankError, FloatingPointError):
    """Training produced a NaN/inf loss or gradient and was stopped before it changed the weights."""


@contextmanager
def settings_of(prefix: str) -> Iterator[None]:
    """Re-raise a :class:`ConfigError` from inside with its field under ``prefix``."""
    try:
        yield
    except ConfigError as err:
        raise err.within(prefix) from None


def check_interval(
    value: float,
    field: str,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise ``ConfigError('{field} = value must be in [low, high)')`` unless ``value`` is inside.

    ``None`` leaves that side unbounded; ``low_open`` / ``high_open`` exclude the end points
    (the default is the half-open ``[low, high)`` of a probability that may be 0 but not 1).
    """
    ok = (
        isinstance(value, (int, float))
        and value == value  # NaN fails every bound
        and (low is None or (value > low if low_open else value >= low))
        and (high is None or (value < high if high_open else value <= high))
    )
    if ok:
        return
    if high is None:
        need = f"> {low:g}" if low_open else f">= {low:g}"
    elif low is None:
        need = f"< {high:g}" if high_open else f"<= {high:g}"
    else:
        need = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    raise ConfigError(f"{{field}} = {value!r} must be {need}", field)


_ENVIRONMENT_ERRNOS = {
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EROFS: "read-only file system",
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.ENOENT: "no such file or directory",
}


def user_error_in(err: BaseException | None) -> MaskRankError | None:
    """The MaskRankError behind ``err`` (jsonargparse and Lightning wrap errors raised inside).

    An ``OSError`` the environment causes (a read-only or full disk, a missing permission) is
    one too: it becomes an :class:`EnvironmentProblem` naming the path.
    """
    seen = 0
    while err is not None and seen < 20:
        if isinstance(err, MaskRankError):
            return err
        if isinstance(err, OSError) and err.errno in _ENVIRONMENT_ERRNOS:
            what = _ENVIRONMENT_ERRNOS[err.errno]
            where = err.filename if err.filename is not None else "a file of this run"
            return EnvironmentProblem(f"cannot use {where}: {what}")
        err, seen = err.__cause__ or err.__context__, seen + 1
    return None


def format_user_error(err: BaseException) -> str:
    """The one line the CLI prints for a user or environment error."""
    text = " ".join(str(err).split())  # one line, whatever the message held
    return f"maskrank: error: {text}"
