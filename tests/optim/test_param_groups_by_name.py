"""The optimizer groups are decided by name on the unwrapped model, so sharding cannot change them.

Each task is wrapped as Lightning's strategies wrap it, on CPU, as rank 0 of 2 (torch's fake
process group: collectives do nothing, sharding happens as with two processes): FSDP1
(``FSDPStrategy``: the LightningModule is the root unit, the ViT blocks their own units,
``use_orig_params=True``: every parameter becomes a flat 1-D shard, under
``_fsdp_wrapped_module.`` inside the blocks) and FSDP2 (``fully_shard`` as in
``ModelParallelStrategy.configure_model``: every parameter becomes a DTensor). The task's own
``configure_optimizers`` then has to produce, name for name, the groups (decay, lr, trainables)
it produces unwrapped, with the stage's no-decay names (none for pretraining, the ViT's
``no_weight_decay()`` for the classifier); GaLore, which needs each target's whole matrix, is
refused in one line.
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from maskrank.errors import ConfigError
from maskrank.models.lora import LoRASpec
from maskrank.models.vit import ViTSpec
from maskrank.optim import OptimizerSpec, galore_targets, param_groups, plan_parameters
from maskrank.optim.plan import planned_parameters
from maskrank.tasks import ImageClassifier, MAEPretraining
from testkit.fsdp import configure, fsdp1_wrap, named_groups
from testkit.tiny import TINY_VIT, tiny_mae

fake_pg = pytest.importorskip("torch.testing._internal.distributed.fake_pg")

WRAPPERS = ("fsdp1", "fsdp2")
STRATEGY = {"fsdp1": FSDPStrategy, "fsdp2": ModelParallelStrategy}


@pytest.fixture
def process_group():
    """Rank 0 of a 2-process group (with 1 process FSDP would not shard at all)."""
    assert not dist.is_initialized()
    dist.init_process_group("fake", store=fake_pg.FakeStore(), rank=0, world_size=2)
    yield
    dist.destroy_process_group()


def _mae(**kw) -> MAEPretraining:
    return tiny_mae(**kw)


def _classifier(**kw) -> ImageClassifier:
    torch.manual_seed(0)
    return ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4, lr=1e-3, **kw)


def _shard(task, wrapper: str) -> None:
    """Shard ``task`` in place; check every weight became what a shape rule would misread."""
    if wrapper == "fsdp1":
        fsdp1_wrap(task)
        assert all(p.ndim == 1 for p in task.parameters())  # flat shards, frozen ones too
    else:
        task.shard(init_device_mesh("cpu", (2,)))
        vit = task.mae if isinstance(task, MAEPretraining) else task.model
        assert all(isinstance(p, DTensor) for p in vit.parameters())


CASES = {
    "pretrain": lambda: _mae(),
    "finetune_layer_decay": lambda: _classifier(layer_decay=0.75),
    "lora": lambda: _classifier(adaptation="lora", lora=LoRASpec(r=2)),
    "linear_probe": lambda: _classifier(adaptation="linear_probe"),
}


@pytest.mark.parametrize("wrapper", WRAPPERS)
@pytest.mark.parametrize("case", list(CASES))
def test_sharded_groups_equal_unwrapped_groups_by_name(process_group, case, wrapper):
    reference = CASES[case]()
    strategy = STRATEGY[wrapper]()
    expected = named_groups(reference, configure(reference, strategy))
    task = CASES[case]()
    _shard(task, wrapper)
    assert named_groups(task, configure(task, strategy)) == expected
    decayed = {n for names, _, wd, _ in expected if wd > 0 for n in names}
    trainable = {n for names, *_ in expected for n in names}
    assert decayed and not any(n.endswith(".bias") for n in decayed)
    # the no-decay set by name: MAE pretraining decays its 3-D tokens; every later stage skips
    # the ViT's no_weight_decay() names, whether they train (finetune) or are frozen
    skipped = {"pos_embed", "cls_token", "dist_token", "reg_token"}
    assert task.optimizer_plan.no_weight_decay == (set() if case == "pretrain" else skipped)
    if case == "pretrain":
        assert {"mae.encoder.cls_token", "mae.mask_token"} <= decayed
    else:
        assert not {n for n in decayed if n.rsplit(".", 1)[-1] in skipped}
    if case == "finetune_layer_decay":
        assert {"model.pos_embed", "model.cls_token"} <= trainable - decayed
    if case in ("pretrain", "finetune_layer_decay"):
        assert {"mae.encoder.blocks.0.attn.qkv.weight", "model.blocks.0.attn.qkv.weight"} & decayed
    if case == "finetune_layer_decay":
        assert len({lr for _, lr, _, _ in expected}) == 4  # embeddings, 2 blocks, head
    if case == "lora":
        assert trainable == {n for n in trainable if "lora_" in n or n.startswith("model.head.")}
        assert any("lora_" in n for n in decayed)
    if case == "linear_probe":
        assert trainable == {"model.head.1.weight", "model.head.1.bias"}


@pytest.mark.parametrize("wrapper", WRAPPERS)
def test_galore_finds_its_targets_by_name_and_refuses_shards(process_group, wrapper):
    spec = OptimizerSpec(name="galore_adamw", rank=4)
    reference = _mae(optimizer=spec)
    strategy = STRATEGY[wrapper]()
    expected = named_groups(reference, configure(reference, strategy))
    targets = set(galore_targets(reference.mae, spec))
    assert {n.removeprefix("mae.") for names, *_, r in expected if r for n in names} == targets
    task = _mae(optimizer=spec)
    _shard(task, wrapper)
    plan = task.optimizer_plan
    found = {n for n, _, entry in planned_parameters(task.mae, plan) if entry.galore}
    assert found == targets
    # the AdamW side of the groups is unchanged by the wrapper
    live = param_groups(task.mae, 1e-3, 0.05, plan=plan)
    flat = param_groups(reference.mae, 1e-3, 0.05, plan=reference.optimizer_plan)
    assert [len(g["params"]) for g in live] == [len(g["params"]) for g in flat]
    with pytest.raises(ConfigError) as error:
        configure(task, strategy)
    message = str(error.value)
    assert "optimizer.name" in message and type(strategy).__name__ in message
    assert "\n" not in message


def test_a_trainable_parameter_missing_from_the_plan_is_one_line(tiny_spec):
    model = tiny_spec.build(img_size=32, num_classes=4)
    plan = plan_parameters(model)
    model.extra = nn.Parameter(torch.zeros(3, 3))
    with pytest.raises(ConfigError, match=r"^trainable parameter 'extra' .* not in the"):
        param_groups(model, 1e-3, 0.05, plan=plan)
    del model.extra
    model.head.weight.requires_grad_(False)
    with pytest.raises(ConfigError, match=r"^the optimizer plan's parameter 'head.weight'"):
        param_groups(model, 1e-3, 0.05, plan=plan)


def test_no_weight_decay_names_override_the_shape_rule(tiny_spec):
    model = tiny_spec.build(img_size=32, num_classes=4)
    assert plan_parameters(model).params["pos_embed"].decay
    plan = plan_parameters(model, no_weight_decay=("pos_embed", "cls_token"))
    assert not plan.params["pos_embed"].decay and not plan.params["cls_token"].decay
    assert plan.params["blocks.0.attn.qkv.weight"].decay
