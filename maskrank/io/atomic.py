"""Files a crash cannot truncate: write a temp file beside the target, fsync, rename over it.

``os.replace`` is atomic within one directory, so a reader sees the old file or the new one, never
a mix. A kill leaves at most a hidden ``.<name>.<pid>.<hex>.tmp`` beside the target, which the next
write of that name removes. Used for checkpoints (:mod:`maskrank.io.checkpoint_io`), sweep result
markers, rank maps and the decoded-image cache.
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from maskrank.errors import DiskFullError

__all__ = ["DiskFullError", "atomic_torch_save", "atomic_write", "atomic_write_text"]


def _temp_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that Lightning never takes for a checkpoint (no .ckpt suffix)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that were killed (their pid is gone)."""
    for temp in path.parent.glob(f".{path.name}.*.tmp"):
        pid = temp.name[len(path.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (no-op where directories cannot be opened, e.g. Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> None:
    """Call ``write(handle)`` on a temp file beside ``path``, fsync it and rename it to ``path``.

    If anything fails (or the process is interrupted) before the rename, ``path`` is untouched;
    the temp file is removed unless the process was killed outright.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    temp = _temp_name(path)
    try:
        with open(temp, "xb") as handle:  # "x": never reuse a file; default permissions
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            kept = "the previous file is intact" if path.exists() else "nothing was written"
            raise DiskFullError(f"the disk is full while writing {path}; {kept}") from None
        raise
    _fsync_dir(path.parent)


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda handle: torch.save(obj, handle))


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path``, atomically (:func:`atomic_write`)."""
    atomic_write(path, lambda handle: handle.write(text.encode()))
