"""Put adapters on a timm ViT's Linear layers (maskrank's engine or peft's) and merge them back."""

from __future__ import annotations

import copy

import torch
from torch import nn

from maskrank.errors import ConfigError
from maskrank.models.lora.deep import DeepLoRALinear
from maskrank.models.lora.init import check_init_rank, pissa_init
from maskrank.models.lora.layer import LoRALinear, LoRAView, delta_weight, lora_layers, unmerge_all
from maskrank.models.lora.spec import LoRASpec, adapter_rank, target_matches

__all__ = ["apply_lora", "merge_lora"]


def apply_lora(model: nn.Module, spec: LoRASpec) -> dict[str, LoRAView]:
    """Put adapters on ``model``'s Linear layers named by ``spec`` and freeze everything else.

    Returns the adapted layers; every other parameter of ``model`` has ``requires_grad = False``
    (the caller unfreezes what it trains besides, e.g. a classifier head).

    Raises:
        ConfigError: targets that match no Linear layer (naming ``lora.targets`` and the layer
            names that exist), or a rank pattern that leaves no adapter.
    """
    linears = {n: m for n, m in model.named_modules() if type(m) is nn.Linear}
    chosen: dict[str, tuple[int, float]] = {}
    for target in spec.targets:
        hits = [n for n in linears if target_matches(n, target)]
        if not hits:
            examples = sorted({n.split(".")[-1] for n in linears}) or ["(none)"]
            raise ConfigError(
                f"LoRA target {target!r} ({{field}}) matches no Linear layer of the encoder; "
                f"Linear layer names end in: {', '.join(examples)}",
                "lora.targets",
            )
        for name in hits:
            chosen[name] = adapter_rank(name, spec)
    chosen = {n: ra for n, ra in chosen.items() if ra[0] > 0}
    if not chosen:
        raise ConfigError("{field} sets every targeted layer to rank 0", "lora.rank_pattern")
    if spec.init != "default" and spec.init != "gaussian":  # SVD-based inits
        for name, (r, _) in chosen.items():
            check_init_rank(name, r, linears[name].weight.shape, spec.init)
    model.requires_grad_(False)
    if spec.engine == "peft":
        _inject_peft(model, spec, chosen)
        return lora_layers(model)
    for name, (r, alpha) in chosen.items():
        if spec.depth == 3:
            layer = DeepLoRALinear(linears[name], r, alpha, spec.init_scale, spec.dropout)
        else:
            layer = LoRALinear(linears[name], r, alpha, spec.dropout)
            if spec.init == "pissa":
                pissa_init(layer)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    # init: gradient needs training batches: the task calls gradient_init when fitting starts
    return lora_layers(model)


def _inject_peft(model: nn.Module, spec: LoRASpec, chosen: dict[str, tuple[int, float]]) -> None:
    # peft imports transformers (seconds), so only the peft engine pays for it
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(
        r=spec.r,
        lora_alpha=spec.alpha,
        lora_dropout=spec.dropout,
        target_modules=sorted(chosen),
        rank_pattern={n: r for n, (r, _) in chosen.items()},
        alpha_pattern={n: a for n, (_, a) in chosen.items()},
        init_lora_weights=True if spec.init == "default" else spec.init,
        use_dora=spec.use_dora,
        use_rslora=spec.use_rslora,
    )
    inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        param.requires_grad_("lora_" in name)


@torch.no_grad()
def _merged_weight(module: nn.Module, view: LoRAView) -> torch.Tensor:
    """The weight that replaces an adapted layer: ``W₀ + ΔW``, or peft's own merge for DoRA."""
    if any(getattr(module, "use_dora", {}).values()):
        merged = copy.deepcopy(module)
        merged.merge()  # DoRA rescales W₀ + ΔW column-wise by its magnitude vector
        return merged.base_layer.weight.detach()
    return view.base.weight + delta_weight(view).to(view.base.weight.dtype)


@torch.no_grad()
def merge_lora(model: nn.Module) -> nn.Module:
    """Replace every adapted layer by a plain ``nn.Linear`` holding ``W₀ + (α/r) B A``.

    (Deep LoRA: ``W₀ + (α/r) W₃W₂W₁``; peft's DoRA: peft's own merge.)

    Works on maskrank's and peft's layers, in place; returns ``model`` (a plain timm model again).
    A model without adapters is returned unchanged, so merging twice equals merging once.
    """
    unmerge_all(model)  # layers merged in place go back to W₀ first
    for name, view in lora_layers(model).items():
        base = view.base
        merged = nn.Linear(
            base.in_features,
            base.out_features,
            bias=base.bias is not None,
            device=base.weight.device,
            dtype=base.weight.dtype,
        )
        merged.weight.copy_(_merged_weight(model.get_submodule(name), view))
        if base.bias is not None:
            merged.bias.copy_(base.bias)
        merged.requires_grad_(base.weight.requires_grad)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, merged)
    return model
