"""scripts/benchmarks/benchlib.py: its analytic FLOP model against torch's counter, and its paired rounds."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from maskrank.models.mae import MaskedAutoencoder
from maskrank.models.masking import num_kept
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier
from testkit.scripts import load_script
from testkit.tiny import TINY_MAE, TINY_VIT

benchlib = load_script("benchmarks/benchlib.py")
BATCH = 4


def counted(loss_fn) -> int:
    """FLOPs torch's counter sees in one forward + backward of ``loss_fn()``."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss_fn().backward()
    return counter.get_total_flops()


def matmul_attention(model: torch.nn.Module) -> None:
    # torch's counter gives CPU SDPA 0 FLOPs; the explicit matmuls are the same products
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False


@pytest.fixture
def images() -> torch.Tensor:
    return torch.randn(BATCH, 3, 32, 32)


@pytest.mark.parametrize("masked_tail", [False, True], ids=["forward", "training_loss"])
def test_mae_model_matches_torchs_counter_with_matmul_attention(images, masked_tail):
    encoder = ViTSpec(**TINY_VIT).build(img_size=32, in_chans=3, num_classes=0)
    mae = MaskedAutoencoder(encoder, **TINY_MAE, attention="matmul")
    kept = num_kept(mae.num_patches, 0.75)
    if masked_tail:
        measured = counted(lambda: mae.training_loss(images, 0.75))
    else:
        measured = counted(lambda: mae(images, 0.75)[0])
    model = benchlib.mae_flops_of(mae, BATCH, kept, masked_tail)
    assert model.total == pytest.approx(measured, rel=0.01)


@pytest.mark.parametrize(
    "lora",
    [None, {"r": 4, "engine": "peft"}, {"r": 4, "engine": "peft", "targets": ["qkv"]}],
    ids=["finetune", "lora_all", "lora_qkv"],
)
def test_classifier_model_matches_torchs_counter(images, lora):
    extra = {} if lora is None else {"adaptation": "lora", "lora": lora}
    clf = ImageClassifier(vit=TINY_VIT, num_classes=10, **extra)
    matmul_attention(clf)
    labels = torch.arange(BATCH) % 10
    measured = counted(lambda: F.cross_entropy(clf(images), labels))
    adapters = None
    if lora is not None:
        adapters = benchlib.Adapters(lora["r"], tuple(lora.get("targets", benchlib.LORA_TARGETS)))
    model = benchlib.classifier_step_flops(benchlib.ViTShape.of(clf.model), BATCH, 10, adapters)
    assert model.total == pytest.approx(measured, rel=0.01)


def test_round_orders_are_seeded_permutations_that_vary():
    names = ["a", "b", "c"]
    orders = benchlib.round_orders(names, 20, seed=3)
    assert orders == benchlib.round_orders(names, 20, seed=3)
    assert all(sorted(o) == names for o in orders)
    assert len({tuple(o) for o in orders}) > 2  # not one fixed (or two alternating) orders
    assert orders != benchlib.round_orders(names, 20, seed=4)


def test_run_rounds_runs_in_the_printed_order_and_pairs_per_round():
    ran: list[str] = []
    per_round = {"fast": [[1.0, 1.0], [2.0, 2.0]], "slow": [[2.0, 2.0], [3.0, 3.0]]}

    def arm(name):
        def run():
            ran.append(name)
            return per_round[name][sum(1 for n in ran if n == name) - 1]

        return run

    timings = benchlib.run_rounds({n: arm(n) for n in per_round}, 2, seed=1)
    assert ran == [n for order in timings.orders for n in order]
    # per round: slow's median over fast's (2/1, 3/2), not a ratio of pooled medians
    assert timings.paired("fast", "slow") == [2.0, 1.5]
    assert timings.round_medians("slow") == [2.0, 3.0]


def test_spread_is_the_interquartile_range_or_the_range():
    assert benchlib.spread([1.0, 5.0, 3.0]) == (3.0, 1.0, 5.0)
    med, low, high = benchlib.spread([1.0, 2.0, 3.0, 4.0, 100.0])
    assert (med, low, high) == (3.0, 1.5, 52.0)
