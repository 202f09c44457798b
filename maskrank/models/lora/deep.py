"""Deep LoRA: a three-factor adapter whose training compresses (Yaras et al. 2024, SCIENCE.md §8).

``ΔW = (α/r) W₃ W₂ W₁`` with ``W₁`` (r, k), ``W₂`` (r, r), ``W₃`` (d, r), each started as
``init_scale`` x a (semi-)orthogonal matrix. Under gradient descent from such a start each factor
changes only inside a low-dimensional invariant subspace; its other singular values stay at
``init_scale``, so the product ``M = W₃W₂W₁`` has a few large singular values and a tail of
``init_scale``-sized paths. :func:`compress_deep_lora` restricts each factor to the subspaces the
end-to-end map uses: with ``U_c``, ``V_c`` the top-``r_c`` singular vectors of ``M`` and ``P₁``,
``P₂`` orthonormal bases of ``W₁V_c`` and ``W₂W₁V_c`` (r, r_c),
``W₁ ← P₁ᵀW₁V_cV_cᵀ``, ``W₂ ← P₂ᵀW₂P₁``, ``W₃ ← U_cU_cᵀW₃P₂``. The new product is
``U_cU_cᵀ M V_cV_cᵀ``, the best rank-``r_c`` approximation of ``M``: ``ΔW`` changes by the
discarded tail only (measured and returned), each factor keeps its own scale, and training goes on
at width ``r_c``. The forward is maskrank's LoRA kernel with ``A = W₂W₁`` and ``B = W₃``.

The parameters keep their shapes (so checkpoints, optimizers and resume need nothing special): a
compressed layer holds its factors in the leading ``r_c`` block, zeros elsewhere, and computes with
that block only (the ``width`` buffer); the rest gets exactly zero gradient and stays zero.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from maskrank.models.lora.kernel import lora_linear

__all__ = [
    "DeepLoRALinear",
    "balanced_factors",
    "compress_deep_lora",
    "deep_layers",
    "factor_parameters",
]


class DeepLoRALinear(nn.Module):
    """An ``nn.Linear`` with a Deep LoRA adapter ``(α/r) W₃ W₂ W₁``.

    Args:
        base_layer: the frozen pretrained layer (kept as a submodule, not copied).
        r: the adapter's width before compression (>= 1); the scale ``α/r`` never changes.
        alpha: scale numerator.
        init_scale: every factor starts as ``init_scale`` x a (semi-)orthogonal matrix.
        dropout: dropout on the adapter input in training.
    """

    def __init__(
        self,
        base_layer: nn.Linear,
        r: int,
        alpha: float,
        init_scale: float = 1e-3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.base_layer = base_layer
        kw = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        d, k = base_layer.out_features, base_layer.in_features
        self.w1 = nn.Parameter(torch.empty(r, k, **kw))
        self.w2 = nn.Parameter(torch.empty(r, r, **kw))
        self.w3 = nn.Parameter(torch.empty(d, r, **kw))
        for w in (self.w1, self.w2, self.w3):
            nn.init.orthogonal_(w, gain=init_scale)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.r, self.alpha, self.scaling = r, float(alpha), float(alpha) / r
        self.init_scale = float(init_scale)
        self.register_buffer("compressed", torch.tensor(False))
        self.register_buffer("active_width", torch.tensor(r))

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

    @property
    def width(self) -> int:
        """The current inner width (``r``, or ``r_c`` after compression)."""
        return int(self.active_width)

    def factors(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(W₁, W₂, W₃)`` at the current width: (w, k), (w, w), (d, w) views."""
        w = self.width
        return self.w1[:w], self.w2[:w, :w], self.w3[:, :w]

    def delta_weight(self) -> Tensor:
        """``(α/r) W₃ W₂ W₁`` (d, k)."""
        w1, w2, w3 = self.factors()
        return self.scaling * (w3 @ (w2 @ w1))

    def forward(self, x: Tensor) -> Tensor:
        x_lora = None if isinstance(self.lora_dropout, nn.Identity) else self.lora_dropout(x)
        w, b = self.base_layer.weight, self.base_layer.bias
        w1, w2, w3 = self.factors()
        return lora_linear(x, w, b, w2 @ w1, w3, self.scaling, x_lora)

    def extra_repr(self) -> str:
        return f"r={self.r}, width={self.width}, alpha={self.alpha:g}"


