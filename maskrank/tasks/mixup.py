"""Mixup and CutMix of training batches, as MAE's fine-tuning applies them (timm's ``Mixup``).

The batch arrives on the device already normalized (the datamodule's ``on_after_batch_transfer``);
:class:`BatchMixer` mixes a copy of it with its own reverse (image ``i`` with image ``B - 1 - i``)
and returns soft targets ``(B, K)``: each row ``λ · smooth(y_i) + (1 - λ) · smooth(y_{B-1-i})``
with the task's label smoothing folded in (timm's ``mixup_target``), so the loss is
:func:`soft_target_cross_entropy` and plain label smoothing is not applied on top. ``λ`` is drawn
by timm from numpy's global generator (Beta(α, α); for CutMix the box's true area fraction), which
Lightning's ``seed_everything`` seeds and :class:`~maskrank.callbacks.RngStateCheckpoint` saves,
so a resumed fit continues the same draws.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, get_args

import torch
from timm.data.mixup import Mixup, mixup_target

from maskrank.errors import ConfigError, check_interval

__all__ = ["MixMode", "BatchMixer", "MixupSpec", "as_mixup_spec", "soft_target_cross_entropy"]

MixMode = Literal["batch", "pair", "elem"]


@dataclass
class MixupSpec:
    """Mixup / CutMix of the training batches (``model.init_args.mixup``); MAE's values by default.

    Attributes:
        mixup_alpha: Beta(α, α) of the mixup weight λ; 0 turns mixup off.
        cutmix_alpha: Beta(α, α) of the CutMix area λ; 0 turns CutMix off.
        cutmix_minmax: ``(min, max)`` fraction of the image side of the CutMix box instead of
            ``cutmix_alpha`` (timm then forces CutMix on); None: drawn from ``cutmix_alpha``.
        prob: probability that a batch (or pair, element) is mixed at all.
        switch_prob: with both on, probability of CutMix instead of mixup.
        mode: one λ per ``batch`` (MAE), per ``pair`` of mirrored images, or per ``elem``ent.
    """

    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: MixMode = "batch"

    def __post_init__(self) -> None:
        check_interval(self.mixup_alpha, "mixup.mixup_alpha", 0.0)
        check_interval(self.cutmix_alpha, "mixup.cutmix_alpha", 0.0)
        check_interval(self.prob, "mixup.prob", 0.0, 1.0, high_open=False)
        check_interval(self.switch_prob, "mixup.switch_prob", 0.0, 1.0, high_open=False)
        if self.mode not in get_args(MixMode):
            raise ConfigError(
                f"{{field}} = {self.mode!r}: expected one of {', '.join(get_args(MixMode))}",
                "mixup.mode",
            )
        if self.cutmix_minmax is not None:
            low_high = tuple(float(v) for v in self.cutmix_minmax)
            if not (len(low_high) == 2 and 0.0 < low_high[0] < low_high[1] <= 1.0):
                raise ConfigError(
                    f"{{field}} = {self.cutmix_minmax!r}: expected (min, max) with "
                    "0 < min < max <= 1, or null",
                    "mixup.cutmix_minmax",
                )
            self.cutmix_minmax = low_high  # type: ignore[assignment]
        elif self.mixup_alpha == 0 and self.cutmix_alpha == 0:
            raise ConfigError(
                "{field} has mixup_alpha 0 and cutmix_alpha 0, which mixes nothing; set one > 0, "
                "or mixup: null to turn it off",
                "mixup",
            )


def as_mixup_spec(value: MixupSpec | dict[str, Any] | None) -> MixupSpec | None:
    """A spec from a spec, its ``asdict`` form (checkpoint hparams) or None (no mixing)."""
    if value is None or isinstance(value, MixupSpec):
        return value
    known = {f.name for f in fields(MixupSpec)}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in {{field}}; expected {sorted(known)}", "mixup"
        )
    return MixupSpec(**value)


def soft_target_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``mean_i Σ_k -t_ik log softmax(z_i)_k`` of logits and soft targets, both (B, K) (timm's
    ``SoftTargetCrossEntropy``), computed in float32."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(targets.float() * log_probs).sum(dim=-1).mean()


class BatchMixer:
    """timm's ``Mixup`` for one task: ``(images, labels) -> (mixed copy, soft targets (B, K))``.

    Args:
        spec: the mixing settings.
        num_classes: ``K``, the width of the soft targets.
        label_smoothing: folded into the targets (MAE's ``--smoothing`` with mixup).
    """

    def __init__(self, spec: MixupSpec, num_classes: int, label_smoothing: float) -> None:
        self.spec = spec
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.mixup = Mixup(
            **asdict(spec),
            label_smoothing=label_smoothing,
            num_classes=num_classes,
        )

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixed images (B, C, H, W), a new tensor, and their soft targets (B, K).

        timm mixes mirrored pairs, so it needs an even batch; the task refuses an odd
        ``data.batch_size``, and an odd batch left by skipped unreadable files has its last
        image passed through unmixed (its target only smoothed).
        """
        even = images.shape[0] - images.shape[0] % 2
        # timm mixes in place: mix a copy, so the batch other hooks see stays as loaded
        mixed, targets = self.mixup(images[:even].clone(), labels[:even])
        if even == images.shape[0]:
            return mixed, targets
        rest = mixup_target(labels[even:], self.num_classes, 1.0, self.label_smoothing)
        return torch.cat([mixed, images[even:]]), torch.cat([targets, rest])
