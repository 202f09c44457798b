"""LoRA artefacts for other tools: merged timm weights and peft adapters.

- **Merged weights** are a plain timm model folder (``config.json`` + ``model.safetensors``, timm's
  own ``save_for_hf`` format): ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it
  with no maskrank installed.
- An **adapter** is a peft LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``):
  ``peft.PeftModel.from_pretrained(timm_model, DIR)`` loads it onto the un-adapted encoder.
- An adapter whose init offsets the base (``pissa``, ``gradient``, peft's ``olora``...) loads onto
  that **offset base**, written as a timm folder beside it (:func:`save_lora_artefacts`):
  ``PeftModel.from_pretrained(timm.create_model("local-dir:OUT/base", pretrained=True),
  "OUT/adapter")``. A Deep LoRA adapter is written as the equivalent plain LoRA of its width
  (``B A`` the SVD factors of ``W₃ W₂ W₁``).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from timm.models._hub import save_for_hf
from torch import nn

from maskrank.errors import ConfigError
from maskrank.models.lora.inject import merge_lora
from maskrank.models.lora.layer import delta_weight, lora_layers, unmerge_all
from maskrank.models.lora.spec import LoRASpec

__all__ = [
    "adapter_deltas",
    "export_pretrained_cfg",
    "save_adapter",
    "save_lora_artefacts",
    "save_merged",
    "strip_lora",
]


# What timm's pretrained_cfg keeps of the model's own entry: its architecture and layout, never
# the weights' source (url, hub id, tag, licence) nor its preprocessing, which ``data`` replaces.
_LAYOUT_KEYS = ("architecture", "fixed_input_size", "first_conv", "classifier")
_DATA_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")


def export_pretrained_cfg(model: nn.Module, data: dict[str, Any]) -> dict[str, Any]:
    """A timm ``pretrained_cfg`` for ``model`` trained on ``data`` (:mod:`maskrank.data.describe`).

    ``timm.data.resolve_data_config({}, model=...)`` on the exported model then yields the
    training data's held-out preprocessing.
    """
    own = getattr(model, "pretrained_cfg", {}) or {}
    cfg = {k: own[k] for k in _LAYOUT_KEYS if k in own}
    cfg.update({k: data[k] for k in _DATA_KEYS})
    cfg["input_size"] = tuple(cfg["input_size"])
    cfg["mean"], cfg["std"] = tuple(cfg["mean"]), tuple(cfg["std"])
    cfg["num_classes"] = model.num_classes
    return cfg


def save_merged(model: nn.Module, out_dir: str | Path, data: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (a timm ViT, adapted or not) with adapters merged, as a timm model folder.

    With ``data`` (the training data's preprocessing and ``class_names``, as recorded in a
    classifier checkpoint), ``config.json`` describes that data (``pretrained_cfg`` and
    ``label_names``) instead of the defaults of the timm architecture. The model itself is not
    modified (a copy is merged). Returns the folder.
    """
    out_dir = Path(out_dir)
    merged = merge_lora(copy.deepcopy(model)).eval()
    model_config = None
    if data is not None:
        merged.pretrained_cfg = export_pretrained_cfg(merged, data)
        model_config = {"label_names": list(data["class_names"])}
    save_for_hf(merged, out_dir, model_config=model_config)
    return out_dir


def strip_lora(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every adapted layer replaced by its (unmerged) base layer."""
    plain = copy.deepcopy(model)
    unmerge_all(plain)
    for name, view in lora_layers(plain).items():
        parent_name, _, child = name.rpartition(".")
        setattr(plain.get_submodule(parent_name) if parent_name else plain, child, view.base)
    return plain


@torch.no_grad()
def save_adapter(
    model: nn.Module,
    out_dir: str | Path,
    dropout: float = 0.0,
    head: str | None = "head",
    use_dora: bool = False,
    use_rslora: bool = False,
) -> Path:
    """Save the adapters of ``model`` (and its trained ``head``) in peft's LoRA format.

    peft itself writes the folder: the adapters are copied into a peft model built on the
    un-adapted encoder, with every adapted module listed by its full name with its own rank and
    alpha, and the head as a ``modules_to_save`` entry (it trains with the adapters). Loading it
    with ``PeftModel.from_pretrained`` on a timm model holding the same pretrained encoder
    reproduces the adapted classifier (onto the offset base for an init that offsets it).
    ``use_dora`` / ``use_rslora``: the adapters are peft's DoRA / rank-stabilised ones (their
    magnitude vectors are copied too). Returns the folder.
    """
    # peft imports transformers (seconds), so only an export pays for it
    from peft import LoraConfig, get_peft_model

    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA adapters to export (adaptation is not lora)")
    default = next(iter(layers.values()))
    config = LoraConfig(
        r=default.r,
        lora_alpha=default.alpha,
        lora_dropout=dropout,
        target_modules=sorted(layers),
        rank_pattern={name: v.r for name, v in layers.items()},
        alpha_pattern={name: v.alpha for name, v in layers.items()},
        modules_to_save=[head] if head else None,
        use_dora=use_dora,
        use_rslora=use_rslora,
    )
    peft_model = get_peft_model(strip_lora(model), config)
    inner = peft_model.base_model.model
    for name, view in layers.items():
        target = inner.get_submodule(name)
        target.lora_A["default"].weight.copy_(view.lora_a)
        target.lora_B["default"].weight.copy_(view.lora_b)
        if use_dora:
            source = model.get_submodule(name).lora_magnitude_vector["default"]
            target.lora_magnitude_vector["default"].weight.copy_(source.weight)
    if head:
        inner.get_submodule(head).modules_to_save["default"].load_state_dict(
            model.get_submodule(head).state_dict()
        )
    out_dir = Path(out_dir)
    peft_model.save_pretrained(str(out_dir))
    return out_dir


def adapter_deltas(model: nn.Module) -> dict[str, torch.Tensor]:
    """``(α/r) B A`` of every adapted layer of ``model``, keyed by module name."""
    return {name: delta_weight(view) for name, view in lora_layers(model).items()}


def save_lora_artefacts(model: nn.Module, out_dir: str | Path, spec: LoRASpec) -> dict[str, Path]:
    """Write ``OUT/adapter`` (peft) and, for an init that offsets the base, ``OUT/base`` (timm).

    Returns the folders written by name (``adapter``, and ``base`` when written).
    """
    out_dir = Path(out_dir)
    written = {
        "adapter": save_adapter(
            model,
            out_dir / "adapter",
            dropout=spec.dropout,
            use_dora=spec.use_dora,
            use_rslora=spec.use_rslora,
        )
    }
    if spec.offsets_base:
        written["base"] = out_dir / "base"
        save_for_hf(strip_lora(model).eval(), written["base"])
    return written
