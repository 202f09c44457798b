"""A freshly built MAE has official MAE's initialisation, per parameter (SCIENCE.md §5).

MAE's ``initialize_weights``: every Linear xavier-uniform with zero bias, every LayerNorm 1 / 0, the
patch embedding's conv kernel xavier-uniform as the flattened (D, C*p*p) linear map, class and mask
tokens normal(0, 0.02), both position tables fixed 2-D sin-cos. The model is 192 wide (decoder 256)
so that every sample statistic below has a small, computed standard error.
"""

from __future__ import annotations

import math

import pytest
import pytorch_lightning as pl
import torch
from torch import nn

from maskrank.models.mae import MaskedAutoencoder
from maskrank.models.vit import ViTSpec
from maskrank.tasks import MAEPretraining
from testkit.tiny import TINY_VIT, tiny_data, tiny_mae

WIDE_VIT = {"embed_dim": 192, "num_heads": 3}  # img 32, patch 8: 16 patches, (192, 3*8*8) kernel
WIDE_DECODER = {"decoder_dim": 256, "decoder_heads": 4}
TOKEN_STD = 0.02
SIGMAS = 6  # standard errors allowed for a statistic of random draws


def sincos_table(dim: int, grid: int) -> torch.Tensor:
    """MAE's ``get_2d_sincos_pos_embed(dim, grid, cls_token=True)``: (1 + grid^2, dim).

    Channels [0, dim/2) encode the patch's column, [dim/2, dim) its row, each as
    [sin(pos w_i), cos(pos w_i)] with w_i = 10000^(-i / (dim/4)); the CLS row is zero. Computed in
    float64 and stored as float32 (MAE's numpy code computes in float32: at most 7e-7 apart at
    ViT-B size).
    """
    freqs = [10000.0 ** (-i / (dim // 4)) for i in range(dim // 4)]
    rows = [[0.0] * dim]
    for row in range(grid):
        for col in range(grid):
            emb = []
            for pos in (col, row):
                emb += [math.sin(pos * w) for w in freqs] + [math.cos(pos * w) for w in freqs]
            rows.append(emb)
    return torch.tensor(rows, dtype=torch.float64).float()


def assert_xavier_uniform(weight: torch.Tensor, name: str) -> None:
    """``weight`` (fan_out, fan_in) looks like xavier_uniform's U(-a, a), a = sqrt(6/(in+out)).

    U(-a, a) has std a/sqrt(3) and kurtosis 9/5, so the sample variance of n draws has relative
    standard error sqrt(0.8/n) and the sample std about sqrt(0.2/n): 0.23 % for the smallest
    matrix here (192 x 192). Six of those (1.4 %) separate it from timm's trunc-normal(0.02)
    (std 0.02 against >= 0.051 here) and from xavier on the 4-D conv kernel (std ~8x smaller).
    """
    fan_out, fan_in = weight.shape
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    n, expected_std = weight.numel(), bound / math.sqrt(3.0)
    assert weight.abs().max() <= bound, f"{name}: |w| exceeds the xavier bound {bound:.4g}"
    rel = weight.std().item() / expected_std - 1.0
    assert abs(rel) < SIGMAS * math.sqrt(0.2 / n), f"{name}: std off xavier's by {rel:+.2%}"
    assert abs(weight.mean()) < SIGMAS * expected_std / math.sqrt(n), f"{name}: mean not 0"


def assert_token_init(token: torch.Tensor, name: str) -> None:
    """``token`` looks like normal(0, 0.02): the sample std of n normal draws has relative
    standard error 1/sqrt(2n), 5.1 % at n = 192 (timm's own class-token init has std 1e-6)."""
    n = token.numel()
    rel = token.std().item() / TOKEN_STD - 1.0
    assert abs(rel) < SIGMAS / math.sqrt(2 * n), f"{name}: std off 0.02 by {rel:+.2%}"
    assert abs(token.mean()) < SIGMAS * TOKEN_STD / math.sqrt(n), f"{name}: mean not 0"


def assert_mae_init(mae: MaskedAutoencoder) -> None:
    """Every parameter of ``mae`` (and both position tables) has MAE's initialisation."""
    params = dict(mae.named_parameters())
    checked: set[str] = set()
    for module_name, module in mae.named_modules():
        if isinstance(module, nn.Linear):
            assert_xavier_uniform(module.weight, f"{module_name}.weight")
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), module_name
            checked |= {f"{module_name}.weight", f"{module_name}.bias"}
        elif isinstance(module, nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), module_name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), module_name
            checked |= {f"{module_name}.weight", f"{module_name}.bias"}

    conv = mae.encoder.patch_embed.proj  # (D, C, p, p): initialised as a (D, C*p*p) Linear
    assert_xavier_uniform(conv.weight.flatten(1), "patch_embed.proj.weight")
    # MAE leaves the conv bias at PyTorch's default U(-1/sqrt(C*p*p), 1/sqrt(C*p*p))
    assert 0 < conv.bias.abs().max() <= 1 / math.sqrt(conv.weight[0].numel())
    assert_token_init(mae.encoder.cls_token, "cls_token")
    assert_token_init(mae.mask_token, "mask_token")
    checked |= {
        "encoder.patch_embed.proj.weight",
        "encoder.patch_embed.proj.bias",
        "encoder.cls_token",
        "mask_token",
        "encoder.pos_embed",
    }

    grid = mae.grid[0]
    enc_dim, dec_dim = mae.encoder.embed_dim, mae.decoder_embed.out_features
    torch.testing.assert_close(
        mae.encoder.pos_embed[0], sincos_table(enc_dim, grid), atol=1e-7, rtol=0
    )
    torch.testing.assert_close(
        mae.decoder_pos_embed[0], sincos_table(dec_dim, grid), atol=1e-7, rtol=0
    )
    assert not mae.encoder.pos_embed.requires_grad  # fixed, as MAE's
    assert "decoder_pos_embed" not in params  # a buffer: no optimizer ever sees it
    assert checked == set(params), f"parameters left unchecked: {set(params) - checked}"


def _wide_mae() -> MaskedAutoencoder:
    encoder = ViTSpec(**{**TINY_VIT, **WIDE_VIT}).build(img_size=32, in_chans=3, num_classes=0)
    return MaskedAutoencoder(encoder, decoder_depth=1, **WIDE_DECODER)


def test_masked_autoencoder_has_mae_init():
    assert_mae_init(_wide_mae())


def test_pretraining_task_has_mae_init():
    assert_mae_init(tiny_mae(vit=WIDE_VIT, **WIDE_DECODER).mae)


def test_init_is_deterministic_under_the_seed():
    def state(seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(seed)
        return _wide_mae().state_dict()

    first, again, other = state(0), state(0), state(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not torch.equal(
        first["encoder.blocks.0.attn.qkv.weight"], other["encoder.blocks.0.attn.qkv.weight"]
    )


@pytest.mark.parametrize("fixed_pos_embed", [True, False])
def test_init_encoder_false_keeps_the_encoders_weights(fixed_pos_embed):
    encoder = ViTSpec(**TINY_VIT).build(img_size=32, in_chans=3, num_classes=0)
    with torch.no_grad():  # stand-in for pretrained weights: no init draws these
        for i, param in enumerate(encoder.parameters()):
            param.fill_(0.01 * (i + 1))
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    mae = MaskedAutoencoder(encoder, 32, 1, 2, fixed_pos_embed=fixed_pos_embed, init_encoder=False)
    for key, value in mae.encoder.state_dict().items():
        if key != "pos_embed" or not fixed_pos_embed:  # fixed_pos_embed writes the sin-cos table
            assert torch.equal(value, before[key]), key
    assert_xavier_uniform(mae.decoder_blocks[0].attn.qkv.weight, "decoder qkv")  # decoder: MAE's


def test_a_loaded_checkpoint_is_not_reinitialised(tmp_path):
    model = tiny_mae()
    trainer = pl.Trainer(
        max_steps=1,
        limit_val_batches=0,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(model, datamodule=tiny_data())
    path = tmp_path / "mae.ckpt"
    trainer.save_checkpoint(path)
    torch.manual_seed(1)  # a fresh init here would draw other weights than the trained ones
    loaded = MAEPretraining.load_from_checkpoint(path).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(loaded[key], value), key
