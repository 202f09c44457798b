"""Benchmark one MAE pretraining step: maskrank against a straightforward reference.

    python scripts/bench_pretrain.py                 # CIFAR ViT-Tiny/4 MAE, batch 128, this machine
    python scripts/bench_pretrain.py --rounds 5 --steps 15

Both arms train the same model (ViT-Tiny/4 encoder at 32 px, decoder 128 wide / 4 blocks / 4 heads,
mask ratio 0.75, norm_pix_loss) from the same weights on the same images and masks; the script
checks that their losses and gradients agree before timing anything ("identical math").

- reference: written here the way official MAE, lightly and most re-implementations do it: timm
  blocks with their default attention (SDPA), argsort + gather masking, ``torch.optim.AdamW``
  with its default implementation.
- maskrank: ``maskrank.models.MaskedAutoencoder.training_loss`` (what the training step calls: the
  last decoder block's MLP and the pixel head on masked tokens only) with maskrank's fused AdamW.

Timing: ``rounds`` interleaved rounds; in each, every arm runs ``warmup`` untimed steps then
``steps`` timed steps. Reported: median images/s over all timed steps, the paired ratio (median over
rounds of maskrank's median step time over the reference's in the same round), FLOPs per step from
``torch.utils.flop_counter`` (forward + backward), achieved GFLOP/s, and that rate as a fraction of
an fp32 GEMM rate (a 1024^3 matmul, median of its own repeats) measured inside every round.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from maskrank.models.mae import MaskedAutoencoder, normalize_patches, patchify
from maskrank.models.masking import num_kept
from maskrank.models.vit import ViTSpec
from maskrank.optim import adamw


class ReferenceMAE(nn.Module):
    """A plain MAE forward over the same modules (shares maskrank's parameters by name)."""

    def __init__(self, source: MaskedAutoencoder) -> None:
        super().__init__()
        # Same parameter objects' *values* (deep copy), same names: weights load one to one.
        clone = type(source)(
            copy.deepcopy(source.encoder),
            decoder_dim=source.decoder_embed.out_features,
            decoder_depth=len(source.decoder_blocks),
            decoder_heads=source.decoder_blocks[0].attn.num_heads,
            attention="sdpa",
        )
        clone.load_state_dict(source.state_dict())
        self.m = clone
        self.patch = source.patch

    def forward(self, images: torch.Tensor, noise: torch.Tensor, keep: int) -> torch.Tensor:
        m, enc = self.m, self.m.encoder
        b = images.shape[0]
        x = enc.patch_embed(images) + enc.pos_embed[:, 1:]
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :keep]
        x = torch.gather(x, 1, ids_keep.unsqueeze(-1).repeat(1, 1, x.shape[-1]))
        mask = torch.ones(b, noise.shape[1], device=images.device)
        mask[:, :keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        cls = enc.cls_token + enc.pos_embed[:, :1]
        x = torch.cat([cls.expand(b, -1, -1), x], dim=1)
        for blk in enc.blocks:
            x = blk(x)
        x = enc.norm(x)
        x = m.decoder_embed(x)
        tokens = m.mask_token.repeat(b, ids_restore.shape[1] + 1 - x.shape[1], 1)
        x_ = torch.cat([x[:, 1:, :], tokens], dim=1)
        x_ = torch.gather(x_, 1, ids_restore.unsqueeze(-1).repeat(1, 1, x.shape[2]))
        x = torch.cat([x[:, :1, :], x_], dim=1) + m.decoder_pos_embed
        for blk in m.decoder_blocks:
            x = blk(x)
        pred = m.decoder_pred(m.decoder_norm(x))[:, 1:, :]
        target = normalize_patches(patchify(images, self.patch))
        loss = ((pred - target) ** 2).mean(dim=-1)
        return (loss * mask).sum() / mask.sum()


class Arm:
    """One way of running a training step: model + optimizer + how to call it."""

    def __init__(self, name: str, model: nn.Module, opt: torch.optim.Optimizer, call) -> None:
        self.name, self.model, self.opt, self.call = name, model, opt, call
        self.times: list[float] = []
        self.round_medians: list[float] = []

    def step(self, images: torch.Tensor, seed: int) -> float:
        loss = self.call(images, seed)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def gemm_rate(n: int = 1024, repeats: int = 7) -> float:
    """fp32 GEMM GFLOP/s, median of ``repeats`` timed n x n x n matmuls."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_flops(arm: Arm, images: torch.Tensor) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        loss = arm.call(images, 0)
        loss.backward()
    arm.opt.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--preset", default="vit_tiny_32")
    args = parser.parse_args()

    torch.manual_seed(0)
    encoder = ViTSpec(preset=args.preset).build(img_size=32, in_chans=3, num_classes=0)
    ours = MaskedAutoencoder(encoder, decoder_dim=128, decoder_depth=4, decoder_heads=4)
    ref = ReferenceMAE(ours)
    length = ours.num_patches
    keep = num_kept(length, args.mask_ratio)
    images = torch.randn(args.batch, 3, 32, 32)

    def call_ours(x: torch.Tensor, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed)
        return ours.training_loss(x, args.mask_ratio, "random", generator=gen)

    def call_ref(x: torch.Tensor, seed: int) -> torch.Tensor:
        # both keep the patches with the lowest noise (MAE's rule): the same draw, the same masks
        gen = torch.Generator().manual_seed(seed)
        return ref(x, torch.rand(args.batch, length, generator=gen), keep)

    ref_opt = torch.optim.AdamW(
        [p for p in ref.parameters() if p.requires_grad],
        lr=1e-4,
        betas=(0.9, 0.95),
        weight_decay=0.05,
    )
    arms = [
        Arm("reference", ref, ref_opt, call_ref),
        Arm("maskrank", ours, adamw(ours, 1e-4, 0.05, (0.9, 0.95)), call_ours),
    ]

    # Identical math: same loss and same gradients from the same weights, images and masks.
    losses = []
    for arm in arms:
        loss = arm.call(images, 123)
        loss.backward()
        losses.append(loss.item())
    g_ref = ref.m.encoder.blocks[0].attn.qkv.weight.grad
    g_ours = ours.encoder.blocks[0].attn.qkv.weight.grad
    assert abs(losses[0] - losses[1]) <= 1e-5 * abs(losses[0]), losses
    torch.testing.assert_close(g_ours, g_ref, rtol=1e-4, atol=1e-6)
    for arm in arms:
        arm.opt.zero_grad(set_to_none=True)
    print(f"check: same loss ({losses[0]:.6f} vs {losses[1]:.6f}) and gradients from same weights")

    flops = {arm.name: step_flops(arm, images) for arm in arms}
    gemm: list[float] = []
    seed = 0
    for r in range(args.rounds):
        gemm.append(gemm_rate())
        for arm in arms if r % 2 == 0 else arms[::-1]:
            for _ in range(args.warmup):
                arm.step(images, seed := seed + 1)
            times = []
            for _ in range(args.steps):
                t0 = time.perf_counter()
                arm.step(images, seed := seed + 1)
                times.append(time.perf_counter() - t0)
            arm.times += times
            arm.round_medians.append(statistics.median(times))
        gemm.append(gemm_rate())

    peak = statistics.median(gemm)
    ref_arm = arms[0]
    print(
        f"\nCPU threads: {torch.get_num_threads()}, batch {args.batch}, {args.preset} MAE, "
        f"mask {args.mask_ratio}, {args.rounds} rounds x {args.steps} timed steps per arm"
    )
    print(f"fp32 GEMM rate (1024^3 matmul, median of {len(gemm)}): {peak:.1f} GFLOP/s\n")
    header = (
        f"{'arm':<10} {'img/s':>8} {'ms/step':>9} {'GFLOP/step':>11} {'GFLOP/s':>8} "
        f"{'% GEMM':>7} {'vs ref':>7}"
    )
    print(header)
    print("-" * len(header))
    for arm in arms:
        med = statistics.median(arm.times)
        rate = flops[arm.name] / med / 1e9
        paired = statistics.median(
            r / a for r, a in zip(ref_arm.round_medians, arm.round_medians, strict=True)
        )
        print(
            f"{arm.name:<10} {args.batch / med:8.1f} {med * 1e3:9.1f} "
            f"{flops[arm.name] / 1e9:11.2f} {rate:8.1f} {100 * rate / peak:6.1f}% {paired:6.2f}x"
        )


if __name__ == "__main__":
    main()
