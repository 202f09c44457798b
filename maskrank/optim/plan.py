"""Optimizer decisions per parameter, made by name on the unwrapped model before any sharding.

A sharding strategy changes what ``named_parameters()`` yields by the time an optimizer is built:
FSDP1 with ``use_orig_params=True`` turns every parameter into a flat 1-D shard (size 0 on the
ranks that hold none of it) under a ``_fsdp_wrapped_module.`` prefix, FSDP2 turns it into a
DTensor. Rules that look at a tensor's ``ndim`` or shape would then silently decay nothing, or find
no GaLore target. So the task records an :class:`OptimizerPlan` when it is built (its
``__init__``: no wrapper exists yet) and the optimizer maps the live, possibly wrapped, parameters
to it by name (:func:`planned_parameters`).

The rules (the same as timm's ``param_groups_weight_decay`` / ``param_groups_layer_decay``):

* weight decay on every tensor except biases, tensors with ``ndim <= 1`` and the names of a skip
  list (:func:`decays`). The skip list depends on the stage, as in MAE: pretraining has none
  (:data:`NO_WEIGHT_DECAY`; MAE's ``add_weight_decay`` without a skip list, so the 3-D
  ``cls_token`` and ``mask_token`` are decayed), while fine-tuning, linear probing and every
  adaptation skip the ViT's own ``no_weight_decay()`` set (:func:`model_no_weight_decay`:
  ``pos_embed``, ``cls_token``, ``dist_token``, ``reg_token``, as MAE's ``param_groups_lrd``
  is given ``model.no_weight_decay()``), matched on the last components of the unwrapped names;
* ``layer_decay < 1``: timm's layer ids (the model's ``group_matcher``), layer ``i`` of
  ``0..L`` scaling the learning rate by ``layer_decay^(L - i)``;
* GaLore targets as chosen by :func:`maskrank.optim.spec.galore_targets` on the unwrapped model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

from timm.models import group_parameters
from timm.optim import auto_group_layers
from torch import nn

from maskrank.errors import ConfigError

__all__ = [
    "NO_WEIGHT_DECAY",
    "WRAPPER_PREFIXES",
    "OptimizerPlan",
    "ParamPlan",
    "clean_name",
    "decays",
    "model_no_weight_decay",
    "plan_parameters",
    "planned_parameters",
]

# Module names that wrappers insert into parameter names: FSDP1, activation checkpointing,
# torch.compile of a whole module.
WRAPPER_PREFIXES: tuple[str, ...] = (
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
    "_orig_mod.",
)

# The skip list of pretraining: parameter names (last components, e.g. "pos_embed") never decayed
# whatever their shape. Empty: only the shape/bias rule applies, as MAE's pretraining does; the
# later stages pass the ViT's own list instead (model_no_weight_decay).
NO_WEIGHT_DECAY: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParamPlan:
    """What the optimizer does with one trainable parameter.

    Attributes:
        decay: weight decay applies (else its group has ``weight_decay = 0``).
        lr_scale: factor on the learning rate (layer-wise decay; 1.0 without it).
        galore: trained by GaLore (a 2-D target) rather than plain AdamW.
        shape: its shape on the unwrapped model, to tell a sharded live tensor from the full one.
    """

    decay: bool
    lr_scale: float
    galore: bool
    shape: tuple[int, ...]


@dataclass(frozen=True)
class OptimizerPlan:
    """The decisions for every trainable parameter of a module, keyed by unwrapped name.

    Attributes:
        params: trainable parameter name -> its :class:`ParamPlan`, in the module's order.
        layer_decay: the layer-wise lr decay the scales came from (1.0: off). With it, groups are
            formed per (lr scale, decay) as timm's layer decay does; without it, one no-decay and
            one decay group.
        no_weight_decay: the skip list the decay decisions were made with (names that may be
            frozen, hence in no entry: e.g. ``pos_embed`` under LoRA).
    """

    params: Mapping[str, ParamPlan]
    layer_decay: float = 1.0
    no_weight_decay: frozenset[str] = frozenset()


def clean_name(name: str) -> str:
    """``name`` without the components wrappers insert (:data:`WRAPPER_PREFIXES`), anywhere."""
    for prefix in WRAPPER_PREFIXES:
        name = name.replace(prefix, "")
    return name


def decays(name: str, param: nn.Parameter, no_weight_decay: Collection[str] = ()) -> bool:
    """The weight-decay rule: not on biases, tensors with ``ndim <= 1`` or listed names.

    ``param`` is the unwrapped tensor (its true ``ndim``); ``no_weight_decay`` holds last name
    components, matched as ``name == n`` or ``name.endswith("." + n)``.
    """
    if param.ndim <= 1 or name.endswith(".bias"):
        return False
    return not any(name == n or name.endswith("." + n) for n in no_weight_decay)


def model_no_weight_decay(module: nn.Module) -> frozenset[str]:
    """The names ``module`` says never to decay: timm's ``no_weight_decay()`` (a
    ``VisionTransformer``: ``pos_embed``, ``cls_token``, ``dist_token``, ``reg_token``); empty for
    a module without that method."""
    method = getattr(module, "no_weight_decay", None)
    return frozenset(method()) if callable(method) else frozenset()


def _layer_scales(module: nn.Module, layer_decay: float) -> dict[str, float]:
    """timm's layer-wise lr scale of every parameter of ``module`` (all 1.0 when off)."""
    if layer_decay >= 1.0:
        return {name: 1.0 for name, _ in module.named_parameters()}
    if hasattr(module, "group_matcher"):
        layer_map = group_parameters(module, module.group_matcher(coarse=False), reverse=True)
    else:
        layer_map = auto_group_layers(module)
    layer_max = max(layer_map.values())
    return {
        name: layer_decay ** (layer_max - layer_map.get(name, layer_max))
        for name, _ in module.named_parameters()
    }


