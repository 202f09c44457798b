"""The adapted layer (:class:`LoRALinear`) and an engine-independent view of adapted layers.

:class:`LoRALinear` uses peft's submodule names (``base_layer``, ``lora_A``, ``lora_B``,
``lora_dropout``), so an adapted model's keys map one-to-one onto a peft adapter
(:mod:`maskrank.models.lora.export`); its forward is :func:`~maskrank.models.lora.kernel.lora_linear`.
:func:`lora_layers` lists the adapted layers of either engine (maskrank's or peft's).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from maskrank.models.lora.deep import DeepLoRALinear, balanced_factors
from maskrank.models.lora.kernel import lora_linear

__all__ = ["LoRALinear", "LoRAView", "delta_weight", "lora_layers", "unmerge_all"]


class LoRALinear(nn.Module):
    """An ``nn.Linear`` with a low-rank adapter; peft's attribute names, maskrank's forward.

    Args:
        base_layer: the frozen pretrained layer (kept as a submodule, not copied).
        r: adapter rank (>= 1).
        alpha: the update is ``(alpha / r) B A``.
        dropout: dropout on the adapter input in training.
    """

    def __init__(self, base_layer: nn.Linear, r: int, alpha: float, dropout: float = 0.0) -> None:
        super().__init__()
        self.base_layer = base_layer
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, r, bias=False, **kw)
        self.lora_B = nn.Linear(r, base_layer.out_features, bias=False, **kw)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.merged = False
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # as nn.Linear and peft
        nn.init.zeros_(self.lora_B.weight)

    # timm and maskrank code read these from the layer it replaces
    @property
    def weight(self) -> Tensor:
        return self.base_layer.weight

    @property
    def bias(self) -> Tensor | None:
        return self.base_layer.bias

    @property
    def in_features(self) -> int:
        return self.base_layer.in_features

    @property
    def out_features(self) -> int:
        return self.base_layer.out_features

    def delta_weight(self) -> Tensor:
        """``(α/r) B A`` (d, k): what merging adds to the base weight."""
        return self.scaling * (self.lora_B.weight @ self.lora_A.weight)

    @torch.no_grad()
    def merge(self) -> None:
        """Add the update into ``base_layer.weight`` (idempotent: a second call does nothing)."""
        if not self.merged:
            self.base_layer.weight += self.delta_weight()
            self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo :meth:`merge` (up to float rounding)."""
        if self.merged:
            self.base_layer.weight -= self.delta_weight()
            self.merged = False

    def forward(self, x: Tensor) -> Tensor:
        if self.merged:
            return self.base_layer(x)
        x_lora = None if isinstance(self.lora_dropout, nn.Identity) else self.lora_dropout(x)
        w, b = self.base_layer.weight, self.base_layer.bias
        return lora_linear(x, w, b, self.lora_A.weight, self.lora_B.weight, self.scaling, x_lora)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha:g}, merged={self.merged}"


@dataclass
class LoRAView:
    """Engine-independent view of one adapted layer: base ``nn.Linear``, ``A``, ``B``, scale."""

    base: nn.Linear
    lora_a: Tensor  # (r, k)
    lora_b: Tensor  # (d, r)
    scaling: float
    alpha: float

    @property
    def r(self) -> int:
        return self.lora_a.shape[0]


def lora_layers(model: nn.Module) -> dict[str, LoRAView]:
    """Every adapted layer of ``model`` by module name, from maskrank's or peft's engine.

    A layer merged in place (:meth:`LoRALinear.merge`) is listed too: its ``base.weight`` then
    already holds ``W₀ + ΔW``. A Deep LoRA layer is viewed as the equivalent LoRA of its width:
    ``B A`` the SVD factors of ``W₃ W₂ W₁`` (detached copies) and ``alpha = scale · width``.
    """
    # peft imports transformers (seconds): a model holds peft layers only if peft is imported
    peft_lora = sys.modules.get("peft.tuners.lora")
    peft_linear = getattr(peft_lora, "Linear", ())
    views: dict[str, LoRAView] = {}
    for name, module in model.named_modules():
        if isinstance(module, LoRALinear):
            views[name] = LoRAView(
                module.base_layer,
                module.lora_A.weight,
                module.lora_B.weight,
                module.scaling,
                module.alpha,
            )
        elif isinstance(module, DeepLoRALinear):
            w1, w2, w3 = (w.detach() for w in module.factors())
            lora_b, lora_a = balanced_factors(w3, w2 @ w1)
            alpha = module.scaling * module.width
            views[name] = LoRAView(module.base_layer, lora_a, lora_b, module.scaling, alpha)
        elif peft_linear and isinstance(module, peft_linear):
            views[name] = LoRAView(
                module.base_layer,
                module.lora_A["default"].weight,
                module.lora_B["default"].weight,
                float(module.scaling["default"]),
                float(module.lora_alpha["default"]),
            )
    return views


def delta_weight(view: LoRAView) -> Tensor:
    """``(α/r) B A`` of one adapted layer (d, k), detached."""
    return view.scaling * (view.lora_b.detach() @ view.lora_a.detach())


def unmerge_all(model: nn.Module) -> None:
    """Undo every in-place merge (maskrank's or peft's), so base layers hold ``W₀`` again."""
    for module in model.modules():
        if getattr(module, "merged", False) and hasattr(module, "unmerge"):
            module.unmerge()
