"""Checkpoint writes that a crash cannot truncate.

Lightning's ``TorchCheckpointIO`` serializes to memory and writes through an fsspec "transaction".
For a local path that transaction writes a temp file from ``tempfile.mkstemp()``, i.e. in the
system temp directory, and commits with ``shutil.move``. When that directory is on another file
system (``/tmp`` is often a tmpfs), the move is a copy into the final name, so a kill during the copy
leaves a truncated ``last.ckpt``, and nothing is fsync'ed either way.

:class:`AtomicCheckpointIO` writes the file next to its final name, fsyncs it, renames it over the
final name (``os.replace``: atomic within one directory) and fsyncs the directory. A reader sees the
old checkpoint or the new one, never a mix. A kill leaves at most a hidden ``.<name>.<pid>.<hex>.tmp``
beside it, which the next write of that name removes. Remote URLs (``s3://...``) keep Lightning's
behaviour. The CLI installs this plugin unless ``trainer.plugins`` already holds a ``CheckpointIO``.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


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


def atomic_torch_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)`` through a temp file in the same directory and an atomic rename.

    If anything fails (or the process is interrupted) before the rename, ``path`` is untouched;
    the temp file is removed unless the process was killed outright.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(path)
    temp = _temp_name(path)
    try:
        with open(temp, "xb") as handle:  # "x": never reuse a file; default permissions
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise
    _fsync_dir(path.parent)


def _is_local(path: _PATH) -> bool:
    text = str(path)
    return "://" not in text or text.startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """``TorchCheckpointIO`` whose local writes are temp-file-in-the-same-directory + rename."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or not _is_local(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        local = str(path)[len("file://") :] if str(path).startswith("file://") else path
        atomic_torch_save(checkpoint, local)
