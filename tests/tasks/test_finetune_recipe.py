"""MAE's fine-tuning recipe as switches of ImageClassifier: mixup/CutMix on soft targets, mean
pooling with fc_norm, drop path, the head re-initialisation, ``lr = base_lr * batch / 256``."""

from __future__ import annotations

from dataclasses import asdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy

from maskrank.cli import main
from maskrank.errors import ConfigError
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier, MAEPretraining
from maskrank.tasks.mixup import MixupSpec
from testkit.events import event_scalars
from testkit.resume import write_config
from testkit.tiny import TINY_VIT, tiny_data

# training_step is called without a Trainer: its self.log calls are no-ops that warn
pytestmark = pytest.mark.filterwarnings("ignore:You are trying to `self.log\\(\\)`")

MAE_MIXUP = {"mixup_alpha": 0.8, "cutmix_alpha": 1.0, "prob": 1.0, "switch_prob": 0.5}


def _classifier(vit: dict | None = None, **kw) -> ImageClassifier:
    torch.manual_seed(0)
    spec = ViTSpec(**{**TINY_VIT, **(vit or {})})
    return ImageClassifier(vit=spec, num_classes=4, img_size=32, **kw)


def _batch(size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, 32, 32, generator=g), torch.arange(size) % 4


# ------------------------------------------------------------------ mixup / cutmix
@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_trains_on_timms_mixed_soft_targets(mode):
    model = _classifier(label_smoothing=0.1, mixup=MixupSpec(**MAE_MIXUP, mode=mode))
    images, labels = _batch()
    np.random.seed(5)  # timm draws lambda and mixup-or-cutmix from numpy's global generator
    loss = model.training_step((images.clone(), labels), 0)
    np.random.seed(5)
    reference = Mixup(**MAE_MIXUP, mode=mode, label_smoothing=0.1, num_classes=4)
    mixed, targets = reference(images.clone(), labels)
    expected = SoftTargetCrossEntropy()(model(mixed), targets)
    torch.testing.assert_close(loss, expected)
    # the target really is mixed: not the smoothed one-hot labels of the unmixed batch
    plain = F.cross_entropy(model(images), labels, label_smoothing=0.1)
    assert not torch.allclose(loss, plain)
    assert (targets.max(dim=-1).values < 0.9 - 0.1 / 4 + 1e-6).any()
    # train/acc scores the class with the largest share of each mixed target
    hits = (model(mixed).argmax(-1) == targets.argmax(-1)).float().mean()
    torch.testing.assert_close(model.train_acc.compute(), hits)


def test_mixup_leaves_validation_on_plain_cross_entropy_and_the_batch_untouched():
    model = _classifier(label_smoothing=0.1, mixup=MixupSpec())
    images, labels = _batch()
    kept = images.clone()
    state = np.random.get_state()[1].copy()
    loss = model._step((images, labels), "val")
    torch.testing.assert_close(loss, F.cross_entropy(model(images), labels, label_smoothing=0.1))
    assert np.array_equal(np.random.get_state()[1], state)  # nothing drawn
    model.training_step((images, labels), 0)
    assert torch.equal(images, kept)  # monitors reading the batch see it as loaded


def test_an_odd_batch_left_by_skipped_files_mixes_all_but_its_last_image():
    model = _classifier(mixup=MixupSpec(mixup_alpha=1.0, cutmix_alpha=0.0), label_smoothing=0.2)
    images, labels = _batch(7)
    mixed, targets = model.mixer(images, labels)
    assert torch.equal(mixed[-1], images[-1])
    torch.testing.assert_close(targets[-1], F.one_hot(labels[-1], 4) * 0.8 + 0.05)
    assert not torch.equal(mixed[:6], images[:6])


def test_mixup_refuses_an_odd_batch_size_before_fitting():
    model = _classifier(mixup=MixupSpec())
    model._trainer = SimpleNamespace(datamodule=tiny_data(batch_size=15))
    with pytest.raises(ConfigError) as error:
        model.setup("fit")
    message = str(error.value)
    assert message.startswith("model.init_args.mixup ") and "--data.batch_size is 15" in message
    model._trainer = SimpleNamespace(datamodule=tiny_data(batch_size=16))
    model.setup("fit")


# ------------------------------------------------------------------ pooling, head, drop path
def test_avg_pool_with_fc_norm_is_a_layernorm_of_the_mean_patch_token():
    model = _classifier(vit={"global_pool": "avg"}).eval()
    with torch.no_grad():  # a non-trivial fc_norm, so a missing or misplaced norm shows
        model.model.fc_norm.weight.uniform_(0.5, 1.5)
        model.model.fc_norm.bias.uniform_(-0.5, 0.5)
    images, _ = _batch(4)
    with torch.no_grad():
        tokens = model.model.forward_features(images)  # (B, 1 + L, D), no final norm
        pooled = tokens[:, 1:].mean(dim=1)  # mean of the patch tokens, CLS left out
        fc_norm = model.model.fc_norm
        normed = F.layer_norm(pooled, (64,), fc_norm.weight, fc_norm.bias, fc_norm.eps)
        expected = model.model.head(normed)
        torch.testing.assert_close(model(images), expected)
    # the encoder's final norm is not applied to the tokens (MAE drops it for fc_norm)
    assert not any(name.startswith("norm.") for name, _ in model.model.named_parameters())


