"""``model.init_args.optimizer``: which optimizer a task builds, and building it.

``adamw`` is torch's AdamW over the weight-decay / layer-decay groups of
:func:`maskrank.optim.adamw.param_groups`; ``galore_adamw`` (SCIENCE.md §8) is
:class:`maskrank.optim.galore.GaLoreAdamW` over the same groups, each split into its GaLore targets
(trainable 2-D weights whose module name ends with one of ``targets``) and the rest (plain AdamW).
Every per-parameter decision is made by name on the unwrapped model (:func:`plan_optimizer`), so
a sharding strategy cannot change it; GaLore on sharded targets is refused.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.distributed.tensor import DTensor

from maskrank.errors import ConfigError
from maskrank.optim.adamw import default_fused, param_groups
from maskrank.optim.galore import PROJ_TYPES, GaLoreAdamW
from maskrank.optim.plan import (
    NO_WEIGHT_DECAY,
    OptimizerPlan,
    plan_parameters,
    planned_parameters,
)
from maskrank.optim.projection import PROJECTIONS

OPTIMIZERS: tuple[str, ...] = ("adamw", "galore_adamw")
DEFAULT_TARGETS: tuple[str, ...] = ("qkv", "proj", "fc1", "fc2")

__all__ = [
    "OPTIMIZERS",
    "OptimizerSpec",
    "as_optimizer_spec",
    "build_optimizer",
    "galore_targets",
    "plan_optimizer",
]


@dataclass
class OptimizerSpec:
    """The optimizer of a task (``model.init_args.optimizer``).

    Attributes:
        name: ``adamw`` or ``galore_adamw`` (GaLore on ``targets``, AdamW on everything else).
        rank: GaLore rank ``r``; at most the smaller side of every target matrix.
        update_proj_gap: optimizer steps between refreshes of the projection (SVD of the gradient).
        scale: GaLore's ``α``: the projected-back Adam step is multiplied by it.
        proj_type: ``std`` (project the smaller side of each matrix), ``reverse_std``, ``left``
            or ``right``.
        projection: how a refresh finds the top-``rank`` subspace of the gradient
            (:mod:`maskrank.optim.projection`): ``svd`` (exact), ``randomized`` (randomized range
            finder) or ``power`` (block power iteration from the previous basis).
        refresh_similarity: None (every target refreshes every ``update_proj_gap`` steps) or a
            threshold ``τ`` in (0, 1]: adaptive refresh, where a target whose new basis has
            subspace similarity ``>= τ`` with the one in use keeps it and doubles its own gap (up
            to 8 ``update_proj_gap``); see :mod:`maskrank.optim.galore`.
        targets: module-name suffixes of the 2-D weights trained with GaLore (``qkv`` matches
            ``blocks.3.attn.qkv``); by default the attention and MLP weights of encoder and
            decoder blocks (``proj`` never matches the patch embedding: it is a 4-D conv kernel).
    """

    name: str = "adamw"
    rank: int = 32
    update_proj_gap: int = 200
    scale: float = 0.25
    # str, not the Literal types: the command line passes any value through to
    # __post_init__, whose one-line ConfigError names the flag (a Literal would make the parser
    # reject it with a multi-line message)
    proj_type: str = "std"
    projection: str = "svd"
    refresh_similarity: float | None = None
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ConfigError(
                f"{{field}} = {self.name!r} is not a known optimizer; expected one of "
                f"{', '.join(OPTIMIZERS)}",
                "optimizer.name",
            )
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ConfigError(
                f"{{field}} = {self.rank!r} must be an integer >= 1", "optimizer.rank"
            )
        if (
            isinstance(self.update_proj_gap, bool)
            or not isinstance(self.update_proj_gap, int)
            or self.update_proj_gap < 1
        ):
            raise ConfigError(
                f"{{field}} = {self.update_proj_gap!r} must be an integer >= 1",
                "optimizer.update_proj_gap",
            )
        if not self.scale > 0:
            raise ConfigError(f"{{field}} = {self.scale!r} must be > 0", "optimizer.scale")
        if self.proj_type not in PROJ_TYPES:
            raise ConfigError(
                f"{{field}} = {self.proj_type!r}; expected one of {', '.join(PROJ_TYPES)}",
                "optimizer.proj_type",
            )
        if self.projection not in PROJECTIONS:
            raise ConfigError(
                f"{{field}} = {self.projection!r}; expected one of {', '.join(PROJECTIONS)}",
                "optimizer.projection",
            )
        tau = self.refresh_similarity
        if tau is not None and (
            isinstance(tau, bool) or not isinstance(tau, int | float) or not 0 < tau <= 1
        ):
            raise ConfigError(
                f"{{field}} = {tau!r}; expected null (refresh every update_proj_gap steps) or "
                "a subspace similarity in (0, 1]",
                "optimizer.refresh_similarity",
            )
        if self.name == "adamw":
            for key, default in (("projection", "svd"), ("refresh_similarity", None)):
                if getattr(self, key) != default:
                    raise ConfigError(
                        f"{{field}} = {getattr(self, key)!r} applies to galore_adamw only, but "
                        "optimizer.name is adamw; expected name: galore_adamw or no "
                        f"{key}",
                        f"optimizer.{key}",
                    )
        self.targets = list(self.targets)
        if not self.targets:
            raise ConfigError(
                "{field} is empty; expected module-name suffixes", "optimizer.targets"
            )


def as_optimizer_spec(value: OptimizerSpec | dict | None) -> OptimizerSpec:
    """An OptimizerSpec from a spec, its ``asdict`` form (checkpoint hparams) or None (AdamW)."""
    if value is None:
        return OptimizerSpec()
    if isinstance(value, OptimizerSpec):
        return OptimizerSpec(**{f.name: getattr(value, f.name) for f in fields(OptimizerSpec)})
    known = {f.name for f in fields(OptimizerSpec)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {{field}}; expected {sorted(known)}", "optimizer"
        )
    return OptimizerSpec(**value)


def _matches(name: str, targets: list[str]) -> bool:
    module = name.removesuffix(".weight")
    return name.endswith(".weight") and any(
        module == t or module.endswith("." + t) for t in targets
    )


def galore_targets(module: nn.Module, spec: OptimizerSpec) -> dict[str, nn.Parameter]:
    """The trainable 2-D weights GaLore trains, by parameter name; checks ``targets`` and ``rank``.

    Raises:
        ConfigError: no trainable 2-D weight matches ``targets``, or ``rank`` exceeds the smaller
            side of a matched matrix.
    """
    found = {
        name: p
        for name, p in module.named_parameters()
        if p.requires_grad and p.ndim == 2 and _matches(name, spec.targets)
    }
    if not found:
        # the weights a target names whether or not they train (a LoRA adapter wraps the layer
        # it adapts: blocks.0.attn.qkv.base_layer.weight is still qkv's weight)
        frozen = [
            name
            for name, p in module.named_parameters()
            if p.ndim == 2 and _matches(name.replace(".base_layer.", "."), spec.targets)
        ]
        if frozen:  # e.g. the encoder that adaptation linear_probe or lora freezes
            raise ConfigError(
                f"{{field}} = {spec.targets} match only frozen weights ({frozen[0]} and "
                f"{len(frozen) - 1} more): GaLore would train nothing; name trainable 2-D "
                "weights (the adapters' or the head's) or use optimizer.name: adamw",
                "optimizer.targets",
            )
        raise ConfigError(
            f"{{field}} = {spec.targets} match no trainable 2-D weight of the model "
            "(expected module-name suffixes such as qkv, proj, fc1, fc2)",
            "optimizer.targets",
        )
    for name, p in found.items():
        if spec.rank > min(p.shape):
            raise ConfigError(
                f"{{field}} = {spec.rank} exceeds the smaller side of {name} "
                f"{tuple(p.shape)}; expected rank <= {min(p.shape)}",
                "optimizer.rank",
            )
    return found


def plan_optimizer(
    module: nn.Module,
    spec: OptimizerSpec,
    layer_decay: float = 1.0,
    no_weight_decay: Collection[str] = NO_WEIGHT_DECAY,
) -> OptimizerPlan:
    """The decisions of :func:`build_optimizer` for the unwrapped ``module``, made by name.

    Record it before any strategy wraps or shards ``module`` (a task's ``__init__``) and pass it
    to :func:`build_optimizer`; for ``galore_adamw`` it checks ``targets`` and ``rank`` here.
    ``no_weight_decay`` is the stage's skip list (:mod:`maskrank.optim.plan`): none for
    pretraining, the ViT's ``no_weight_decay()`` for fine-tuning and every adaptation.
    """
    targets = galore_targets(module, spec) if spec.name == "galore_adamw" else {}
    return plan_parameters(
        module, layer_decay, galore=set(targets), no_weight_decay=no_weight_decay
    )


def build_optimizer(
    module: nn.Module,
    spec: OptimizerSpec,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float],
    fused: bool | None = None,
    layer_decay: float = 1.0,
    plan: OptimizerPlan | None = None,
    strategy: str | None = None,
) -> torch.optim.Optimizer:
    """The optimizer ``spec`` names over ``module``'s trainable parameters.

    Both share the weight-decay and layer-decay groups (see :func:`maskrank.optim.adamw.adamw`);
    for ``galore_adamw`` every group is split into a GaLore part (its targets) and a plain part.
    ``plan`` (:func:`plan_optimizer` of the unwrapped model) makes every decision when ``module``
    is wrapped or sharded; without it they are made now from ``module``. ``strategy`` names the
    training strategy in the error that refuses GaLore on sharded targets.

    Raises:
        ConfigError: ``galore_adamw`` with a target that is sharded (a DTensor or a flat shard):
            GaLore takes the SVD of each target's whole gradient matrix.
    """
    if plan is None:
        plan = plan_optimizer(module, spec, layer_decay)
    groups = param_groups(module, lr, weight_decay, layer_decay, plan)
    if fused is None:
        fused = default_fused(groups)
    if spec.name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)
    targets = set()
    for name, p, entry in planned_parameters(module, plan):
        if not entry.galore:
            continue
        if isinstance(p, DTensor) or tuple(p.shape) != entry.shape:
            raise ConfigError(
                f"{{field}} = galore_adamw needs each target's whole matrix (the SVD of its "
                f"gradient), but {name} {entry.shape} is sharded ({type(p).__name__} of local "
                f"shape {tuple(_local(p).shape)}) under {strategy or 'a sharding wrapper'}; "
                "expected adamw with this strategy, or galore_adamw with DDP or on one device",
                "optimizer.name",
            )
        targets.add(id(p))
    galore = dict(
        rank=spec.rank,
        update_proj_gap=spec.update_proj_gap,
        scale=spec.scale,
        proj_type=spec.proj_type,
        projection=spec.projection,
        refresh_similarity=spec.refresh_similarity,
    )
    split: list[dict] = []
    for group in groups:
        inside = [p for p in group["params"] if id(p) in targets]
        outside = [p for p in group["params"] if id(p) not in targets]
        if outside:
            split.append({**group, "params": outside})
        if inside:
            split.append({**group, "params": inside, **galore})
    return GaLoreAdamW(split, lr=lr, betas=betas, fused=bool(fused))


def _local(p: torch.Tensor) -> torch.Tensor:
    """The shard this process holds (a DTensor's local tensor; any other tensor itself)."""
    return p.to_local() if isinstance(p, DTensor) else p
