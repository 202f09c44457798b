"""litdata's ``StreamingDataset`` and ``StreamingDataLoader``, with maskrank's samples and positions.

* :class:`ImageStream` decodes each ``{"index", "image", "label"}`` sample of a split written by
  ``maskrank data optimize`` into ``(uint8 (C, S, S), label)``: a training crop of the original
  image seeded by ``(seed, epoch, index)``, or a centre crop for held-out data. A sample that cannot
  be read or decoded raises one line naming the split, the shard file and the sample index.
* :class:`PositionedStreamingLoader` starts its first iteration at a position the trainer counted
  (epoch, batches already trained on), through litdata's own ``load_state_dict``. The position is
  the trainer's count of batches trained on (:func:`~maskrank.data.order.resume_position`, as for
  the in-memory datamodules), not the loader's count of batches handed out, which runs ahead of
  training whenever batches are fetched in advance.
"""

from __future__ import annotations

import bisect
import json
import os
import struct
from collections.abc import Sequence
from typing import Any

import torch
from litdata import StreamingDataLoader, StreamingDataset
from litdata.streaming.sampler import ChunkedIndex
from litdata.utilities.env import _DistributedEnv
from torch import Tensor

from maskrank.data.images.encoded import centre_crop, sample_seed, train_crop
from maskrank.data.images.files import CorruptImageError
from maskrank.data.messages import one_line

__all__ = ["ImageStream", "PositionedStreamingLoader", "stack_pairs"]

Pair = tuple[Tensor, int]


class ImageStream(StreamingDataset):
    """One split of an optimized dataset as ``(image uint8 (C, S, S), label)`` samples.

    Args:
        input_dir: the split's folder or URL (``<root>/train``).
        train: random crops of the original image (with ``augment``) and a shuffled order;
            otherwise centre crops in the stored order.
        image_size: side of the square output.
        in_chans: 3 (RGB) or 1 (grey).
        augment: random resized crop + flip for training samples; False: centre crops.
        crop_scale: ``(min, max)`` area fraction of the random resized crop.
        hflip: flip training crops left-right with probability 0.5.
        seed: shuffle seed and augmentation seed (with the epoch and the sample index).
        cache_dir: where litdata keeps downloaded chunks (None: litdata's default).
        max_cache_size: litdata's cache budget, e.g. ``"50GB"`` (None: litdata's default).
    """

    def __init__(
        self,
        input_dir: str,
        train: bool,
        image_size: int,
        in_chans: int,
        augment: bool,
        crop_scale: tuple[float, float],
        hflip: bool,
        seed: int,
        cache_dir: str | None = None,
        max_cache_size: str | None = None,
    ) -> None:
        super().__init__(
            input_dir,
            cache_dir=cache_dir,
            shuffle=train,
            drop_last=True if train else None,
            seed=seed,
            max_cache_size=max_cache_size,
        )
        # litdata counts nodes (from the GPU count) and, from the second epoch on, deals each
        # node's chunks out among that node's ranks only: a chunk that straddled two nodes in the
        # first epoch is then read whole by both (its images twice per epoch) and the nodes get
        # unequal batch counts. Its one-node dealing splits every epoch over all ranks exactly;
        # the cost is that a node's later epochs may read other chunks than its cached ones.
        env = self.distributed_env
        self.distributed_env = _DistributedEnv(env.world_size, env.global_rank, num_nodes=1)
        self.where = input_dir
        self.train = train
        self.image_size = image_size
        self.in_chans = in_chans
        self.augment = augment
        self.crop_scale = crop_scale
        self.hflip = hflip
        self._shard_starts: list[int] | None = None  # first global index of every shard
        self._shard_names: list[str] = []

    def _shard_of(self, index: int) -> str:
        """The chunk file holding global sample ``index`` (from the split's ``index.json``)."""
        if self._shard_starts is None:
            try:
                with open(os.path.join(str(self.input_dir.path), "index.json")) as handle:
                    chunks = json.load(handle)["chunks"]
            except (OSError, ValueError, KeyError):
                return "an unknown shard"
            sizes = [int(c["chunk_size"]) for c in chunks]
            self._shard_starts = [sum(sizes[:i]) for i in range(len(sizes))]
            self._shard_names = [str(c["filename"]) for c in chunks]
        if not self._shard_names:
            return "an unknown shard"
        return self._shard_names[bisect.bisect_right(self._shard_starts, index) - 1]

    def _where(self, position: int) -> str:
        return f"{self.where}: sample {position} in shard {self._shard_of(position)}"

    def encoded(self, index: ChunkedIndex | int) -> tuple[bytes, int, int]:
        """One stored sample, undecoded: ``(encoded image, label, index in the source split)``."""
        position = index.index if isinstance(index, ChunkedIndex) else int(index)
        try:
            sample = super().__getitem__(index)
            return sample["image"], int(sample["label"]), int(sample["index"])
        except (OSError, ValueError, RuntimeError, KeyError, TypeError, struct.error) as exc:
            raise CorruptImageError(
                f"{self._where(position)} cannot be read ({one_line(exc)})"
            ) from None

    def train_view(self, index: int, seed: int, epoch: int) -> Tensor:
        """The training crop of sample ``index`` in epoch ``epoch`` of a run seeded ``seed``:
        ``(C, S, S)`` uint8, the crop the loader workers take (:func:`train_crop`)."""
        data, _, source_index = self.encoded(index)
        return train_crop(
            data,
            sample_seed(seed, epoch, source_index),
            self.image_size,
            self.crop_scale,
            self.hflip,
            self.in_chans,
            self._where(index),
        )

    def __getitem__(self, index: ChunkedIndex | int) -> Pair:  # type: ignore[override]
        """Read, decode and crop one sample."""
        position = index.index if isinstance(index, ChunkedIndex) else int(index)
        data, label, source_index = self.encoded(index)
        where = self._where(position)
        if self.train and self.augment:
            seed = sample_seed(self.seed, self.current_epoch, source_index)
            image = train_crop(
                data, seed, self.image_size, self.crop_scale, self.hflip, self.in_chans, where
            )
        else:
            image = centre_crop(data, self.image_size, self.in_chans, where)
        return image, label


