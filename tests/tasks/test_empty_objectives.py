"""Settings that leave nothing to learn are refused when the task is made; the settings just inside
the boundary still train. (The one-line CLI messages are rows of tests/cli/test_bad_input.py.)"""

from __future__ import annotations

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from maskrank.cli import main
from maskrank.errors import ConfigError
from maskrank.models.dropout import DropoutSpec
from maskrank.models.lora import LoRASpec
from maskrank.models.masking import MaskingSpec, make_masking
from maskrank.optim import OptimizerSpec
from maskrank.tasks import ImageClassifier
from testkit.resume import tiny_mae_model, write_config
from testkit.tiny import tiny_mae

GRIDS = [(4, 4), (7, 7), (14, 14)]  # 16 (the tiny ViT), 49, 196 patches


def _ratios_near_one_masked_patch(length: int) -> list[float]:
    # int(L (1 - r)) drops below L for any r > 0 that survives the float product
    return [0.0, 1e-17, 1e-9, 0.5 / length, 1.5 / length, 0.75]


@pytest.mark.parametrize("strategy", ["random", "block"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda g: f"{g[0] * g[1]}patches")
def test_a_ratio_is_refused_exactly_when_its_masks_are_empty(grid, strategy):
    length = grid[0] * grid[1]
    for ratio in _ratios_near_one_masked_patch(length):
        masked = make_masking(strategy, 4, grid, ratio, generator=torch.Generator().manual_seed(0))
        empty = bool((masked.mask.sum(dim=1) == 0).any())
        for spec in (
            MaskingSpec(ratio, strategy=strategy),
            MaskingSpec(0.75, range=(ratio, 0.9), strategy=strategy),
            MaskingSpec(0.75, end=ratio, strategy=strategy),
        ):
            try:
                spec.check_patches(length)
                refused = False
            except ConfigError as err:
                refused = True
                assert f"none of the model's {length} patches" in str(err)
            assert refused == empty, (spec, length)


def test_grid_masking_is_checked_before_training():
    MaskingSpec(0.9375, strategy="grid").check_patches(16)  # 1 of 16 patches visible
    with pytest.raises(ConfigError, match=r"mask_ratio = 0\.5$"):
        MaskingSpec(0.5, strategy="grid").check_patches(16)
    with pytest.raises(ConfigError, match="mask_ratio = 0.0 masks none"):
        MaskingSpec(0.0, strategy="grid").check_patches(16)  # stride 1: every patch visible
    with pytest.raises(ConfigError, match="mask_ratio_end is set but masking is grid"):
        MaskingSpec(0.75, end=0.8889, strategy="grid").check_patches(16)


@pytest.mark.parametrize("strategy, ratio", [("random", 0.999), ("block", 0.999), ("grid", 0.9375)])
def test_the_highest_ratios_keep_one_patch_and_still_learn(strategy, ratio):
    model = tiny_mae()
    MaskingSpec(ratio, strategy=strategy).check_patches(model.mae.num_patches)  # accepted
    images = torch.randn(4, 3, 32, 32)
    masking = make_masking(strategy, 4, model.mae.grid, ratio)
    assert masking.ids_keep.shape == (4, 1)  # one visible patch per image for the encoder
    loss = model.mae.training_loss(images, ratio, strategy)
    loss.backward()
    assert torch.isfinite(loss) and loss > 0
    grads = [p.grad for p in model.mae.encoder.blocks.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_the_smallest_ratio_that_masks_one_patch_trains(tmp_path):
    # 0.04 on 16 patches: round(16 x 0.96) = 15 visible, one masked patch to reconstruct
    cfg = write_config(tmp_path / "mae.yaml", tmp_path / "runs", tiny_mae_model(), max_epochs=1)
    ratio = ["--model.init_args.mask_ratio_range", "null", "--model.init_args.mask_ratio", "0.04"]
    steps = ["--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "1"]
    main(["fit", "-c", str(cfg), *ratio, *steps])
    (events,) = (tmp_path / "runs" / "exp" / "version_0").glob("events.out.tfevents.*")
    acc = EventAccumulator(str(events))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")] + [
        e.value for e in acc.Scalars("val/loss")
    ]
    assert losses and all(v > 0 for v in losses)


def _classifier(spec, **kw) -> ImageClassifier:
    return ImageClassifier(vit=spec, num_classes=4, img_size=32, **kw)


EXPLICIT = DropoutSpec(variant="feature", rate=0.2, mode="explicit")
PENALTY_CASES = {
    "finetune": dict(adaptation="finetune"),
    "lora on qkv": dict(adaptation="lora", lora=LoRASpec(targets=["qkv"])),
    "lora on fc2 (peft calls the wrapped fc2)": dict(
        adaptation="lora", lora=LoRASpec(targets=["fc2"], engine="peft")
    ),
    "linear probe": dict(adaptation="linear_probe"),
    "lora on fc2": dict(adaptation="lora", lora=LoRASpec(targets=["fc2"])),
    "pissa on fc2": dict(adaptation="lora", lora=LoRASpec(targets=["fc2"], init="pissa")),
    "deep lora on fc2": dict(adaptation="lora", lora=LoRASpec(targets=["fc2"], depth=3)),
}


@pytest.mark.parametrize("case", PENALTY_CASES.values(), ids=PENALTY_CASES.keys())
def test_an_accepted_explicit_penalty_is_computed_and_trains_something(tiny_spec, case):
    try:
        model = _classifier(tiny_spec, dropout=EXPLICIT, **case)
    except ConfigError as err:
        assert err.field == "dropout"
        return
    model.train()
    model.explicit_dropout.reset()
    model(torch.randn(4, 3, 32, 32))
    penalty = model.explicit_dropout.pop()
    assert penalty > 0 and penalty.requires_grad
    penalty.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_the_refused_penalty_cases_are_the_ones_that_would_compute_nothing(tiny_spec):
    # the other half of the invariant: each refusal above stands for a penalty that stays 0
    for case in ("linear probe", "lora on fc2", "pissa on fc2", "deep lora on fc2"):
        with pytest.raises(ConfigError, match=r"^model\.init_args\.dropout"):
            _classifier(tiny_spec, dropout=EXPLICIT, **PENALTY_CASES[case])


def test_settings_at_the_adaptation_boundaries_still_build(tiny_spec):
    # a dropout spec at rate 0 is the disabled form: nothing is silently ignored by a probe
    _classifier(tiny_spec, adaptation="linear_probe", dropout=DropoutSpec(rate=0.0))
    # GaLore on what the adaptation leaves trainable: the adapters and the head
    galore = OptimizerSpec(name="galore_adamw", rank=2, targets=["lora_A", "head"])
    _classifier(tiny_spec, adaptation="lora", optimizer=galore)
    # rank 0 switches one layer's adapter off while others stay
    model = _classifier(tiny_spec, adaptation="lora", lora=LoRASpec(rank_pattern={"qkv": 0}))
    adapted = [n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]
    assert adapted and not any(".qkv." in n for n in adapted)
