"""MaskedAutoencoder computes official MAE's loss and gradients (He et al. 2022; SCIENCE.md §5).

The reference below restates MAE's forward from the paper and the conventions of its official code
(facebookresearch/mae, ``models_mae.py``) on raw tensors: it reads maskrank's parameters and
position tables but none of maskrank's or timm's forward code. The position tables themselves are
pinned to MAE's sin-cos layout by tests/models/test_mae_init.py.

MAE's conventions restated here:
- masking: per-sample uniform noise ``torch.rand(B, L)``, ``argsort`` ascending, keep the first
  ``int(L * (1 - r))`` (the patches with the *smallest* noise); mask 1 = removed;
- encoder: patch embedding (a linear map of each patch's (C, p, p) pixels) plus position
  embedding, *then* masking; CLS (plus its own position row) prepended; pre-norm blocks; norm;
- decoder: linear embedding, mask tokens appended after the visible tokens and unshuffled with
  ``ids_restore``, position embedding, blocks, norm, pixel head; the CLS output is dropped;
- every LayerNorm uses eps 1e-6 (MAE's ``partial(nn.LayerNorm, eps=1e-6)``);
- target: patch pixels as (p, p, C); with ``norm_pix_loss`` each patch is standardised with its
  mean and torch's default *unbiased* variance, ``(t - mean) / sqrt(var + 1e-6)``;
- loss: per-patch mean squared error, averaged over the removed patches.

Everything runs in float64 so that the 1e-6 tolerance is ~10 orders above round-off.
"""

from __future__ import annotations

import math

import pytest
import torch

from maskrank.models.mae import MaskedAutoencoder
from maskrank.models.vit import ViTSpec
from testkit.tiny import TINY_VIT

LN_EPS = 1e-6  # MAE's LayerNorm epsilon, encoder and decoder
NORM_PIX_EPS = 1e-6
ENC_HEADS, DEC_HEADS, DEC_DIM = TINY_VIT["num_heads"], 2, 32
BATCH, IMG = 3, 32
TOL = dict(rtol=1e-6, atol=1e-6)


# ---- MAE restated on raw tensors -----------------------------------------------------------------


def ref_masking(noise: torch.Tensor, mask_ratio: float):
    """noise (B, L) -> ids_keep (B, K), mask (B, L) 1 = removed, ids_restore (B, L)."""
    b, length = noise.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)  # ascending: small noise is kept
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(b, length, dtype=torch.float64)
    mask[:, :len_keep] = 0
    return ids_shuffle[:, :len_keep], torch.gather(mask, 1, ids_restore), ids_restore


def ref_layer_norm(x: torch.Tensor, ln) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = (x - mean).pow(2).mean(-1, keepdim=True)  # biased, as LayerNorm defines it
    return (x - mean) / torch.sqrt(var + LN_EPS) * ln.weight + ln.bias


def ref_linear(x: torch.Tensor, lin) -> torch.Tensor:
    return x @ lin.weight.T + lin.bias


