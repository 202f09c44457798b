"""Reading and writing LoRA artefacts: rank maps, merged timm weights, peft adapters.

- A **rank map** is the YAML file ``maskrank lora-rank`` writes: ``rank_pattern: {module: rank}``
  (plus provenance keys); ``model.init_args.lora.rank_pattern: path/to/rank_map.yaml`` reads it.
- **Merged weights** are a plain timm model folder (``config.json`` + ``model.safetensors``, timm's
  own ``save_for_hf`` format): ``timm.create_model("local-dir:DIR", pretrained=True)`` loads it
  with no maskrank installed.
- An **adapter** is a peft LoRA folder (``adapter_config.json`` + ``adapter_model.safetensors``):
  ``peft.PeftModel.from_pretrained(timm_model, DIR)`` loads it onto the un-adapted encoder.
"""

from __future__ import annotations

import copy
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from maskrank.atomic import atomic_write_text
from maskrank.errors import ConfigError, CorruptFileError, MissingFileError
from maskrank.models.lora import LoRASpec, delta_weight, lora_layers, merge_lora, unmerge_all

__all__ = [
    "adapter_deltas",
    "as_lora_spec",
    "load_rank_map",
    "save_adapter",
    "save_merged",
    "strip_lora",
    "write_rank_map",
]

_FLAG = "model.init_args.lora"


def load_rank_map(path: str | Path, flag: str = f"{_FLAG}.rank_pattern") -> dict[str, int]:
    """The ``rank_pattern`` of a rank-map YAML file (or a file that is a plain mapping)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(
            f"rank map {path} ({flag}) does not exist; write one with `maskrank lora-rank`"
        )
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise CorruptFileError(f"rank map {path} ({flag}) is not valid YAML: {err}") from None
    ranks = data.get("rank_pattern", data) if isinstance(data, dict) else None
    if not isinstance(ranks, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and v >= 0 for k, v in ranks.items()
    ):
        raise CorruptFileError(
            f"rank map {path} ({flag}) must map module names to ranks >= 0 "
            "(e.g. 'rank_pattern: {blocks.0.attn.qkv: 4}')"
        )
    return ranks


def write_rank_map(path: str | Path, ranks: dict[str, int], **provenance: Any) -> None:
    """Write ``rank_pattern: ranks`` (and provenance keys) atomically to ``path``."""
    atomic_write_text(path, yaml.safe_dump({**provenance, "rank_pattern": ranks}, sort_keys=False))


def as_lora_spec(value: LoRASpec | dict | None, flag: str = _FLAG) -> LoRASpec:
    """A LoRASpec from a spec, its ``asdict`` form (checkpoint hparams) or None (defaults).

    A ``rank_pattern`` given as a path is replaced by the map it holds, so what a checkpoint
    stores never depends on the file again.
    """
    if value is None:
        spec = LoRASpec()
    elif isinstance(value, dict):
        known = {f.name for f in fields(LoRASpec)}
        unknown = sorted(set(value) - known)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {flag}; expected {sorted(known)}")
        spec = LoRASpec(**value)
    else:
        spec = copy.copy(value)
    spec.targets = list(spec.targets)
    if isinstance(spec.rank_pattern, (str, Path)):
        spec.rank_pattern = load_rank_map(spec.rank_pattern, f"{flag}.rank_pattern")
    return spec


def save_merged(model: nn.Module, out_dir: str | Path) -> Path:
    """Save ``model`` (a timm ViT, adapted or not) with adapters merged, as a timm model folder.

    The model itself is not modified (a copy is merged). Returns the folder.
    """
    from timm.models._hub import save_for_hf

    out_dir = Path(out_dir)
    merged = merge_lora(copy.deepcopy(model)).eval()
    save_for_hf(merged, out_dir)
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
    model: nn.Module, out_dir: str | Path, dropout: float = 0.0, head: str | None = "head"
) -> Path:
    """Save the adapters of ``model`` (and its trained ``head``) in peft's LoRA format.

    peft itself writes the folder: the adapters are copied into a peft model built on the
    un-adapted encoder, with every adapted module listed by its full name with its own rank and
    alpha, and the head as a ``modules_to_save`` entry (it trains with the adapters). Loading it
    with ``PeftModel.from_pretrained`` on a timm model holding the same pretrained encoder
    reproduces the adapted classifier. Returns the folder.
    """
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
    )
    peft_model = get_peft_model(strip_lora(model), config)
    inner = peft_model.base_model.model
    for name, view in layers.items():
        target = inner.get_submodule(name)
        target.lora_A["default"].weight.copy_(view.lora_a)
        target.lora_B["default"].weight.copy_(view.lora_b)
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
