"""RandAugment of one training crop in a DataLoader worker, seeded per ``(seed, epoch, index)``.

timm's ``rand_augment_transform`` (MAE fine-tunes with ``rand-m9-mstd0.5-inc1``) works on PIL
images and draws its operations and magnitudes from Python's and numpy's global generators.
:class:`SeededRandAugment` runs it with both generators set from the sample's
``(seed, epoch, index)`` and puts them back afterwards, so a sample gets the same augmentation in
any worker and after a resume, and the caller's random streams do not move. The timm hyper-
parameters are those of timm's ``create_transform``: translations up to 45 % of the image side,
the fill colour the dataset mean, bicubic resampling.

Posterize keeping 0 bits: MAE's ``inc1`` policy reaches it whenever the noisy magnitude hits the
top of its range (10; about 2 % of ``PosterizeIncreasing`` draws at m9, mstd 0.5). The Pillow of
MAE's time turned the image black; the Pillow installed here refuses 0 bits with a ValueError that
would stop a run mid-epoch. :func:`posterize` restores the black image, so the policy is MAE's.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image, ImageOps
from timm.data import auto_augment as timm_auto_augment
from timm.data.auto_augment import rand_augment_transform
from timm.data.transforms import str_to_pil_interp
from torch import Tensor

from maskrank.data.messages import one_line
from maskrank.errors import ConfigError

__all__ = ["SeededRandAugment", "augment_seed", "posterize"]


def augment_seed(seed: int, epoch: int, index: int) -> int:
    """The 32-bit seed of one sample's RandAugment: a pure function of ``(seed, epoch, index)``
    (hashed by ``random.Random``'s string seeding, the same in every process)."""
    return random.Random(f"maskrank-randaugment:{seed}:{epoch}:{index}").getrandbits(32)


def posterize(img: Image.Image, bits_to_keep: int, **_: object) -> Image.Image:
    """timm's posterize op, with ``bits_to_keep <= 0`` giving the all-zero image it gave with the
    Pillow of MAE's time (the installed Pillow refuses 0 bits)."""
    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return Image.new(img.mode, img.size)  # every channel 0
    return ImageOps.posterize(img, bits_to_keep)


@contextmanager
def _global_generators(seed: int) -> Iterator[None]:
    """Python's and numpy's global generators seeded with ``seed`` inside, restored after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


class SeededRandAugment:
    """timm's RandAugment for ``(C, S, S)`` uint8 crops, deterministic per sample.

    Args:
        config: a timm RandAugment string (``rand-m9-mstd0.5-inc1``: 2 operations of magnitude 9,
            magnitude noise std 0.5, magnitudes increasing with severity).
        image_size: side of the crops, in pixels (sets the largest translation).
        mean: the dataset's per-channel mean on the 0..1 scale (the fill colour).

    Raises:
        ConfigError: ``config`` is not a RandAugment string timm accepts (naming
            ``--data.auto_augment``).
    """

    def __init__(self, config: str, image_size: int, mean: Sequence[float]) -> None:
        expected = "a timm RandAugment string such as 'rand-m9-mstd0.5-inc1' (MAE's), or null"
        if not isinstance(config, str) or not config.startswith("rand"):
            raise ConfigError(f"--data.auto_augment must be {expected}, got {config!r}")
        fill = tuple(min(255, round(255 * m)) for m in mean)
        hparams = {
            "translate_const": int(image_size * 0.45),
            "img_mean": fill if len(fill) > 1 else fill[0],  # a grey image fills with an int
            "interpolation": str_to_pil_interp("bicubic"),
        }
        try:
            self.transform = rand_augment_transform(config, hparams)
        except (AssertionError, ValueError, KeyError) as err:
            reason = one_line(err) or "unknown section"
            raise ConfigError(
                f"--data.auto_augment must be {expected}, got {config!r} ({reason})"
            ) from None
        for op in self.transform.ops:  # module-level functions: the transform still pickles
            if op.aug_fn is timm_auto_augment.posterize:
                op.aug_fn = posterize
        self.config = config

    def __call__(self, image: Tensor, seed: int, epoch: int, index: int) -> Tensor:
        """``image`` (C, S, S) uint8 augmented with sample ``index``'s draws of ``epoch``."""
        array = image.permute(1, 2, 0).numpy()  # (S, S, C)
        pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)
        with _global_generators(augment_seed(seed, epoch, index)):
            out = np.asarray(self.transform(pil), dtype=np.uint8)
        out = out[:, :, None] if out.ndim == 2 else out
        return torch.from_numpy(out.copy()).permute(2, 0, 1).contiguous()