def stack_pairs(items: Sequence[Pair]) -> tuple[Tensor, Tensor]:
    """``collate_fn``: samples -> ``(images uint8 (B, C, S, S), labels int64 (B,))``."""
    images = torch.stack([image for image, _ in items])  # (B, C, S, S)
    labels = torch.tensor([label for _, label in items], dtype=torch.int64)  # (B,)
    return images, labels


class PositionedStreamingLoader(StreamingDataLoader):
    """A ``StreamingDataLoader`` whose first iteration starts at ``(start_epoch, skip_batches)``.

    ``start_epoch`` is Lightning's 0-based epoch (litdata counts from 1) and ``skip_batches`` the
    batches of it already trained on. The position is handed to litdata's ``load_state_dict``
    just before the first iteration, when the dataset has resolved its folders, so litdata replays
    its shard assignment and skips exactly those samples on every rank and worker; every later
    iteration is a whole new epoch.

    Its ``state_dict`` is empty: the position travels in the datamodule's state (see the module
    docstring), and Lightning's call of ``load_state_dict`` with that empty state is ignored.
    """

    def __init__(
        self, dataset: ImageStream, start_epoch: int = 0, skip_batches: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(dataset, **kwargs)
        self._pending = (int(start_epoch), int(skip_batches))

    def __iter__(self) -> Any:
        if self._pending is not None:
            epoch, skip = self._pending
            self._pending = None
            self._start_at(epoch, skip)
        else:
            # Every later iteration is a fresh epoch. litdata clears its ``restore`` flag only
            # when an epoch's iterator is exhausted, but Lightning stops a sized loader after
            # ``len(loader)`` batches without exhausting it, which would replay the resumed epoch.
            self.restore = False
        return super().__iter__()

    def _start_at(self, epoch: int, skip: int) -> None:
        """Make the next iteration litdata epoch ``epoch + 1``, ``skip`` batches in."""
        if skip == 0:
            self.current_epoch = epoch  # __iter__ advances it to epoch + 1
            return
        len(self)  # resolves the dataset's folders (and cache), which its state records
        samples = skip * int(self.batch_size or 1)
        dataset: StreamingDataset = self.dataset  # type: ignore[assignment]
        dataset.set_epoch(epoch + 1)
        state = {
            "dataset": dataset.state_dict(samples, self.num_workers, int(self.batch_size or 1)),
            "current_epoch": epoch + 1,
            "num_samples_yielded": samples,
            "latest_worker_idx": (skip - 1) % max(1, self.num_workers),
        }
        super().load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """Empty: the datamodule's ``state_dict`` keeps the position."""
        return {}

    def load_state_dict(self, obj: dict[str, Any]) -> None:
        """litdata's ``load_state_dict`` for a non-empty state; an empty one is ignored."""
        if obj:
            super().load_state_dict(obj)
