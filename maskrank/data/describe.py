"""What a model trained on a datamodule needs to see its inputs again: the evaluation preprocessing.

Recorded in a classifier's checkpoint (``data_config``) so an export can hand it to other tools in
timm's terms: ``input_size`` ``(C, S, S)``, ``mean`` and ``std`` (0..1 scale), ``interpolation`` and
``crop_pct`` of the held-out resize (shorter side to ``S / crop_pct``, then a centre ``S x S``
crop, as ``timm.data.create_transform`` does) and the class names in label order.
"""

from __future__ import annotations

from typing import Any

__all__ = ["class_names_of", "data_config"]


def class_names_of(datamodule: Any, num_classes: int) -> list[str]:
    """The datamodule's class names (``classes`` or ``class_names``), else ``"0".."N-1"``."""
    for attribute in ("classes", "class_names"):
        names = getattr(datamodule, attribute, None)
        if names is not None and len(names) == num_classes:
            return [str(n) for n in names]
    return [str(i) for i in range(num_classes)]


def data_config(datamodule: Any) -> dict[str, Any]:
    """The held-out preprocessing of a maskrank datamodule, as plain values (checkpoint-safe).

    Held-out images are resized so their shorter side is ``image_size`` (bilinear, PIL's or
    torch's antialiased one), then centre-cropped: ``crop_pct`` 1. An image folder read from
    the files (``in_memory=False``) resizes to ``image_size / crop_pct`` with bicubic instead.
    """
    size = int(datamodule.image_size)
    in_chans = int(datamodule.in_chans)
    interpolation, crop_pct = "bilinear", 1.0
    if getattr(datamodule, "in_memory", True) is False:
        interpolation, crop_pct = "bicubic", float(datamodule.crop_pct)
    return {
        "input_size": [in_chans, size, size],
        "mean": [float(m) for m in datamodule.mean],
        "std": [float(s) for s in datamodule.std],
        "interpolation": interpolation,
        "crop_pct": crop_pct,
        "crop_mode": "center",
        "class_names": class_names_of(datamodule, int(datamodule.num_classes)),
    }
