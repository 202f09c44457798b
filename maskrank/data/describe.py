"""What a model trained on a datamodule needs to see its inputs again: the evaluation preprocessing.

Read from the data contract (:class:`~maskrank.data.contract.ImageData`) only.

Recorded in a classifier's checkpoint (``data_config``) so an export can hand it to other tools in
timm's terms: ``input_size`` ``(C, S, S)``, ``mean`` and ``std`` (0..1 scale), ``interpolation`` and
``crop_pct`` of the held-out resize (shorter side to ``S / crop_pct``, then a centre ``S x S``
crop, as ``timm.data.create_transform`` does) and the class names in label order.
"""

from __future__ import annotations

from typing import Any

from maskrank.data.contract import ImageData, is_image_data

__all__ = ["class_names_of", "data_config"]


def class_names_of(datamodule: Any, num_classes: int) -> list[str]:
    """The datamodule's class names when it has ``num_classes`` of them, else ``"0".."N-1"``."""
    if is_image_data(datamodule) and len(datamodule.classes) == num_classes:
        return [str(n) for n in datamodule.classes]
    return [str(i) for i in range(num_classes)]


def data_config(datamodule: ImageData) -> dict[str, Any]:
    """The held-out preprocessing of a maskrank datamodule, as plain values (checkpoint-safe):
    shorter side resized to ``image_size / eval_crop_pct`` with ``eval_interpolation``, then
    the centre ``image_size`` square."""
    size = int(datamodule.image_size)
    in_chans = int(datamodule.in_chans)
    interpolation, crop_pct = str(datamodule.eval_interpolation), float(datamodule.eval_crop_pct)
    return {
        "input_size": [in_chans, size, size],
        "mean": [float(m) for m in datamodule.mean],
        "std": [float(s) for s in datamodule.std],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "class_names": class_names_of(datamodule, int(datamodule.num_classes)),
    }
