"""Benchmark GaLore AdamW, per projection method, against AdamW on the CIFAR MAE (SCIENCE.md §8).

    python scripts/benchmarks/bench_optim.py                          # ViT-Tiny/4 MAE, batch 128, rank 32
    python scripts/benchmarks/bench_optim.py --rounds 5 --steps 3 --arms adamw svd power
    python scripts/benchmarks/bench_optim.py --learning               # learning check on synthetic images
    python scripts/benchmarks/bench_optim.py --learning --root ../shared/data/cifar10

Arms (``--arms``): ``adamw`` (torch's fused AdamW) and GaLore on every qkv/proj/fc1/fc2 weight of
encoder and decoder (AdamW on the rest) with ``projection`` ``svd``, ``randomized`` or ``power``;
``svd+adaptive`` and ``power+adaptive`` add ``refresh_similarity`` = ``--tau``. Every arm trains
its own copy of the same model (ViT-Tiny/4 encoder at 32 px, decoder 128 wide / 4 blocks, mask
ratio 0.75), with maskrank's optimizers as the tasks build them.

Timing (default): ``rounds`` rounds, the arm order shuffled in each (the seed is printed). In a
round every arm runs one untimed training step and then ``steps`` timed ones (forward, backward,
optimizer step; no projection refresh in these), then, on its last gradients, ``opt_repeats``
pairs of timed optimizer steps alone: a plain one (no refresh) and a refresh one (every target
finds a new basis; for an adaptive arm, every target is checked, which costs the same
decomposition plus the similarity). Reported: medians over all timed repeats with their min-max
range, and per-round paired ratios (median [min-max] over rounds of the arm's round median over
AdamW's in the same round): the refresh step in AdamW optimizer steps and in the arm's own plain
optimizer steps; the training step amortised over ``update_proj_gap`` steps, ``step + (refresh -
plain) / gap``, against AdamW's whole step, and the same built from components, ``AdamW step +
(GaLore plain - AdamW) optimizer step + (refresh - plain) / gap``, which leaves out the noise of
forward and backward (identical in every arm). For an adaptive arm the amortised figures are the
worst case (every check replaces the basis); how often checks happen is a property of the
training run, counted by ``--learning``. State bytes count every optimizer state tensor.

Learning check (``--learning``): for each of ``seeds``, every arm trains from the same initial
weights on the same batches and masks for ``learn_steps`` steps (warmup then cosine, no
augmentation) on ``train_images`` images: synthetic low-rank images by default
(``maskrank.data.SyntheticLowRank``), or a CIFAR-10 ImageFolder with ``--root``. Reported: the
masked-patch reconstruction loss (norm_pix) on ``heldout_images`` held-out images with fixed masks,
per seed and its paired difference from the ``svd`` arm; decompositions per target; the mean
subspace similarity between the basis in use and the new one at the refreshes (checks).
"""

from __future__ import annotations

import argparse
import copy
import random
import statistics
import time
from collections.abc import Callable

import torch

from maskrank.data import ImageFolderDataModule, SyntheticLowRank
from maskrank.metrics import subspace_similarity
from maskrank.models.mae import MaskedAutoencoder
from maskrank.models.vit import ViTSpec
from maskrank.optim import OptimizerSpec, build_optimizer, galore_targets
from maskrank.optim.galore import GaLoreAdamW
from maskrank.optim.schedule import warmup_cosine

ARMS: tuple[str, ...] = ("adamw", "svd", "randomized", "power", "svd+adaptive", "power+adaptive")
NEVER = 10**9  # an update_proj_gap no timed step reaches


def arm_spec(arm: str, rank: int, gap: int, tau: float) -> OptimizerSpec:
    """The optimizer spec of ``arm`` (see :data:`ARMS`)."""
    if arm == "adamw":
        return OptimizerSpec(name="adamw")
    projection, _, adaptive = arm.partition("+")
    return OptimizerSpec(
        name="galore_adamw",
        rank=rank,
        update_proj_gap=gap,
        projection=projection,
        refresh_similarity=tau if adaptive else None,
    )


