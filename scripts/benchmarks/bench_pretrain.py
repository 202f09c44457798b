"""Benchmark one MAE pretraining step: maskrank against a straightforward reference.

    python scripts/benchmarks/bench_pretrain.py                 # CIFAR ViT-Tiny/4 MAE, batch 128, this machine
    python scripts/benchmarks/bench_pretrain.py --rounds 5 --steps 15 --seed 7
    python scripts/benchmarks/bench_pretrain.py --arms reference maskrank --profile

Every arm trains the same model (ViT-Tiny/4 encoder at 32 px, decoder 128 wide / 4 blocks / 4
heads, mask ratio 0.75, norm_pix_loss) from the same weights on the same images; the script checks
that the reference and maskrank give the same loss and gradients from the same masks, and that the
compiled step gives eager's, before timing anything ("identical math"). Arms:

- ``reference``: written here the way official MAE, lightly and most re-implementations do it:
  timm blocks with their default attention (SDPA), argsort + gather masking, ``torch.optim.AdamW``
  in torch's default implementation (a per-tensor loop on CPU) over MAE's parameter groups;
- ``maskrank-torch-adamw``: ``maskrank.models.MaskedAutoencoder.training_loss`` (what the
  training step calls: the last decoder block's MLP and the pixel head on masked tokens only,
  matmul attention at short sequences on CPU) with the reference's optimizer: the model alone;
- ``maskrank``: the same with maskrank's default optimizer, torch's fused AdamW (one lever more);
- ``maskrank-compiled``: the same with every transformer block compiled in place, as
  ``MAEPretraining(compile=True)`` does (its compile time is reported apart, not timed).

Timing (``benchlib``): ``rounds`` rounds, the arms in a fresh random order in each (``--seed``,
printed); in a round every arm runs ``warmup`` untimed steps then ``steps`` timed steps, timed in
wall seconds or, with ``--clock cpu``, in the process's CPU seconds (on a machine shared with
other work, with ``--threads 1``: the step's own work, inflated far less by the other processes).
Reported:
median images/s and ms/step with the interquartile range over all timed steps, the paired ratio
against the reference (per round: the reference's median step time over the arm's; their median
and every round's value), FLOPs per step from ``benchlib``'s analytic model (the same function for
every arm; the masked tail is counted for the arms that compute it), achieved GFLOP/s, and that
rate as a fraction of an fp32 GEMM rate (a 1024^3 matmul, median of its own repeats) measured
before and after every round. The machine's load average is printed before and after.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import benchlib  # scripts/benchmarks/benchlib.py: a script's own folder is first on sys.path
import torch
from torch import nn

from maskrank.models.mae import MaskedAutoencoder, normalize_patches, patchify
from maskrank.models.masking import num_kept
from maskrank.models.vit import ViTSpec
from maskrank.optim import adamw
from maskrank.tasks.compiling import check_compile, compile_blocks

ARMS = ("reference", "maskrank-torch-adamw", "maskrank", "maskrank-compiled")
WHAT = {
    "reference": "timm blocks, SDPA, argsort masking, torch AdamW (default implementation)",
    "maskrank-torch-adamw": "`training_loss`, matmul attention, the reference's AdamW",
    "maskrank": "`training_loss`, matmul attention, fused AdamW (maskrank's default)",
    "maskrank-compiled": "as maskrank, every block compiled (`compile: true`)",
}


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
    """One way of running a training step: model + optimizer + how to call it.

    ``mae`` is the MaskedAutoencoder whose geometry the FLOP model reads (default: ``model``);
    ``masked_tail``: whether the call computes the last decoder MLP and head on masked tokens only.
    """

    def __init__(
        self,
        name: str,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        call: Callable[[torch.Tensor, int], torch.Tensor],
        mask_ratio: float = 0.75,
        masked_tail: bool = True,
        mae: MaskedAutoencoder | None = None,
    ) -> None:
        self.name, self.model, self.opt, self.call = name, model, opt, call
        self.mask_ratio, self.masked_tail = mask_ratio, masked_tail
        self.mae = model if mae is None else mae

    def step(self, images: torch.Tensor, seed: int) -> float:
        loss = self.call(images, seed)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss.item()


def gemm_rate(n: int = 1024, repeats: int = 7, clock: str = "wall") -> float:
    """fp32 GEMM GFLOP/s, median of ``repeats`` timed n x n x n matmuls (on ``clock``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    times = benchlib.time_steps(lambda: a @ b, 1, repeats, clock)
    return 2 * n**3 / statistics.median(times) / 1e9


def step_flops(arm: Arm, images: torch.Tensor) -> int:
    """Forward + backward FLOPs of one step of ``arm`` (``benchlib``'s analytic model)."""
    kept = num_kept(arm.mae.num_patches, arm.mask_ratio)
    return benchlib.mae_flops_of(arm.mae, images.shape[0], kept, arm.masked_tail).total


def build_arms(names: list[str], ours: MaskedAutoencoder, batch: int, ratio: float) -> list[Arm]:
    """The arms, each with its own copy of the same initial weights."""
    length = ours.num_patches
    keep = num_kept(length, ratio)
    betas = (0.9, 0.95)
    arms = []
    for name in names:
        if name == "reference":
            ref = ReferenceMAE(ours)

            def call_ref(x: torch.Tensor, seed: int, ref=ref) -> torch.Tensor:
                # MAE's rule, as maskrank: keep the patches with the lowest noise of the same draw
                gen = torch.Generator().manual_seed(seed)
                return ref(x, torch.rand(batch, length, generator=gen), keep)

            opt = adamw(ref.m, 1e-4, 0.05, betas, fused=False)
            arms.append(Arm(name, ref, opt, call_ref, ratio, masked_tail=False, mae=ref.m))
            continue
        model = copy.deepcopy(ours)
        if name == "maskrank-compiled":
            compile_blocks([*model.encoder.blocks, *model.decoder_blocks])

        def call_ours(x: torch.Tensor, seed: int, model=model) -> torch.Tensor:
            gen = torch.Generator().manual_seed(seed)
            return model.training_loss(x, ratio, "random", generator=gen)

        fused = name != "maskrank-torch-adamw"
        opt = adamw(model, 1e-4, 0.05, betas, fused=fused)
        arms.append(Arm(name, model, opt, call_ours, ratio, masked_tail=True))
    return arms


def check_identical(arms: list[Arm], images: torch.Tensor) -> dict[str, float]:
    """Loss and a gradient of every arm from the same weights and masks agree; returns the
    seconds of each arm's first step (a compiled arm's compile time)."""
    first: dict[str, float] = {}
    losses, grads = {}, {}
    for arm in arms:
        start = time.perf_counter()
        loss = arm.call(images, 123)
        loss.backward()
        first[arm.name] = time.perf_counter() - start
        losses[arm.name] = loss.item()
        grads[arm.name] = arm.mae.encoder.blocks[0].attn.qkv.weight.grad.clone()
        arm.opt.zero_grad(set_to_none=True)
    base = arms[0].name
    for name in losses:
        # a compiled step fuses and reorders float sums: equal up to rounding, not bit for bit
        tol = 10.0 if name == "maskrank-compiled" else 1.0
        assert abs(losses[name] - losses[base]) <= tol * 1e-5 * abs(losses[base]), losses
        torch.testing.assert_close(grads[name], grads[base], rtol=tol * 1e-4, atol=tol * 1e-6)
    print(
        f"check: same loss ({', '.join(f'{n} {v:.6f}' for n, v in losses.items())}) and "
        "gradients from the same weights and masks"
    )
    return first


def profile(arm: Arm, images: torch.Tensor, steps: int = 3, rows: int = 15) -> None:
    """torch.profiler's top operators of ``steps`` steps of ``arm``, by self CPU time."""
    arm.step(images, 0)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for seed in range(steps):
            arm.step(images, seed)
    print(f"\nprofile of {arm.name}, {steps} steps, top {rows} operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--mask-ratio", type=float, default=0.75)
    parser.add_argument("--preset", default="vit_tiny_32")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm order per round")
    parser.add_argument("--profile", action="store_true", help="profile every arm afterwards")
    parser.add_argument(
        "--clock", choices=list(benchlib.CLOCKS), default="wall", help="wall or process CPU time"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    names = ["reference"] + [n for n in args.arms if n != "reference"]  # the paired baseline

    print(f"before: {benchlib.load_average()}")
    if "maskrank-compiled" in names:
        check_compile(torch.device("cpu"))
    torch.manual_seed(0)
    encoder = ViTSpec(preset=args.preset).build(img_size=32, in_chans=3, num_classes=0)
    ours = MaskedAutoencoder(encoder, decoder_dim=128, decoder_depth=4, decoder_heads=4)
    arms = build_arms(names, ours, args.batch, args.mask_ratio)
    images = torch.randn(args.batch, 3, 32, 32)
    first = check_identical(arms, images)
    if "maskrank-compiled" in first:
        print(f"first compiled step (compiles the blocks): {first['maskrank-compiled']:.1f} s")

    gemm: list[float] = []
    seeds = iter(range(1, 10**9))

    def round_of(arm: Arm) -> Callable[[], list[float]]:
        return lambda: benchlib.time_steps(
            lambda: arm.step(images, next(seeds)), args.warmup, args.steps, args.clock
        )

    def report(r: int, medians: dict[str, float]) -> None:
        gemm.append(gemm_rate(clock=args.clock))
        benchlib.print_round(r, medians)

    gemm.append(gemm_rate(clock=args.clock))
    timings = benchlib.run_rounds(
        {arm.name: round_of(arm) for arm in arms}, args.rounds, args.seed, report
    )
    print(f"after: {benchlib.load_average()}")

    peak = statistics.median(gemm)
    print(
        f"\nCPU threads: {torch.get_num_threads()}, batch {args.batch}, {args.preset} MAE, "
        f"mask {args.mask_ratio}, {args.rounds} rounds x {args.steps} timed steps per arm, "
        f"{args.clock} clock, " + benchlib.orders_line(args.seed, timings.orders)
    )
    print(
        f"fp32 GEMM rate (1024^3 matmul, median of {len(gemm)}, around every round): "
        f"{peak:.1f} GFLOP/s [{min(gemm):.1f}, {max(gemm):.1f}]\n"
    )
    rows = []
    for arm in arms:
        med, low, high = benchlib.spread(timings.all(arm.name))
        flops = step_flops(arm, images)
        rate = flops / med / 1e9
        rows.append(
            (
                f"{arm.name} ({WHAT[arm.name]})",
                f"{args.batch / med:.1f}",
                f"{med * 1e3:.0f} [{low * 1e3:.0f}-{high * 1e3:.0f}]",
                f"{flops / 1e9:.1f}",
                f"{rate:.1f}",
                f"{100 * rate / peak:.1f} %",
                benchlib.ratio_cell(timings.paired(arm.name, "reference")),
            )
        )
    headers = (
        "arm",
        "img/s",
        "ms/step (IQR)",
        "GFLOP/step",
        "GFLOP/s",
        "% of GEMM rate",
        "vs reference, paired (per round)",
    )
    print(benchlib.markdown_table(headers, rows))
    chain = [n for n in ARMS if n in timings.samples and n != "reference"]
    for before, after in zip(chain[:-1], chain[1:], strict=False):
        print(f"lever {before} -> {after}: " + benchlib.ratio_cell(timings.paired(after, before)))
    if args.profile:
        for arm in arms:
            profile(arm, images)


if __name__ == "__main__":
    main()
