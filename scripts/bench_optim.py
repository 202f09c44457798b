"""Benchmark GaLore AdamW against AdamW on the CIFAR MAE (SCIENCE.md §8): step time and state bytes.

    python scripts/bench_optim.py                       # ViT-Tiny/4 MAE, batch 128, rank 32
    python scripts/bench_optim.py --rounds 5 --steps 3

Both arms train copies of the same model (ViT-Tiny/4 encoder at 32 px, decoder 128 wide / 4 blocks,
mask ratio 0.75) on the same images and masks, with maskrank's optimizers as the tasks build them:
``adamw`` (torch's fused AdamW) and ``galore_adamw`` (GaLore on every qkv/proj/fc1/fc2 weight of
encoder and decoder, AdamW on the rest).

Timing: ``rounds`` interleaved rounds; in each, every arm runs one untimed step, then ``steps``
timed training steps (forward, backward, optimizer step; GaLore's projection is not refreshed in
these), then ``opt_repeats`` timed optimizer steps alone on the last gradients: AdamW, GaLore
without refresh, and GaLore with a refresh (the SVD of every target's gradient). GaLore's step
amortised over ``update_proj_gap`` steps is ``step + (refresh - no refresh) / gap``. Reported:
medians over all timed repeats with their min-max range, and the paired ratio (median over rounds
of the GaLore arm's median over AdamW's in the same round). State bytes count every tensor in the
optimizer state after one step.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from maskrank.models.mae import MaskedAutoencoder
from maskrank.models.vit import ViTSpec
from maskrank.optim import OptimizerSpec, build_optimizer, galore_targets


def state_bytes(optimizer: torch.optim.Optimizer, params=None) -> int:
    """Bytes of the tensors in ``optimizer``'s state (for ``params`` only, if given)."""
    keep = None if params is None else {id(p) for p in params}
    return sum(
        t.numel() * t.element_size()
        for p, state in optimizer.state.items()
        if keep is None or id(p) in keep
        for t in state.values()
        if isinstance(t, torch.Tensor)
    )


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values: list[float], scale: float = 1e3) -> str:
    """``median [min-max]`` in milliseconds."""
    med = statistics.median(values) * scale
    return f"{med:.1f} [{min(values) * scale:.1f}-{max(values) * scale:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--gap", type=int, default=200, help="update_proj_gap")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per arm/round")
    parser.add_argument("--opt_repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    encoder = ViTSpec(preset="vit_tiny_32").build(img_size=32, in_chans=3, num_classes=0)
    base = MaskedAutoencoder(encoder, decoder_dim=128, decoder_depth=4, decoder_heads=4)
    lr, wd, betas = 1.5e-3 * args.batch / 256, 0.05, (0.9, 0.95)  # the CIFAR recipe's
    specs = {
        "adamw": OptimizerSpec(name="adamw"),
        "galore": OptimizerSpec(name="galore_adamw", rank=args.rank, update_proj_gap=args.gap),
    }
    arms = {}
    for name, spec in specs.items():
        model = copy.deepcopy(base).train()
        arms[name] = (model, build_optimizer(model, spec, lr, wd, betas))
    images = torch.randn(args.batch, 3, 32, 32)

    def train_step(name: str, seed: int) -> None:
        model, opt = arms[name]
        opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(seed)
        model.training_loss(images, args.mask_ratio, "random", generator=gen).backward()
        opt.step()

    def galore_gap(value: int) -> None:
        for group in arms["galore"][1].param_groups:
            group["update_proj_gap"] = value

    step = {name: [] for name in arms}
    opt_only = {"adamw": [], "galore": [], "galore_refresh": []}
    ratios = []
    for name in arms:
        train_step(name, 0)  # first step: state allocated, GaLore's first projection
    for rnd in range(args.rounds):
        medians = {}
        for name in arms:
            galore_gap(10**9)  # timed training steps never refresh (refreshes are timed below)
            train_step(name, 1000 + rnd)
            times = [
                timed(lambda n=name, s=rnd * 100 + i: train_step(n, s)) for i in range(args.steps)
            ]
            step[name] += times
            medians[name] = statistics.median(times)
        ratios.append(medians["galore"] / medians["adamw"])
        for _ in range(args.opt_repeats):
            opt_only["adamw"].append(timed(arms["adamw"][1].step))
            galore_gap(10**9)
            opt_only["galore"].append(timed(arms["galore"][1].step))
            galore_gap(1)  # every step refreshes
            opt_only["galore_refresh"].append(timed(arms["galore"][1].step))
        galore_gap(args.gap)
    svd_extra = statistics.median(opt_only["galore_refresh"]) - statistics.median(
        opt_only["galore"]
    )
    amortised = statistics.median(step["galore"]) + svd_extra / args.gap
    adamw_step = statistics.median(step["adamw"])

    model, galore_opt = arms["galore"]
    targets = list(galore_targets(model, specs["galore"]).values())
    bytes_adamw = state_bytes(arms["adamw"][1])
    bytes_galore = state_bytes(galore_opt)
    t_adamw = state_bytes(
        arms["adamw"][1], galore_targets(arms["adamw"][0], specs["galore"]).values()
    )  # the same weights, by name, in the AdamW arm
    t_galore = state_bytes(galore_opt, targets)
    n_params = sum(p.numel() for p in model.parameters())

    print(
        f"MAE ViT-Tiny/4 (enc 192x12, dec 128x4), batch {args.batch}, {n_params / 1e6:.2f} M "
        f"parameters; GaLore rank {args.rank}, update_proj_gap {args.gap}, "
        f"{len(targets)} target matrices; {args.threads} thread(s), {args.rounds} rounds x "
        f"{args.steps} steps, {args.opt_repeats} optimizer-only repeats per round"
    )
    print()
    print("| what | AdamW | GaLore | GaLore / AdamW |")
    print("|---|---|---|---|")
    print(
        f"| training step, ms (median [min-max]) | {spread(step['adamw'])} | "
        f"{spread(step['galore'])} | {statistics.median(ratios):.3f} "
        f"[{min(ratios):.3f}-{max(ratios):.3f}] paired |"
    )
    print(
        f"| optimizer step alone, ms | {spread(opt_only['adamw'])} | {spread(opt_only['galore'])} | "
        f"{statistics.median(opt_only['galore']) / statistics.median(opt_only['adamw']):.2f} |"
    )
    print(
        f"| optimizer step with projection refresh (SVD), ms | - | "
        f"{spread(opt_only['galore_refresh'])} | - |"
    )
    print(
        f"| training step amortised over {args.gap} steps, ms | {adamw_step * 1e3:.1f} | "
        f"{amortised * 1e3:.1f} | {amortised / adamw_step:.3f} |"
    )
    print(
        f"| optimizer state, MiB (all parameters) | {bytes_adamw / 2**20:.2f} | "
        f"{bytes_galore / 2**20:.2f} | {bytes_galore / bytes_adamw:.3f} |"
    )
    print(
        f"| optimizer state, MiB (the {len(targets)} target matrices) | {t_adamw / 2**20:.2f} | "
        f"{t_galore / 2**20:.2f} | {t_galore / t_adamw:.3f} |"
    )


if __name__ == "__main__":
    main()