def ref_block(x: torch.Tensor, blk, heads: int) -> torch.Tensor:
    """Pre-norm transformer block: x + MSA(LN(x)), then x + MLP(LN(x)); (B, N, W) -> (B, N, W)."""
    b, n, w = x.shape
    qkv = ref_linear(ref_layer_norm(x, blk.norm1), blk.attn.qkv)  # (B, N, 3W)
    q, k, v = qkv.view(b, n, 3, heads, w // heads).permute(2, 0, 3, 1, 4)  # (B, h, N, W/h) each
    attn = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(w // heads), dim=-1)
    x = x + ref_linear((attn @ v).transpose(1, 2).reshape(b, n, w), blk.attn.proj)
    hidden = ref_linear(ref_layer_norm(x, blk.norm2), blk.mlp.fc1)
    hidden = 0.5 * hidden * (1 + torch.erf(hidden / math.sqrt(2)))  # exact GELU
    return x + ref_linear(hidden, blk.mlp.fc2)


def ref_patch_pixels(images: torch.Tensor, p: int, order: str) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches row-major; pixels as ``order`` ('pqc' or 'cpq')."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    x = torch.einsum(f"nchpwq->nhw{order}", x)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


def ref_mae_loss(mae: MaskedAutoencoder, images: torch.Tensor, noise: torch.Tensor, ratio: float):
    """MAE's (loss, pred (B, L, P), mask (B, L)) on ``mae``'s parameters and position tables."""
    enc, p = mae.encoder, mae.patch
    conv = enc.patch_embed.proj  # a (C, p, p) -> D linear map applied to each patch
    x = ref_patch_pixels(images, p, "cpq") @ conv.weight.flatten(1).T + conv.bias  # (B, L, D)
    x = x + enc.pos_embed[:, 1:]  # position before masking
    ids_keep, mask, ids_restore = ref_masking(noise, ratio)
    x = torch.gather(x, 1, ids_keep[..., None].expand(-1, -1, x.shape[-1]))  # (B, K, D)
    cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    for blk in enc.blocks:
        x = ref_block(x, blk, ENC_HEADS)
    latent = ref_layer_norm(x, enc.norm)  # (B, 1 + K, D)

    y = ref_linear(latent, mae.decoder_embed)  # (B, 1 + K, E)
    b, length = mask.shape
    tokens = mae.mask_token.expand(b, length + 1 - y.shape[1], -1)
    y_ = torch.cat([y[:, 1:], tokens], dim=1)  # visible first, then removed
    y_ = torch.gather(y_, 1, ids_restore[..., None].expand(-1, -1, y.shape[-1]))  # unshuffle
    y = torch.cat([y[:, :1], y_], dim=1) + mae.decoder_pos_embed
    for blk in mae.decoder_blocks:
        y = ref_block(y, blk, DEC_HEADS)
    pred = ref_linear(ref_layer_norm(y, mae.decoder_norm), mae.decoder_pred)[:, 1:]  # (B, L, P)

    target = ref_patch_pixels(images, p, "pqc")
    if mae.norm_pix_loss:
        mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)  # unbiased
        target = (target - mean) / (var + NORM_PIX_EPS) ** 0.5
    per_patch = (pred - target).pow(2).mean(-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum(), pred, mask


# ---- maskrank against the reference ----------------------------------------------------------


def _perturbed_mae(norm_pix: bool, attention: str) -> MaskedAutoencoder:
    """The tiny MAE (2-block decoder) in float64, every tensor moved off its init so that zero
    biases, unit LayerNorm scales and the zero CLS row of the position tables cannot hide a term
    the two forwards disagree on."""
    torch.manual_seed(0)
    encoder = ViTSpec(**TINY_VIT).build(img_size=IMG, in_chans=3, num_classes=0)
    mae = MaskedAutoencoder(
        encoder, DEC_DIM, 2, DEC_HEADS, norm_pix_loss=norm_pix, attention=attention
    ).double()
    with torch.no_grad():
        for tensor in [*mae.parameters(), mae.decoder_pos_embed]:  # the frozen tables too
            tensor.add_(0.05 * torch.randn_like(tensor))
    return mae


def _images() -> torch.Tensor:
    """Smooth random images; the first one nearly flat (per-patch variance ~1e-6, the size of
    ``norm_pix_loss``'s eps), so that where and how large the eps is shows in the loss."""
    g = torch.Generator().manual_seed(5)
    base = torch.randn(BATCH, 3, IMG, IMG, generator=g, dtype=torch.float64).cumsum(-1) / 8
    scale = torch.tensor([1e-3, 1.0, 2.0], dtype=torch.float64).view(BATCH, 1, 1, 1)
    return 0.5 + scale * base


def _noise(length: int, seed: int) -> torch.Tensor:
    """The noise maskrank draws for a generator seeded with ``seed``: ``torch.rand(B, L)``."""
    return torch.rand(BATCH, length, generator=torch.Generator().manual_seed(seed))


# 0.75: MAE's default, 4 of 16 patches kept; 0.65: int(16 x 0.35) = 5 kept, where round() keeps 6.
@pytest.mark.parametrize("ratio", [0.75, 0.65])
@pytest.mark.parametrize("norm_pix", [True, False], ids=["norm_pix", "raw_pix"])
@pytest.mark.parametrize("attention", ["matmul", "sdpa"])
def test_loss_and_every_gradient_equal_mae(ratio, norm_pix, attention):
    mae = _perturbed_mae(norm_pix, attention)
    images = _images()
    seed = 11
    names = [n for n, p in mae.named_parameters() if p.requires_grad]
    params = [p for p in mae.parameters() if p.requires_grad]
    assert "encoder.pos_embed" not in names  # MAE's position table is fixed

    ref_loss, ref_pred, ref_mask = ref_mae_loss(mae, images, _noise(mae.num_patches, seed), ratio)
    ref_grads = torch.autograd.grad(ref_loss, params)
    assert ref_mask.sum(1).eq(mae.num_patches - int(mae.num_patches * (1 - ratio))).all()

    loss, pred, mask = mae(images, ratio, generator=torch.Generator().manual_seed(seed))
    assert torch.equal(mask.double(), ref_mask)  # the same noise removes the same patches
    torch.testing.assert_close(pred, ref_pred, **TOL)
    torch.testing.assert_close(loss, ref_loss, **TOL)
    fast = mae.training_loss(images, ratio, generator=torch.Generator().manual_seed(seed))
    torch.testing.assert_close(fast, ref_loss, **TOL)

    for which, value in (("forward", loss), ("training_loss", fast)):
        grads = torch.autograd.grad(value, params)
        for name, got, want in zip(names, grads, ref_grads, strict=True):
            assert want.abs().sum() > 0, name  # every parameter takes part in the reference
            gap = (got - want).abs().max().item()
            assert torch.allclose(got, want, **TOL), f"{which}: grad of {name} off by {gap:.3g}"
