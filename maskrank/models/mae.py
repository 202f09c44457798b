"""Masked autoencoder around a timm ViT encoder (He et al., CVPR 2022; SCIENCE.md §5).

The encoder *is* a timm ``VisionTransformer``: this module reuses its ``patch_embed``, ``cls_token``,
``pos_embed``, ``blocks`` and ``norm`` and only changes what tokens go in (the visible ones plus CLS),
so the encoder's ``state_dict`` is a plain timm checkpoint. Forward, in MAE's order:

    patchify -> masking -> encoder (visible tokens only) -> decoder (with mask tokens) -> loss

Shapes: images (B, C, H, W); L = (H/p)(W/p) patches; K visible; D encoder width; E decoder width.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

from maskrank.errors import ConfigError
from maskrank.models.features import EncoderFeatures, encoder_features
from maskrank.models.masking import Masking, Strategy, gather_tokens, make_masking

AttentionImpl = Literal["auto", "sdpa", "matmul"]
# On CPU, below this many tokens "auto" uses plain matmul-softmax-matmul attention instead of SDPA
# (the CIFAR ViT-Tiny MAE runs 17 and 65 tokens); scripts/benchmarks/bench_pretrain.py times that
# step against an SDPA reference (docs/RESULTS.md#mae-step-speed). On GPUs "auto" is SDPA.
CPU_SDPA_MIN_TOKENS = 128
# MAE's LayerNorm epsilon (its ``partial(nn.LayerNorm, eps=1e-6)``), also timm's ViT default.
LN_EPS = 1e-6
# Standard deviation of MAE's class and mask token init.
TOKEN_INIT_STD = 0.02


def use_sdpa(impl: AttentionImpl, device: torch.device, tokens: int) -> bool:
    """Whether attention over ``tokens`` tokens on ``device`` should use fused SDPA."""
    if impl == "auto":
        return device.type != "cpu" or tokens >= CPU_SDPA_MIN_TOKENS
    return impl == "sdpa"


def set_attention_impl(blocks: nn.Module, sdpa: bool) -> None:
    """Switch every timm ``Attention`` under ``blocks`` between SDPA and plain matmul attention.

    Both compute the same function; timm reads the ``fused_attn`` flag at every forward.
    """
    for module in blocks.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = sdpa


def sincos_pos_embed(dim: int, grid: tuple[int, int], cls_token: bool) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding (1, [1 +] gh*gw, dim); the CLS row is zero.

    MAE's table (its ``get_2d_sincos_pos_embed``): the first half of the channels encodes the
    patch's column, the second half its row; each half is ``[sin(pos w), cos(pos w)]`` over
    ``dim / 4`` frequencies ``w_i = 10000^(-i / (dim/4))``. Computed in float64, stored as float32.
    """
    if dim % 4:
        raise ConfigError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    gh, gw = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))  # (dim/4,)
    rows, cols = torch.meshgrid(
        torch.arange(gh, dtype=torch.float64), torch.arange(gw, dtype=torch.float64), indexing="ij"
    )

    def encode(pos: torch.Tensor) -> torch.Tensor:  # (gh*gw,) -> (gh*gw, dim/2)
        angles = pos.flatten()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(cols), encode(rows)], dim=1)  # (gh*gw, dim): column half first
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float().unsqueeze(0)


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, p*p*C), patches in row-major order, pixels as (p, p, C)."""
    b, c, h, w = images.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}x{w} is not divisible into {patch}-px patches")
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)  # (B, C, gh, p, gw, p)
    x = x.permute(0, 2, 4, 3, 5, 1)  # (B, gh, gw, p, p, C)
    return x.reshape(b, (h // patch) * (w // patch), patch * patch * c)


def unpatchify(
    patches: torch.Tensor, patch: int, grid: tuple[int, int], chans: int
) -> torch.Tensor:
    """(B, L, p*p*C) -> (B, C, H, W); the inverse of :func:`patchify`."""
    b = patches.shape[0]
    gh, gw = grid
    x = patches.reshape(b, gh, gw, patch, patch, chans).permute(0, 5, 1, 3, 2, 4)  # (B,C,gh,p,gw,p)
    return x.reshape(b, chans, gh * patch, gw * patch)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over masked patches only: pred/target (B, L, P), mask (B, L) 1 = masked."""
    per_patch = (pred - target).pow(2).mean(dim=-1)  # (B, L)
    return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)


