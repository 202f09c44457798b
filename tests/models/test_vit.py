from __future__ import annotations

import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from maskrank.errors import ConfigError
from maskrank.models.vit import PRESETS, ViTSpec, build_vit


def test_preset_sizes_match_their_names():
    tiny = build_vit("vit_tiny_32", num_classes=10)
    assert isinstance(tiny, VisionTransformer)
    assert tiny.embed_dim == 192 and len(tiny.blocks) == 12
    assert tiny.patch_embed.num_patches == (32 // 4) ** 2
    base224 = PRESETS["vit_base_224"][1]
    assert base224["img_size"] == 224 and base224["patch_size"] == 16


def test_overrides_change_exactly_what_they_name():
    m = build_vit(
        "vit_tiny_32",
        patch_size=8,
        embed_dim=64,
        depth=2,
        num_heads=2,
        in_chans=1,
        num_classes=7,
        drop_path_rate=0.1,
    )
    assert m.embed_dim == 64 and len(m.blocks) == 2
    assert m.patch_embed.proj.in_channels == 1
    assert m.head.out_features == 7
    assert m.blocks[0].attn.num_heads == 2
    # drop path grows linearly over depth: the last block has the full rate
    assert m.blocks[-1].drop_path1.drop_prob == pytest.approx(0.1)
    out = m(torch.randn(3, 1, 32, 32))
    assert out.shape == (3, 7) and torch.isfinite(out).all()


def test_none_overrides_keep_the_preset():
    assert build_vit("vit_tiny_32", depth=None).embed_dim == 192


def test_spec_builds_with_data_values(tiny_spec):
    m = tiny_spec.build(img_size=32, in_chans=3, num_classes=4)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_any_timm_vit_name_is_accepted():
    m = build_vit("vit_small_patch16_224", img_size=32, patch_size=16, depth=1, num_classes=0)
    assert m.embed_dim == 384


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(patch_size=5), ["patch_size 5", "image size 32"]),
        (dict(embed_dim=64, num_heads=3), ["embed_dim 64", "num_heads 3"]),
        (dict(drop_path_rate=1.0), ["drop_path_rate"]),
    ],
)
def test_bad_architecture_is_a_clear_config_error(kwargs, words):
    with pytest.raises(ConfigError) as err:
        build_vit("vit_tiny_32", **kwargs)
    for word in words:
        assert word in str(err.value)


def test_unknown_preset_lists_the_choices():
    with pytest.raises(ConfigError, match="vit_tiny_32"):
        ViTSpec(preset="vit_huge_77").build(img_size=32)


def test_pretrained_weights_offline_give_one_clear_line(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(
        ConfigError, match=r"model\.init_args\.pretrained.*couldn't connect.*encoder_ckpt"
    ):
        build_vit("vit_tiny_patch16_224.augreg_in21k", pretrained=True, img_size=32, patch_size=4)
    assert build_vit("vit_tiny_patch16_224.augreg_in21k", img_size=32).patch_embed.num_patches == 4
