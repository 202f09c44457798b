"""Unmasked features of a timm ViT encoder, for probes and rank metrics (SCIENCE.md §2).

Features are taken with no masking, through timm's own ``forward_intermediates``: the final
normalized output as the CLS token and as the mean of patch tokens, the same two per block (block
outputs are un-normalized, as the next block sees them), and the final patch tokens themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from timm.models.vision_transformer import VisionTransformer


@dataclass
class EncoderFeatures:
    """Unmasked encoder features of a batch.

    Attributes:
        cls: final normalized CLS token (B, D).
        patch_mean: mean of the final normalized patch tokens (B, D).
        tokens: final normalized patch tokens (B, L, D).
        block_cls: per block, the CLS token of that block's output (B, D).
        block_mean: per block, the mean patch token of that block's output (B, D).
    """

    cls: torch.Tensor
    patch_mean: torch.Tensor
    tokens: torch.Tensor
    block_cls: list[torch.Tensor]
    block_mean: list[torch.Tensor]


@torch.no_grad()
def encoder_features(encoder: VisionTransformer, images: torch.Tensor) -> EncoderFeatures:
    """Features of ``images`` (B, C, H, W) for every block; call with the encoder in eval mode."""
    if encoder.cls_token is None:
        raise ValueError("encoder_features needs a ViT with a class token")
    final, inter = encoder.forward_intermediates(
        images, return_prefix_tokens=True, norm=False, output_fmt="NLC"
    )
    # final: (B, 1 + L, D) after the final norm; inter: per block (patches (B, L, D), prefix (B, 1, D))
    patches = final[:, encoder.num_prefix_tokens :]
    return EncoderFeatures(
        cls=final[:, 0],
        patch_mean=patches.mean(dim=1),
        tokens=patches,
        block_cls=[prefix[:, 0] for _, prefix in inter],
        block_mean=[tokens.mean(dim=1) for tokens, _ in inter],
    )
