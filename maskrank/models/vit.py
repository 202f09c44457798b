"""Build timm Vision Transformers from a named preset plus overrides.

maskrank never forks the ViT: every model is a ``timm.models.vision_transformer.VisionTransformer``
made by ``timm.create_model``, so timm's fused attention, weight init and checkpoint format apply
unchanged and any timm user can load what maskrank exports.

A preset fixes the architecture (width, depth, heads, patch size at a given image size); the keyword
overrides change any of it. ``ViTSpec`` is the same thing as a typed, documented dataclass, which is
how configs and the CLI describe an encoder (``model.init_args.vit``). The data-dependent values
(image size, channels, classes) are not part of the spec: the CLI links them from the datamodule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import timm
from timm.models.vision_transformer import VisionTransformer

from maskrank.errors import ConfigError, check_interval, flag_of

GLOBAL_POOLS = ("token", "avg", "max", "avgmax", "map")  # timm's, "" (no pool) aside

# name -> (timm architecture, overrides). The "_32" presets use 4-px patches (64 tokens at 32 px),
# the usual choice for CIFAR-sized images; "_224" presets are the standard ImageNet ViTs.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "vit_nano_32": (
        "vit_tiny_patch16_224",
        dict(img_size=32, patch_size=4, embed_dim=64, depth=4, num_heads=2),
    ),
    "vit_tiny_32": ("vit_tiny_patch16_224", dict(img_size=32, patch_size=4)),
    "vit_small_32": ("vit_small_patch16_224", dict(img_size=32, patch_size=4)),
    "vit_base_32": ("vit_base_patch16_224", dict(img_size=32, patch_size=4)),
    "vit_tiny_224": ("vit_tiny_patch16_224", dict(img_size=224, patch_size=16)),
    "vit_small_224": ("vit_small_patch16_224", dict(img_size=224, patch_size=16)),
    "vit_base_224": ("vit_base_patch16_224", dict(img_size=224, patch_size=16)),
}


def _resolve_preset(preset: str) -> tuple[str, dict[str, Any]]:
    if preset in PRESETS:
        arch, overrides = PRESETS[preset]
        return arch, dict(overrides)
    if preset.startswith("vit_") and preset.split(".")[0] in timm.list_models("vit_*"):
        return preset, {}  # any timm ViT architecture (``name.tag`` picks pretrained weights)
    raise ConfigError(
        f"unknown ViT preset {preset!r} ({{field}}): expected one of "
        f"{sorted(PRESETS)} or a timm ViT name such as 'vit_small_patch16_224'",
        "vit.preset",
    )


def _validate(kwargs: dict[str, Any]) -> None:
    """The keywords of a model about to be built: the patch against the image size, the width
    against the heads, the drop rates."""
    img, patch = kwargs.get("img_size", 224), kwargs.get("patch_size", 16)
    if not isinstance(patch, int) or patch < 1 or img % patch:
        raise ConfigError(
            f"patch_size {patch} ({{field}}) must divide the image size "
            f"{img} (data.init_args.image_size)",
            "vit.patch_size",
        )
    dim, heads = kwargs.get("embed_dim"), kwargs.get("num_heads")
    if dim is not None and heads is not None and dim % heads:
        raise ConfigError(
            f"embed_dim {dim} must be divisible by num_heads {heads} ({{field}})", "vit"
        )
    for key in ("drop_rate", "attn_drop_rate", "proj_drop_rate", "drop_path_rate", "pos_drop_rate"):
        if kwargs.get(key) is not None:  # build_vit's own keywords (a ViTSpec checked its own)
            check_interval(kwargs[key], f"vit.{key}", 0.0, 1.0)


def build_vit(
    preset: str = "vit_tiny_32", pretrained: bool = False, **overrides: Any
) -> VisionTransformer:
    """Create a timm ``VisionTransformer`` from a preset and overrides, randomly initialised.

    Args:
        preset: a key of :data:`PRESETS` (``vit_{nano,tiny,small,base}_32``,
            ``vit_{tiny,small,base}_224``) or any timm ``vit_*`` architecture name (with a
            pretrained tag such as ``.augreg_in21k`` when ``pretrained``).
        pretrained: load timm's pretrained weights (downloaded once into the Hugging Face cache;
            timm adapts the position embedding and patch kernels to ``img_size``/``patch_size``).
        **overrides: any ``VisionTransformer`` keyword: ``img_size``, ``patch_size``, ``embed_dim``,
            ``depth``, ``num_heads``, ``mlp_ratio``, ``in_chans``, ``num_classes``, ``drop_rate``,
            ``attn_drop_rate``, ``proj_drop_rate``, ``drop_path_rate``, ``global_pool``, ...
            ``None`` values are ignored, so a spec with unset fields keeps the preset's values.

    Raises:
        ConfigError: unknown preset, patch size not dividing the image size, width not divisible
            by the number of heads, a drop rate outside [0, 1), or pretrained weights that
            cannot be fetched (offline) or do not exist for ``preset``.
    """
    arch, kwargs = _resolve_preset(preset)
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    _validate(kwargs)
    if not pretrained:
        model = timm.create_model(arch, pretrained=False, **kwargs)
    else:
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as err:  # network, hub and missing-tag errors all end here
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
            raise ConfigError(
                f"cannot load timm's pretrained weights for {arch!r} ({{field}} "
                f"with vit.preset {preset!r}): {reason}; offline, start from a checkpoint with "
                f"{flag_of('encoder_ckpt')} instead",
                "pretrained",
            ) from None
    if not isinstance(model, VisionTransformer):  # pragma: no cover - guarded by the name check
        raise ConfigError(f"{preset!r} is not a timm VisionTransformer")
    return model


@dataclass
class ViTSpec:
    """Architecture of a timm ViT encoder; unset (None) fields keep the preset's value.

    Attributes:
        preset: architecture preset (``vit_nano_32``, ``vit_tiny_32``, ``vit_small_32``,
            ``vit_base_32``, ``vit_tiny_224``, ``vit_small_224``, ``vit_base_224``) or a timm
            ``vit_*`` name.
        patch_size: patch side in pixels; must divide the image size.
        embed_dim: token width.
        depth: number of transformer blocks.
        num_heads: attention heads; must divide ``embed_dim``.
        mlp_ratio: MLP hidden width as a multiple of ``embed_dim``.
        drop_rate: dropout before the classifier head.
        proj_drop_rate: dropout after the attention and MLP output projections.
        attn_drop_rate: dropout on the attention weights.
        drop_path_rate: stochastic-depth rate (linearly increasing over blocks).
        global_pool: ``token`` (CLS) or ``avg`` (mean of patch tokens) for the classifier.
        fc_norm: a LayerNorm after the pooling (``fc_norm``) in place of the encoder's final
            ``norm``; None follows timm (on for ``avg``/``max``/``avgmax``, off for ``token``).
            MAE fine-tunes with ``global_pool: avg`` and fc_norm: an MAE encoder's final ``norm``
            is then not loaded and ``fc_norm`` starts fresh (:func:`maskrank.io.checkpoints.
            match_pooling_norm`).
    """

    preset: str = "vit_tiny_32"
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    drop_rate: float = 0.0
    proj_drop_rate: float = 0.0
    attn_drop_rate: float = 0.0
    drop_path_rate: float = 0.0
    global_pool: str = "token"
    fc_norm: bool | None = None

    def __post_init__(self) -> None:
        # errors name the task argument that holds the spec: vit.<field>
        for key in ("drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate"):
            check_interval(getattr(self, key), f"vit.{key}", 0.0, 1.0)
        for key in ("patch_size", "embed_dim", "depth", "num_heads"):
            value = getattr(self, key)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"{{field}} = {value!r} must be a positive integer", f"vit.{key}")
        if self.mlp_ratio is not None:
            check_interval(self.mlp_ratio, "vit.mlp_ratio", 0.0, low_open=True)
        if self.global_pool not in GLOBAL_POOLS:
            raise ConfigError(
                f"{{field}} = {self.global_pool!r}: expected one of {list(GLOBAL_POOLS)}",
                "vit.global_pool",
            )
        if self.fc_norm is not None and not isinstance(self.fc_norm, bool):
            raise ConfigError(
                f"{{field}} = {self.fc_norm!r}: expected true, false or null (timm's rule)",
                "vit.fc_norm",
            )
        _resolve_preset(self.preset)

    def build(
        self, img_size: int, in_chans: int = 3, num_classes: int = 0, **extra: Any
    ) -> VisionTransformer:
        """Build the ViT for images of ``img_size`` px with ``in_chans`` channels."""
        fields = asdict(self)
        preset = fields.pop("preset")
        return build_vit(
            preset,
            img_size=img_size,
            in_chans=in_chans,
            num_classes=num_classes,
            **fields,
            **extra,
        )


def as_spec(vit: ViTSpec | dict[str, Any] | None) -> ViTSpec:
    """Accept a spec, its ``asdict`` form (as stored in checkpoints' hparams) or None (defaults)."""
    if vit is None:
        return ViTSpec()
    if isinstance(vit, dict):
        return ViTSpec(**vit)
    return vit
