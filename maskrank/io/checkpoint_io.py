"""Checkpoint writes that a crash cannot truncate.

Lightning's ``TorchCheckpointIO`` serializes to memory and writes through an fsspec "transaction".
For a local path that transaction writes a temp file from ``tempfile.mkstemp()``, i.e. in the
system temp directory, and commits with ``shutil.move``. When that directory is on another file
system (``/tmp`` is often a tmpfs), the move is a copy into the final name, so a kill during the copy
leaves a truncated ``last.ckpt``, and nothing is fsync'ed either way.

:class:`AtomicCheckpointIO` writes the file next to its final name, fsyncs it, renames it over the
final name (``os.replace``: atomic within one directory) and fsyncs the directory
(:func:`maskrank.io.atomic.atomic_torch_save`). A reader sees the old checkpoint or the new one, never
a mix. A kill leaves at most a hidden ``.<name>.<pid>.<hex>.tmp`` beside it, which the next write
of that name removes. Remote URLs (``s3://...``) keep Lightning's
behaviour. The CLI installs this plugin unless ``trainer.plugins`` already holds a ``CheckpointIO``.
"""

from __future__ import annotations

from typing import Any

from lightning_fabric.utilities.types import _PATH
from pytorch_lightning.plugins.io import TorchCheckpointIO

from maskrank.io.atomic import atomic_torch_save

__all__ = ["AtomicCheckpointIO", "atomic_torch_save"]


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