def normalize_patches(target: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Per-patch standardisation of pixel targets (MAE's ``norm_pix_loss``), (B, L, P)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    return (target - mean) / (var + eps).sqrt()


class MaskedAutoencoder(nn.Module):
    """MAE with a timm ViT encoder and a light transformer decoder.

    Args:
        encoder: a timm ``VisionTransformer`` with a class token and learnable/absolute position
            embedding including the CLS slot (the default ViT layout); its head is unused.
        decoder_dim: decoder width E.
        decoder_depth: number of decoder blocks.
        decoder_heads: decoder attention heads.
        mlp_ratio: decoder MLP expansion.
        norm_pix_loss: regress per-patch normalized pixels (MAE's default for better features).
        fixed_pos_embed: overwrite the encoder's position embedding with fixed 2-D sin-cos values
            and freeze it, as MAE does.
        attention: ``sdpa`` (fused kernel), ``matmul`` (explicit softmax attention) or ``auto``
            (matmul on CPU for short sequences, SDPA otherwise); all compute the same function.
        init_encoder: give the encoder MAE's initialisation too (:meth:`_init_weights`), as for a
            freshly built encoder; False keeps the weights the encoder carries (e.g. timm's
            pretrained ones). The decoder always gets MAE's initialisation.
    """

    def __init__(
        self,
        encoder: VisionTransformer,
        decoder_dim: int = 128,
        decoder_depth: int = 4,
        decoder_heads: int = 4,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = True,
        fixed_pos_embed: bool = True,
        attention: AttentionImpl = "auto",
        init_encoder: bool = True,
    ) -> None:
        super().__init__()
        if encoder.cls_token is None or encoder.no_embed_class or encoder.num_reg_tokens:
            raise ConfigError(
                "the MAE encoder must be a ViT with one class token embedded with "
                "the patches (class_token=True, no_embed_class=False, reg_tokens=0)"
            )
        if decoder_dim % decoder_heads:
            raise ConfigError(
                f"decoder_dim {decoder_dim} must be divisible by decoder_heads {decoder_heads} "
                "({field})",
                "decoder_heads",
            )
        self.encoder = encoder
        self.patch = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)
        self.chans = encoder.patch_embed.proj.in_channels
        self.norm_pix_loss = norm_pix_loss
        self.attention = attention
        dim = encoder.embed_dim
        if fixed_pos_embed:
            with torch.no_grad():
                encoder.pos_embed.copy_(sincos_pos_embed(dim, self.grid, cls_token=True))
            encoder.pos_embed.requires_grad_(False)

        self.decoder_embed = nn.Linear(dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer(
            "decoder_pos_embed",
            sincos_pos_embed(decoder_dim, self.grid, cls_token=True),
            persistent=False,
        )
        self.decoder_blocks = nn.ModuleList(
            Block(
                decoder_dim,
                decoder_heads,
                mlp_ratio,
                qkv_bias=True,
                norm_layer=partial(nn.LayerNorm, eps=LN_EPS),
            )
            for _ in range(decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=LN_EPS)
        self.decoder_pred = nn.Linear(decoder_dim, self.patch * self.patch * self.chans)
        self._init_weights(init_encoder)

    @torch.no_grad()
    def _init_weights(self, init_encoder: bool) -> None:
        """MAE's initialisation (official ``initialize_weights``; SCIENCE.md §5).

        Every ``nn.Linear`` xavier-uniform with zero bias, every ``nn.LayerNorm`` weight 1 and
        bias 0, the mask token normal(0.02); with ``init_encoder`` the same for the encoder, plus
        its class token normal(0.02) and the patch embedding's conv weight (D, C, p, p)
        xavier-uniform as the (D, C*p*p) linear map it is (xavier on the 4-D kernel would count a
        fan-out of D*p*p and draw ~p/1.4 times smaller weights when D = C*p*p). The conv bias keeps
        PyTorch's default, as in MAE. Runs once, here: a checkpoint loaded later is never
        overwritten.
        """
        nn.init.normal_(self.mask_token, std=TOKEN_INIT_STD)
        roots: list[nn.Module] = [
            self.decoder_embed,
            self.decoder_blocks,
            self.decoder_norm,
            self.decoder_pred,
        ]
        if init_encoder:
            weight = self.encoder.patch_embed.proj.weight
            nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
            nn.init.normal_(self.encoder.cls_token, std=TOKEN_INIT_STD)
            roots.insert(0, self.encoder)
        for root in roots:
            for module in root.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_uniform_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)
                elif isinstance(module, nn.LayerNorm) and module.elementwise_affine:
                    nn.init.ones_(module.weight)
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def forward_encoder(self, images: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Encode the visible patches: (B, C, H, W) -> (B, 1 + K, D), CLS first, normalized."""
        enc = self.encoder
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]  # (B, L, D)
        x = gather_tokens(x, masking.ids_keep)  # (B, K, D)
        cls = (enc.cls_token + enc.pos_embed[:, :1]).expand(x.shape[0], -1, -1)  # (B, 1, D)
        x = enc.pos_drop(torch.cat([cls, x], dim=1))
        set_attention_impl(enc.blocks, use_sdpa(self.attention, x.device, x.shape[1]))
        x = enc.blocks(enc.norm_pre(x))
        return enc.norm(x)

    def decoder_input(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Decoder tokens (B, 1 + L, E) in image order: embedded latents plus mask tokens.

        Also picks the decoder's attention kernel for this sequence length.
        """
        x = self.decoder_embed(latent)  # (B, 1 + K, E)
        b, k1, e = x.shape
        mask_tokens = self.mask_token.expand(b, self.num_patches + 1 - k1, e)  # (B, L - K, E)
        x_ = torch.cat([x[:, 1:], mask_tokens], dim=1)  # (B, L, E) visible first, then masked
        x_ = gather_tokens(x_, masking.ids_restore)  # (B, L, E) image order
        x = torch.cat([x[:, :1], x_], dim=1) + self.decoder_pos_embed  # (B, 1 + L, E)
        set_attention_impl(self.decoder_blocks, use_sdpa(self.attention, x.device, x.shape[1]))
        return x

    def forward_decoder(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Predict every patch: latent (B, 1 + K, D) -> pixels (B, L, p*p*C)."""
        x = self.decoder_input(latent, masking)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]  # drop CLS -> (B, L, P)

    def forward_decoder_masked(self, latent: torch.Tensor, masking: Masking) -> torch.Tensor:
        """Predict the masked patches only: latent (B, 1 + K, D) -> pixels (B, L - K, P).

        The same function as :meth:`forward_decoder` restricted to ``masking.ids_masked``, with
        less work: the last block's attention still runs over all ``1 + L`` tokens (every token is
        a key), but its MLP, the final norm and the pixel head run on the ``L - K`` masked tokens,
        whose predictions are all the loss reads (about 2 % of the step's FLOPs at mask 0.75).
        """
        *body, last = self.decoder_blocks
        x = self.decoder_input(latent, masking)
        for block in body:
            x = block(x)
        # timm's Block.forward, split at the residual stream: attention on every token, ...
        x = x + last.drop_path1(last.ls1(last.attn(last.norm1(x))))
        # ... then the token-wise half on the masked tokens only (drop_path stays per sample).
        x = gather_tokens(x[:, 1:], masking.ids_masked)  # (B, L - K, E)
        x = x + last.drop_path2(last.ls2(last.mlp(last.norm2(x))))
        return self.decoder_pred(self.decoder_norm(x))  # (B, L - K, P)

    def training_loss(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        strategy: Strategy = "random",
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The loss of :meth:`forward` (same masks for the same generator) without predicting the
        visible patches: what the training step needs, computed with less work."""
        return self.training_loss_and_latent(images, mask_ratio, strategy, generator)[0]

    def training_loss_and_latent(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        strategy: Strategy = "random",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`training_loss` and the encoder output it came from, latent (B, 1 + K, D)."""
        masking = make_masking(
            strategy, images.shape[0], self.grid, mask_ratio, images.device, generator
        )
        latent = self.forward_encoder(images, masking)  # (B, 1 + K, D)
        pred = self.forward_decoder_masked(latent, masking)
        target = gather_tokens(self.target(images), masking.ids_masked)  # (B, L - K, P)
        sq = (pred - target).pow(2)  # every sample has L - K masked patches
        # mask ratio 0: no masked patch, loss 0 as in forward
        return sq.sum() / max(1, sq.numel()), latent

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """The regression target (B, L, P): pixels, per-patch normalized if ``norm_pix_loss``."""
        target = patchify(images, self.patch)
        return normalize_patches(target) if self.norm_pix_loss else target

    def forward(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        strategy: Strategy = "random",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns ``(loss, pred (B, L, P), mask (B, L))``; the loss is on masked patches only."""
        loss, pred, mask, _ = self.forward_with_latent(images, mask_ratio, strategy, generator)
        return loss, pred, mask

    def forward_with_latent(
        self,
        images: torch.Tensor,
        mask_ratio: float = 0.75,
        strategy: Strategy = "random",
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:meth:`forward` plus the encoder output on the visible tokens, latent (B, 1 + K, D)."""
        masking = make_masking(
            strategy, images.shape[0], self.grid, mask_ratio, images.device, generator
        )
        latent = self.forward_encoder(images, masking)  # (B, 1 + K, D)
        pred = self.forward_decoder(latent, masking)
        loss = masked_mse(pred, self.target(images), masking.mask)
        return loss, pred, masking.mask, latent

    def encode(self, images: torch.Tensor) -> EncoderFeatures:
        """Unmasked features of all patches (call in eval mode for probes and rank metrics)."""
        return encoder_features(self.encoder, images)

    def unnormalize_prediction(
        self, pred: torch.Tensor, images: torch.Tensor, mask: torch.Tensor
    ) -> torch.Tensor:
        """Predicted patches in image space (B, L, P).

        With ``norm_pix_loss`` a masked patch's own mean and variance are unknown, so predictions
        are rescaled with the mean and standard deviation of the *visible* patches' pixels of the
        same image (per channel), which is what the model could know.
        """
        if not self.norm_pix_loss:
            return pred
        b = images.shape[0]
        pixels = patchify(images, self.patch).reshape(b, self.num_patches, -1, self.chans)
        visible = (1.0 - mask)[:, :, None, None]  # (B, L, 1, 1)
        count = visible.sum(dim=(1, 2), keepdim=True).clamp_min(1.0) * pixels.shape[2]
        mean = (pixels * visible).sum(dim=(1, 2), keepdim=True) / count  # (B, 1, 1, C)
        var = ((pixels - mean).pow(2) * visible).sum(dim=(1, 2), keepdim=True) / count
        out = pred.reshape(b, self.num_patches, -1, self.chans) * var.sqrt() + mean
        return out.reshape_as(pred)