def plan_parameters(
    module: nn.Module,
    layer_decay: float = 1.0,
    galore: Collection[str] = (),
    no_weight_decay: Collection[str] = NO_WEIGHT_DECAY,
) -> OptimizerPlan:
    """The :class:`OptimizerPlan` of ``module``'s trainable parameters (call before any wrapping).

    Args:
        module: the unwrapped model whose parameters the optimizer will train.
        layer_decay: layer-wise lr decay in (0, 1] (``module`` then has timm's ``group_matcher``).
        galore: names of the parameters trained by GaLore (their 2-D targets).
        no_weight_decay: names never decayed (:func:`decays`): :data:`NO_WEIGHT_DECAY` for
            pretraining, :func:`model_no_weight_decay` of the ViT for the later stages.
    """
    scales = _layer_scales(module, layer_decay)
    params = {
        name: ParamPlan(
            decay=decays(name, p, no_weight_decay),
            lr_scale=scales[name],
            galore=name in galore,
            shape=tuple(p.shape),
        )
        for name, p in module.named_parameters()
        if p.requires_grad
    }
    return OptimizerPlan(params, layer_decay, frozenset(no_weight_decay))


def planned_parameters(
    module: nn.Module, plan: OptimizerPlan
) -> list[tuple[str, nn.Parameter, ParamPlan]]:
    """``module``'s live trainable parameters with their plan entries, in the module's order.

    ``module`` may be wrapped or sharded: names are compared after :func:`clean_name`.

    Raises:
        ConfigError: a live trainable parameter has no plan entry, or a plan entry names no live
            trainable parameter (the model changed after the task was built, or a wrapper renamed
            or merged its parameters, as FSDP without ``use_orig_params=True`` does).
    """
    live: dict[str, nn.Parameter] = {}
    for name, p in module.named_parameters():
        if p.requires_grad:
            live[clean_name(name)] = p
    extra = [name for name in live if name not in plan.params]
    missing = [name for name in plan.params if name not in live]
    if extra:
        raise ConfigError(
            f"trainable parameter {extra[0]!r} of the model being trained ({len(extra)} in all) "
            "is not in the optimizer plan made when the task was built; expected the same "
            "trainable parameter names (with FSDP set use_orig_params=True)"
        )
    if missing:
        raise ConfigError(
            f"the optimizer plan's parameter {missing[0]!r} ({len(missing)} in all) is not a "
            "trainable parameter of the model being trained; expected the same trainable "
            "parameter names as when the task was built"
        )
    return [(name, p, plan.params[name]) for name, p in live.items()]
