from __future__ import annotations

from dataclasses import asdict

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from maskrank.errors import ConfigError, CorruptFileError, MissingFileError
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier, MAEPretraining
from maskrank.tasks.pretrain import effective_batch_size


def _pretrain(spec: ViTSpec, **kw) -> MAEPretraining:
    return MAEPretraining(
        vit=spec, img_size=32, in_chans=3, decoder_dim=32, decoder_depth=1, decoder_heads=2, **kw
    )


def _loader(n: int = 16, batch: int = 8) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=g), torch.zeros(n, dtype=torch.long))
    return DataLoader(data, batch_size=batch)


def _trainer(tmp_path, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )


def test_fit_logs_losses_and_scales_lr(tmp_path, tiny_spec):
    model = _pretrain(tiny_spec, base_lr=1e-3, warmup_fraction=0.0)
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=1)
    trainer.fit(model, _loader(), _loader())
    assert {"train/loss", "val/loss"} <= set(trainer.callback_metrics)
    assert effective_batch_size(trainer) == 8
    # peak lr = base_lr * 8 / 256, cosine-decayed over the 4 steps
    peak = model.lr_schedulers().base_lrs[0]
    assert peak == pytest.approx(1e-3 * 8 / 256)


def test_validation_masks_are_repeatable(tmp_path, tiny_spec):
    model = _pretrain(tiny_spec)
    trainer = _trainer(tmp_path)
    first = trainer.validate(model, _loader(), verbose=False)[0]["val/loss"]
    again = trainer.validate(model, _loader(), verbose=False)[0]["val/loss"]
    assert first == again


def test_scheduled_mask_ratio(tmp_path, tiny_spec):
    model = _pretrain(tiny_spec, mask_ratio=0.5, mask_ratio_end=0.9)
    trainer = _trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(model, _loader(32))
    assert 0.5 < trainer.callback_metrics["train/mask_ratio"] < 0.9


def test_bad_mask_ratio_names_the_flag(tiny_spec):
    with pytest.raises(ConfigError, match="model.init_args.mask_ratio"):
        _pretrain(tiny_spec, mask_ratio=1.0)


def _save_pretrained(tmp_path, spec) -> tuple[MAEPretraining, str]:
    model = _pretrain(spec)
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(model, _loader())
    path = str(tmp_path / "mae.ckpt")
    trainer.save_checkpoint(path)
    return model, path


def test_encoder_hand_off_is_exact(tmp_path, tiny_spec):
    mae, path = _save_pretrained(tmp_path, tiny_spec)
    clf = ImageClassifier(vit=tiny_spec, num_classes=5, img_size=32, encoder_ckpt=path)
    expected = mae.encoder.state_dict()
    got = clf.model.state_dict()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert got["head.weight"].shape == (5, 64)
    mae.eval(), clf.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(clf.model.forward_features(x), mae.encoder.forward_features(x))


def test_wrong_architecture_checkpoint_names_the_file(tmp_path, tiny_spec):
    _, path = _save_pretrained(tmp_path, tiny_spec)
    other = ViTSpec(preset="vit_nano_32", patch_size=8, embed_dim=32, depth=2, num_heads=2)
    with pytest.raises(ConfigError, match="mae.ckpt.*does not match"):
        ImageClassifier(vit=other, num_classes=5, img_size=32, encoder_ckpt=path)


def test_truncated_and_missing_checkpoints(tmp_path, tiny_spec):
    _, path = _save_pretrained(tmp_path, tiny_spec)
    data = open(path, "rb").read()
    bad = tmp_path / "truncated.ckpt"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError, match="truncated.ckpt"):
        ImageClassifier(vit=tiny_spec, num_classes=5, img_size=32, encoder_ckpt=str(bad))
    with pytest.raises(MissingFileError, match="nope.ckpt"):
        ImageClassifier(
            vit=tiny_spec, num_classes=5, img_size=32, encoder_ckpt=str(tmp_path / "nope.ckpt")
        )


def test_unsafe_pickle_is_refused(tmp_path, tiny_spec):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": Evil()}, path)
    with pytest.raises(CorruptFileError, match="evil.ckpt"):
        ImageClassifier(vit=tiny_spec, num_classes=5, img_size=32, encoder_ckpt=str(path))


@pytest.mark.parametrize("adaptation", ["linear_probe", "finetune"])
@pytest.mark.parametrize("pool", ["token", "avg"])
def test_mae_encoder_starts_probe_and_finetune_with_either_pooling(
    tmp_path, tiny_spec, adaptation, pool
):
    mae, path = _save_pretrained(tmp_path, tiny_spec)
    spec = ViTSpec(**{**asdict(tiny_spec), "global_pool": pool})
    clf = ImageClassifier(
        vit=spec, num_classes=4, img_size=32, encoder_ckpt=path, adaptation=adaptation
    )
    own = clf.model.state_dict()
    for key, value in mae.encoder.state_dict().items():
        if key.startswith("blocks.") or key.startswith("patch_embed."):
            torch.testing.assert_close(own[key], value, rtol=0, atol=0)
    # mean pooling: MAE's final norm is dropped and fc_norm starts fresh, as MAE's fine-tuning does
    assert ("fc_norm.weight" in own) == (pool == "avg")
    if pool == "avg":
        torch.testing.assert_close(own["fc_norm.weight"], torch.ones(64))
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    data = TensorDataset(torch.randn(16, 3, 32, 32), torch.arange(16) % 4)
    trainer.fit(clf, DataLoader(data, batch_size=8))
    assert torch.isfinite(clf.model(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_val_loss_trivial_is_the_loss_of_predicting_zeros(tmp_path, tiny_spec, norm_pix_loss):
    model = _pretrain(tiny_spec, norm_pix_loss=norm_pix_loss)
    trainer = _trainer(tmp_path)
    trivial = trainer.validate(model, _loader(), verbose=False)[0]["val/loss_trivial"]
    if norm_pix_loss:  # each 8x8x3 target patch has mean 0 and unbiased variance 1
        assert trivial == pytest.approx(191 / 192, rel=1e-4)
    with torch.no_grad():  # a decoder that predicts zeros scores exactly the trivial level
        model.mae.decoder_pred.weight.zero_()
        model.mae.decoder_pred.bias.zero_()
    zero = trainer.validate(model, _loader(), verbose=False)[0]
    assert zero["val/loss"] == pytest.approx(trivial, rel=1e-6)
    assert zero["val/loss_trivial"] == trivial