def build_mae(seed: int) -> MaskedAutoencoder:
    """The CIFAR ViT-Tiny/4 MAE, its weights drawn after ``manual_seed(seed)``."""
    torch.manual_seed(seed)
    encoder = ViTSpec(preset="vit_tiny_32").build(img_size=32, in_chans=3, num_classes=0)
    return MaskedAutoencoder(encoder, decoder_dim=128, decoder_depth=4, decoder_heads=4)


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


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    """``median [min-max]`` of ``values`` times ``scale``."""
    med = statistics.median(values) * scale
    lo, hi = min(values) * scale, max(values) * scale
    return f"{med:.{digits}f} [{lo:.{digits}f}-{hi:.{digits}f}]"


def set_gap(optimizer: torch.optim.Optimizer, gap: int) -> None:
    for group in optimizer.param_groups:
        group["update_proj_gap"] = gap


def force_refresh(optimizer: torch.optim.Optimizer) -> None:
    """Make the next step refresh (fixed gap) or check (adaptive) every GaLore target."""
    set_gap(optimizer, 1)
    for state in optimizer.state.values():
        if "refresh_factor" in state:
            state["refresh_factor"].fill_(1)  # due one step after its last check


def bench(args: argparse.Namespace) -> None:
    if "adamw" not in args.arms:
        raise SystemExit("bench_optim.py: --arms must include adamw (every ratio is against it)")
    base = build_mae(0)
    lr, wd, betas = 1.5e-3 * args.batch / 256, 0.05, (0.9, 0.95)  # the CIFAR recipe's
    specs = {arm: arm_spec(arm, args.rank, args.gap, args.tau) for arm in args.arms}
    arms = {}
    for arm, spec in specs.items():
        model = copy.deepcopy(base).train()
        arms[arm] = (model, build_optimizer(model, spec, lr, wd, betas))
    images = torch.randn(args.batch, 3, 32, 32)

    def train_step(arm: str, seed: int) -> None:
        model, opt = arms[arm]
        opt.zero_grad(set_to_none=True)
        gen = torch.Generator().manual_seed(seed)
        model.training_loss(images, args.mask_ratio, "random", generator=gen).backward()
        opt.step()

    for arm in arms:
        train_step(arm, 0)  # state allocated, the first projection found
    galore = [a for a in arms if a != "adamw"]
    train = {a: [] for a in arms}  # every timed repeat, seconds
    plain = {a: [] for a in arms}
    refresh = {a: [] for a in galore}
    per_round: list[dict[str, dict[str, float]]] = []  # round -> kind -> arm -> median
    shuffler = random.Random(args.seed)
    orders = []
    for rnd in range(args.rounds):
        order = list(arms)
        shuffler.shuffle(order)
        orders.append(order)
        medians: dict[str, dict[str, float]] = {"train": {}, "plain": {}, "refresh": {}}
        for arm in order:
            model, opt = arms[arm]
            set_gap(opt, NEVER)  # timed training steps never refresh
            train_step(arm, 1000 + rnd)
            times = [
                timed(lambda a=arm, s=rnd * 100 + i: train_step(a, s)) for i in range(args.steps)
            ]
            train[arm] += times
            medians["train"][arm] = statistics.median(times)
            plain_t, refresh_t = [], []
            for _ in range(args.opt_repeats):
                set_gap(opt, NEVER)
                plain_t.append(timed(opt.step))
                if arm != "adamw":
                    force_refresh(opt)
                    refresh_t.append(timed(opt.step))
            set_gap(opt, args.gap)
            plain[arm] += plain_t
            medians["plain"][arm] = statistics.median(plain_t)
            if refresh_t:
                refresh[arm] += refresh_t
                medians["refresh"][arm] = statistics.median(refresh_t)
        per_round.append(medians)

    n_params = sum(p.numel() for p in base.parameters())
    targets = galore_targets(base, arm_spec("svd", args.rank, args.gap, args.tau))
    print(
        f"MAE ViT-Tiny/4 (enc 192x12, dec 128x4), batch {args.batch}, {n_params / 1e6:.2f} M "
        f"parameters; GaLore rank {args.rank}, update_proj_gap {args.gap}, {len(targets)} target "
        f"matrices, adaptive arms refresh_similarity {args.tau}; {args.threads} thread(s), "
        f"{args.rounds} rounds x {args.steps} training steps, {args.opt_repeats} optimizer-only "
        f"repeats per round; shuffle seed {args.seed}, orders {orders}"
    )
    print()
    print("| arm | training step, ms | optimizer step, ms | refresh step, ms |")
    print("|---|---|---|---|")
    for arm in arms:
        ref = spread(refresh[arm], 1e3) if arm in refresh else "-"
        print(f"| {arm} | {spread(train[arm], 1e3)} | {spread(plain[arm], 1e3)} | {ref} |")
    print()
    print(
        "| arm | training step / AdamW | refresh step in AdamW optimizer steps | refresh step in "
        "own plain optimizer steps | amortised step / AdamW (whole steps) | amortised step / "
        "AdamW (components) | state, MiB | state / AdamW |"
    )
    print("|---|---|---|---|---|---|---|---|")
    adam_bytes = state_bytes(arms["adamw"][1])
    for arm in arms:
        ratios: dict[str, list[float]] = {k: [] for k in ("train", "ra", "ro", "whole", "comp")}
        for m in per_round:
            t_adam, o_adam = m["train"]["adamw"], m["plain"]["adamw"]
            ratios["train"].append(m["train"][arm] / t_adam)
            if arm == "adamw":
                continue
            extra = (m["refresh"][arm] - m["plain"][arm]) / args.gap
            ratios["ra"].append(m["refresh"][arm] / o_adam)
            ratios["ro"].append(m["refresh"][arm] / m["plain"][arm])
            ratios["whole"].append((m["train"][arm] + extra) / t_adam)
            ratios["comp"].append((t_adam + m["plain"][arm] - o_adam + extra) / t_adam)
        cells = [spread(ratios[k], digits=3) if ratios[k] else "-" for k in ratios]
        cells[1:3] = [spread(ratios[k], digits=1) if ratios[k] else "-" for k in ("ra", "ro")]
        nbytes = state_bytes(arms[arm][1])
        print(f"| {arm} | {' | '.join(cells)} | {nbytes / 2**20:.2f} | {nbytes / adam_bytes:.3f} |")


