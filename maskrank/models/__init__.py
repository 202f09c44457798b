"""Models: timm ViT builders and the layers maskrank adds around them."""

from maskrank.models.vit import PRESETS, ViTSpec, build_vit

__all__ = ["PRESETS", "ViTSpec", "build_vit"]
