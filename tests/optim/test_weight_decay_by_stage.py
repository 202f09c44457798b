"""Weight decay by parameter name, per stage, in every optimizer path a task builds.

Pretraining decays every tensor but biases and 1-D ones (MAE's ``add_weight_decay`` without a
skip list: ``cls_token`` and ``mask_token`` are decayed); fine-tuning, linear probing, LoRA and
GaLore also skip the ViT's ``no_weight_decay()`` names (``pos_embed``, ``cls_token``, ...), as
MAE's fine-tuning does. Checked on the groups the task's own ``configure_optimizers`` builds.
"""

from __future__ import annotations

import pytest
import torch

from maskrank.models.lora import LoRASpec
from maskrank.models.vit import ViTSpec
from maskrank.optim import OptimizerSpec
from maskrank.tasks import ImageClassifier
from testkit.fsdp import configure, named_groups
from testkit.tiny import TINY_VIT, tiny_mae

VIT_SKIP = {"pos_embed", "cls_token", "dist_token", "reg_token"}  # timm's no_weight_decay()


def _classifier(**kw) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4, lr=1e-3, **kw)


CASES = {
    "pretrain": lambda: tiny_mae(fixed_pos_embed=False),  # a trainable pos_embed, decayed too
    "pretrain_galore": lambda: tiny_mae(optimizer=OptimizerSpec(name="galore_adamw", rank=4)),
    "finetune_layer_decay": lambda: _classifier(layer_decay=0.75),
    "finetune_galore": lambda: _classifier(
        layer_decay=0.75, optimizer=OptimizerSpec(name="galore_adamw", rank=4)
    ),
    "linear_probe": lambda: _classifier(adaptation="linear_probe"),
    "lora": lambda: _classifier(adaptation="lora", lora=LoRASpec(r=2)),
    "lora_peft": lambda: _classifier(adaptation="lora", lora=LoRASpec(r=2, engine="peft")),
}


def _decay_by_name(task) -> dict[str, bool]:
    """Trainable parameter name -> whether its optimizer group decays it."""
    groups = named_groups(task, configure(task, strategy=None))
    return {name: wd > 0 for names, _, wd, _ in groups for name in names}


@pytest.mark.parametrize("case", list(CASES))
def test_weight_decay_follows_the_rule_of_the_stage_by_name(case):
    task = CASES[case]()
    pretraining = case.startswith("pretrain")
    skip = set() if pretraining else VIT_SKIP
    assert set(task.optimizer_plan.no_weight_decay) == skip  # decided for the stage, not the shape
    params = dict(task.named_parameters())
    decay = _decay_by_name(task)
    assert decay and set(decay) == {n for n, p in params.items() if p.requires_grad}
    for name, decayed in decay.items():
        param = params[name]
        expected = param.ndim >= 2 and not name.endswith(".bias")
        expected = expected and name.rsplit(".", 1)[-1] not in skip
        assert decayed == expected, name
    if pretraining:  # MAE pretraining decays its 3-D tokens
        assert decay["mae.encoder.cls_token"] and decay["mae.mask_token"]
    if case == "pretrain":
        assert decay["mae.encoder.pos_embed"]
    if case.startswith("finetune"):  # trained, but never decayed when fine-tuning
        assert not decay["model.pos_embed"] and not decay["model.cls_token"]
        assert decay["model.blocks.0.attn.qkv.weight"] and decay["model.head.weight"]
    if case in ("linear_probe", "lora", "lora_peft"):  # the skipped names are frozen here
        assert not {"model.pos_embed", "model.cls_token"} & set(decay)
        assert decay["model.head.weight" if case != "linear_probe" else "model.head.1.weight"]