def test_head_init_std_starts_near_zero_logits_from_a_loaded_encoder(tmp_path):
    torch.manual_seed(0)
    mae = MAEPretraining(vit=ViTSpec(**TINY_VIT), img_size=32, lr=1e-3, decoder_depth=1)
    path = tmp_path / "mae.pt"
    torch.save({"state_dict": mae.state_dict()}, path)
    images, _ = _batch(4)
    fresh = _classifier(vit={"global_pool": "avg"}, encoder_ckpt=str(path), head_init_std=2e-5)
    timm_init = _classifier(vit={"global_pool": "avg"}, encoder_ckpt=str(path))
    for name, weight in mae.mae.encoder.state_dict().items():
        if not name.startswith("norm."):
            torch.testing.assert_close(fresh.model.state_dict()[name], weight)
    with torch.no_grad():
        assert fresh.eval()(images).abs().max() < 1e-3
        assert timm_init.eval()(images).abs().max() > 1e-2
    assert fresh.model.head.weight.abs().max() <= 4e-5  # truncated at 2 std


def test_drop_path_rate_reaches_the_blocks():
    model = _classifier(vit={"drop_path_rate": 0.5})
    images, _ = _batch(8)
    assert model.model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.5)
    model.train()
    assert not torch.allclose(model(images), model(images))  # whole residual branches dropped
    model.eval()
    torch.testing.assert_close(model(images), model(images))


# ------------------------------------------------------------------ lr rule
def _peak_lrs(model: ImageClassifier, batch_size: int, accumulate: int = 1) -> list[float]:
    model._trainer = SimpleNamespace(
        datamodule=tiny_data(batch_size=batch_size),
        accumulate_grad_batches=accumulate,
        world_size=1,
        estimated_stepping_batches=10,
        strategy=None,
    )
    optimizer = model.configure_optimizers()["optimizer"]
    return [group["initial_lr"] for group in optimizer.param_groups]


def test_lr_from_base_lr_scales_with_the_effective_batch():
    model = _classifier(lr=None, base_lr=5e-4, layer_decay=0.75)
    small = _peak_lrs(model, batch_size=16)
    assert max(small) == pytest.approx(5e-4 * 16 / 256)  # the head's group: scale 1
    doubled = _peak_lrs(model, batch_size=16, accumulate=2)
    assert doubled == pytest.approx([2 * lr for lr in small])
    assert _peak_lrs(model, batch_size=32) == pytest.approx(doubled)
    fixed = _classifier(lr=1e-3, base_lr=5e-4)
    assert max(_peak_lrs(fixed, batch_size=32)) == pytest.approx(1e-3)  # lr wins when set


# ------------------------------------------------------------------ bad values
@pytest.mark.parametrize(
    ("kw", "flag"),
    [
        ({"lr": None, "base_lr": 0.0}, "model.init_args.base_lr"),
        ({"lr": 0.0}, "model.init_args.lr"),
        ({"head_init_std": 0.0}, "model.init_args.head_init_std"),
        ({"mixup": {"prob": 1.5}}, "model.init_args.mixup.prob"),
        ({"mixup": {"mixup_alpha": -1.0}}, "model.init_args.mixup.mixup_alpha"),
        ({"mixup": {"mode": "image"}}, "model.init_args.mixup.mode"),
        ({"mixup": {"cutmix_minmax": (0.8, 0.2)}}, "model.init_args.mixup.cutmix_minmax"),
        ({"mixup": {"mixup_alpha": 0.0, "cutmix_alpha": 0.0}}, "model.init_args.mixup"),
        ({"mixup": {"alpha": 0.8}}, "model.init_args.mixup"),
        ({"vit": {"fc_norm": "yes"}}, "model.init_args.vit.fc_norm"),
    ],
)
def test_bad_recipe_values_are_one_line_naming_the_flag(kw, flag):
    vit = kw.pop("vit", {})
    with pytest.raises(ConfigError) as error:
        _classifier(vit=vit, **kw)
    message = str(error.value)
    assert flag in message and "\n" not in message


# ------------------------------------------------------------------ through the CLI
def test_the_recipe_fits_from_a_config_and_logs_base_lr_scaled(tmp_path):
    recipe = {
        "vit": {**TINY_VIT, "global_pool": "avg", "drop_path_rate": 0.1},
        "lr": None,
        "base_lr": 5e-4,
        "layer_decay": 0.75,
        "label_smoothing": 0.1,
        "head_init_std": 2e-5,
        "mixup": asdict(MixupSpec()),
    }
    model = {"class_path": "maskrank.tasks.ImageClassifier", "init_args": recipe}
    config = write_config(tmp_path / "ft.yaml", tmp_path / "runs", model, max_epochs=1)
    main(["fit", "-c", str(config), "--trainer.limit_val_batches", "1"])
    scalars = event_scalars(tmp_path / "runs" / "exp" / "version_0")
    lrs = [values for tag, values in scalars.items() if tag.startswith("lr-")]
    peak = max(max(values) for values in lrs)
    # warmup to base_lr * 16 / 256 at the head; 4 steps: the schedule's peak may be passed over
    assert 0 < peak <= 5e-4 * 16 / 256 * (1 + 1e-6)
    assert np.isfinite(scalars["train/loss"]).all() and "train/acc" in scalars
