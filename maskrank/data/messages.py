"""Helpers that build the one-line user-facing errors of the data package."""

from __future__ import annotations

from typing import Any

from maskrank.errors import ConfigError

__all__ = ["one_line", "require"]


def one_line(exc: BaseException) -> str:
    """``str(exc)`` with all whitespace runs (newlines included) collapsed to single spaces."""
    return " ".join(str(exc).split())


def require(ok: bool, flag: str, expected: str, value: Any) -> None:
    """Raise a one-line :class:`ConfigError` for ``--data.<flag>`` unless ``ok``.

    Args:
        ok: the condition that must hold.
        flag: the flag name after ``--data.``, e.g. ``"batch_size"``.
        expected: what the value must be, e.g. ``">= 1"``.
        value: the offending value, shown with ``repr``.
    """
    if not ok:
        raise ConfigError(f"--data.{flag} must be {expected}, got {value!r}")