def load_images(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, Callable, str]:
    """(train uint8 (N, 3, 32, 32), held-out uint8, normalize, description) of the data."""
    if args.root:
        dm = ImageFolderDataModule(
            root=args.root,
            image_size=32,
            batch_size=args.learn_batch,
            train_subset=args.train_images,
        )
        where = args.root
    else:
        dm = SyntheticLowRank(
            num_classes=10,
            class_rank=4,
            train_size=args.train_images,
            val_size=args.heldout_images,
            noise_std=8.0,
            batch_size=args.learn_batch,
        )
        where = "SyntheticLowRank (10 classes of rank 4, pixel noise 8)"
    dm.prepare_data()
    dm.setup("fit")
    train = dm.probe_batch(args.train_images, "train")[0]
    heldout = dm.probe_batch(args.heldout_images)[0]
    return train, heldout, dm.normalize, where


@torch.no_grad()
def heldout_loss(model: MaskedAutoencoder, images: torch.Tensor, mask_ratio: float) -> float:
    """Mean masked-patch loss over ``images`` (normalized), the same masks in every call."""
    model.eval()
    gen = torch.Generator().manual_seed(12345)
    losses = [
        float(model.training_loss(images[i : i + 256], mask_ratio, "random", generator=gen))
        for i in range(0, images.shape[0], 256)
    ]
    model.train()
    return statistics.fmean(losses)