def _basis(m: Tensor, width: int) -> Tensor:
    """An orthonormal basis (rows, width) of the column space of ``m`` (rows, width)."""
    return torch.linalg.svd(m, full_matrices=False)[0][:, :width]


@torch.no_grad()
def compress_deep_lora(model: nn.Module, r_c: int) -> dict[str, float]:
    """Compress every uncompressed :class:`DeepLoRALinear` of ``model`` to width ``min(r_c, r)``.

    The parameters keep their identity and shape (the leading block is rewritten, the rest
    zeroed); their optimizer state describes the old factors and should be dropped
    (:func:`factor_parameters`). Returns, per module, the relative change
    ``‖ΔW_after - ΔW_before‖_F / ‖ΔW_before‖_F``.
    """
    changes: dict[str, float] = {}
    for name, layer in model.named_modules():
        if not isinstance(layer, DeepLoRALinear) or bool(layer.compressed):
            continue
        before = layer.delta_weight().double()
        w1, w2, w3 = (w.double() for w in layer.factors())  # (r, k), (r, r), (d, r)
        width = min(r_c, layer.width)
        u, _, vh = torch.linalg.svd(w3 @ (w2 @ w1), full_matrices=False)
        u_c, v_c = u[:, :width], vh[:width].t()  # (d, r_c), (k, r_c)
        p1 = _basis(w1 @ v_c, width)  # (r, r_c)
        p2 = _basis(w2 @ p1 @ (p1.t() @ w1 @ v_c), width)  # (r, r_c)
        new = (p1.t() @ w1 @ v_c @ v_c.t(), p2.t() @ w2 @ p1, u_c @ (u_c.t() @ w3 @ p2))
        layer.active_width.fill_(width)
        for param, view, value in zip(
            (layer.w1, layer.w2, layer.w3), layer.factors(), new, strict=True
        ):
            param.zero_()
            view.copy_(value)
        layer.compressed.fill_(True)
        after = layer.delta_weight().double()
        changes[name] = float((after - before).norm() / before.norm().clamp_min(1e-30))
    return changes


def deep_layers(model: nn.Module) -> dict[str, DeepLoRALinear]:
    """Every :class:`DeepLoRALinear` of ``model`` by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, DeepLoRALinear)}


@torch.no_grad()
def balanced_factors(lora_b: Tensor, lora_a: Tensor) -> tuple[Tensor, Tensor]:
    """``(B', A')`` with ``B'A' = B A`` and ``B' = U √S``, ``A' = √S Vᵀ`` (the SVD of ``B A``).

    ``B`` (d, w), ``A`` (w, k); via thin QR factors, so ``B A`` (d, k) is never formed.
    """
    q_b, r_b = torch.linalg.qr(lora_b.double())  # (d, w), (w, w)
    q_a, r_a = torch.linalg.qr(lora_a.double().t())  # (k, w), (w, w)
    u, s, vh = torch.linalg.svd(r_b @ r_a.t())
    root = s.sqrt()
    b = (q_b @ u) * root
    a = root[:, None] * (vh @ q_a.t())
    return b.to(lora_b.dtype), a.to(lora_a.dtype)


def factor_parameters(model: nn.Module, names: list[str]) -> list[nn.Parameter]:
    """The full factor parameters of the Deep LoRA layers ``names`` of ``model``."""
    return [p for n in names for p in model.get_submodule(n).parameters(recurse=False)]
