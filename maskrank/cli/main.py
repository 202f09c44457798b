"""``maskrank COMMAND ...``: dispatch through the command table, one error wrapper for all.

A user mistake or a bad environment anywhere below (:class:`maskrank.errors.MaskRankError`, also
when jsonargparse or Lightning wrap it) ends the command with one line on stderr and exit status
:data:`maskrank.errors.EXIT_USER_ERROR`; everything else propagates with its traceback.
"""

from __future__ import annotations

import os
import sys

from maskrank import __version__
from maskrank.cli.commands import COMMANDS, commands_help
from maskrank.errors import EXIT_USER_ERROR, format_user_error, user_error_in

__all__ = ["main"]

USAGE = f"usage: maskrank [-h] [--version] {{{','.join(COMMANDS)}}} ..."


def help_text() -> str:
    return (
        f"{USAGE}\n\nMasked self-supervised learning on Vision Transformers, with low-rank "
        f"structure made visible.\n\n{commands_help()}\n"
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``maskrank`` and ``python -m maskrank`` (``sys.argv[1:]`` when None)."""
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print(help_text(), end="", file=sys.stdout if argv else sys.stderr)
        if not argv:
            raise SystemExit(EXIT_USER_ERROR)
        return
    if argv[0] == "--version":
        print(f"maskrank {__version__}")
        return
    # OpenMP threads that wait for work sleep instead of spinning: two runs on the same cores
    # then share them instead of burning each other's time
    # (scripts/benchmarks/bench_shared_cpu.py).
    # Read once, when torch loads below; a value the user set is kept.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    command = COMMANDS.get(argv[0])
    if command is None:
        print(
            f"{USAGE}\nmaskrank: error: unknown command {argv[0]!r}; expected one of "
            f"{', '.join(COMMANDS)}",
            file=sys.stderr,
        )
        raise SystemExit(EXIT_USER_ERROR)
    run = command.load()
    try:
        run(argv if command.with_name else argv[1:])
    except Exception as err:
        user_error = user_error_in(err)
        if user_error is None:
            raise
        print(format_user_error(user_error), file=sys.stderr)
        raise SystemExit(EXIT_USER_ERROR) from None