def learn(args: argparse.Namespace) -> None:
    train_u8, heldout_u8, normalize, where = load_images(args)
    heldout = normalize(heldout_u8)
    lr, wd, betas = 1.5e-3 * args.learn_batch / 256, 0.05, (0.9, 0.95)
    warmup = max(1, round(0.05 * args.learn_steps))
    results: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        base = build_mae(seed)
        for arm in args.arms:
            model = copy.deepcopy(base).train()
            spec = arm_spec(arm, args.rank, args.learn_gap, args.tau)
            opt = build_optimizer(model, spec, lr, wd, betas)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: warmup_cosine(s, warmup, args.learn_steps)
            )
            data_gen = torch.Generator().manual_seed(seed)  # same batches and masks in every arm
            decompositions, similarities = 0, []
            start = time.perf_counter()
            for step in range(args.learn_steps):
                index = torch.randint(0, train_u8.shape[0], (args.learn_batch,), generator=data_gen)
                opt.zero_grad(set_to_none=True)
                loss = model.training_loss(
                    normalize(train_u8[index]), args.mask_ratio, "random", generator=data_gen
                )
                loss.backward()
                before = {id(p): s.get("projector") for p, s in opt.state.items()}
                opt.step()
                sched.step()
                if isinstance(opt, GaLoreAdamW):
                    d, sims = count_refreshes(opt, before, step, args.learn_gap)
                    decompositions += d
                    similarities += sims
            minutes = (time.perf_counter() - start) / 60
            out = results.setdefault(arm, {"loss": [], "dec": [], "sim": [], "min": []})
            out["loss"].append(heldout_loss(model, heldout, args.mask_ratio))
            n_targets = sum(1 for s in opt.state.values() if "projector" in s)
            out["dec"].append(decompositions / max(1, n_targets))
            out["sim"].append(statistics.fmean(similarities) if similarities else float("nan"))
            out["min"].append(minutes)
            print(f"seed {seed} {arm}: held-out loss {out['loss'][-1]:.4f}", flush=True)

    print(
        f"\nLearning check: MAE ViT-Tiny/4, {train_u8.shape[0]} train images of {where}, "
        f"{heldout_u8.shape[0]} held-out, batch {args.learn_batch}, lr {lr:g} (warmup {warmup} "
        f"steps, cosine), {args.learn_steps} steps, GaLore rank {args.rank}, update_proj_gap "
        f"{args.learn_gap}, adaptive refresh_similarity {args.tau}, seeds {args.seeds}, "
        f"{torch.get_num_threads()} thread(s)"
    )
    print()
    seeds = " | ".join(f"seed {s}" for s in args.seeds)
    print(
        f"| arm | {seeds} | mean | - svd, paired (mean [min-max]) | decompositions per target | "
        "mean similarity at refresh | minutes per run |"
    )
    print("|---|" + "---|" * (len(args.seeds) + 5))
    reference = results.get("svd")
    for arm, out in results.items():
        losses = " | ".join(f"{v:.4f}" for v in out["loss"])
        if reference is not None and arm != "svd":
            diffs = [a - b for a, b in zip(out["loss"], reference["loss"], strict=True)]
            paired = f"{statistics.fmean(diffs):+.4f} [{min(diffs):+.4f} to {max(diffs):+.4f}]"
        else:
            paired = "-"
        dec = f"{statistics.fmean(out['dec']):.1f}" if arm != "adamw" else "-"
        sim = statistics.fmean(out["sim"])
        print(
            f"| {arm} | {losses} | {statistics.fmean(out['loss']):.4f} | {paired} | {dec} | "
            f"{'-' if sim != sim else f'{sim:.3f}'} | {statistics.fmean(out['min']):.1f} |"
        )


def count_refreshes(
    opt: GaLoreAdamW, before: dict[int, torch.Tensor | None], step: int, gap: int
) -> tuple[int, list[float]]:
    """Decompositions made by the optimizer step at count ``step`` (the first basis included)
    and the similarities seen between the basis in use and the new one.

    A fixed-gap target decomposes when ``step % gap == 0`` (compared here: old basis vs new); an
    adaptive one when it was checked at this step (the optimizer's own similarity).
    """
    count, sims = 0, []
    for p, state in opt.state.items():
        old = before.get(id(p))
        if "projector" not in state:
            continue
        if old is None:  # the first basis
            count += 1
            continue
        if "refresh_step" in state:
            if int(state["refresh_step"]) == step:
                count += 1
                sims.append(float(state["similarity"]))
        elif step % gap == 0:
            count += 1
            sims.append(subspace_similarity(old, state["projector"]))
    return count, sims


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arms", nargs="+", choices=ARMS, default=list(ARMS))
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--gap", type=int, default=200, help="update_proj_gap")
    parser.add_argument("--tau", type=float, default=0.75, help="adaptive arms' similarity")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="timed training steps per arm/round")
    parser.add_argument("--opt_repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm-order shuffle")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--mask_ratio", type=float, default=0.75)
    learning = parser.add_argument_group("learning check")
    learning.add_argument("--learning", action="store_true", help="run the learning check")
    learning.add_argument("--root", default=None, help="CIFAR-10 ImageFolder (train/, test/)")
    learning.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    learning.add_argument("--learn_steps", type=int, default=60)
    learning.add_argument("--learn_gap", type=int, default=10, help="update_proj_gap")
    learning.add_argument("--learn_batch", type=int, default=64)
    learning.add_argument("--train_images", type=int, default=2000)
    learning.add_argument("--heldout_images", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.learning:
        args.arms = [a for a in args.arms if a != "adamw"] if args.arms == list(ARMS) else args.arms
        learn(args)
    else:
        bench(args)


if __name__ == "__main__":
    main()
