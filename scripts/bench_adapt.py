"""Benchmark one adaptation step: full fine-tune against LoRA (maskrank's layers and peft's).

    python scripts/bench_adapt.py                    # ViT-Tiny/4 classifier, 32 px, batch 128
    python scripts/bench_adapt.py --rounds 5 --steps 4 --threads 1

Arms, all from the same pretrained-like weights on the same images (cross-entropy, AdamW fused):

- ``full``: every weight trains (``adaptation: finetune``);
- ``lora_qkv`` / ``lora_all``: maskrank's LoRA r=8 on qkv / on qkv, proj, fc1, fc2, head trains;
- ``peft_qkv`` / ``peft_all``: the same adapters made by peft (``engine: peft``);
- ``pissa_all`` / ``gradient_all``: ``lora_all`` started by PiSSA / from the gradient's subspace
  (the same step; the gradient init's own cost is timed apart: in every round a fresh adapter is
  initialised in the warm process and its init time divided by 4 full fine-tune steps of that
  round);
- ``deep_all`` / ``deep_c4``: Deep LoRA r=8 (three factors), before / after compression to r_c=4;
- ``peft_dora``: peft's DoRA r=8 on qkv, proj, fc1, fc2.

Before timing, the script checks that maskrank's and peft's ``lora_all`` give the same loss and
adapter gradients from the same adapter weights ("identical math").

Timing: ``rounds`` interleaved rounds; in each, every arm runs ``warmup`` untimed steps and then
``steps`` timed steps (forward, backward, optimizer step). Reported: images/s (median over all
timed steps), the paired speed-up over ``full`` (median over rounds of the ratio of the per-round
median step times), trainable parameters, and peak memory: each arm runs again alone in a fresh
process, which reports its peak RSS and its peak RSS growth over the state before the first step
(the activations, gradients and optimizer state the step itself needs).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from maskrank.models.lora import compress_deep_lora, gradient_init, lora_layers
from maskrank.models.lora.init import top_singular_pairs
from maskrank.optim import adamw
from maskrank.tasks import ImageClassifier
from maskrank.tasks.adaptation import trainable_parameters

ARMS = {
    "full": {},
    "lora_qkv": {"adaptation": "lora", "lora": {"r": 8, "targets": ["qkv"]}},
    "lora_all": {"adaptation": "lora", "lora": {"r": 8}},
    "peft_qkv": {"adaptation": "lora", "lora": {"r": 8, "targets": ["qkv"], "engine": "peft"}},
    "peft_all": {"adaptation": "lora", "lora": {"r": 8, "engine": "peft"}},
    "pissa_all": {"adaptation": "lora", "lora": {"r": 8, "init": "pissa"}},
    "gradient_all": {"adaptation": "lora", "lora": {"r": 8, "init": "gradient"}},
    "deep_all": {"adaptation": "lora", "lora": {"r": 8, "depth": 3}},
    "deep_c4": {"adaptation": "lora", "lora": {"r": 8, "depth": 3, "compress_after": 1, "r_c": 4}},
    "peft_dora": {"adaptation": "lora", "lora": {"r": 8, "engine": "peft", "use_dora": True}},
}
INIT_BATCHES = 4  # gradient_all: batches its init averages (timed against full fine-tune steps)


class Arm:
    """One adapted classifier with its optimizer; ``step`` is one full training step."""

    def __init__(
        self, name: str, preset: str, encoder_ckpt: str, images: torch.Tensor, labels: torch.Tensor
    ) -> None:
        self.name = name
        torch.manual_seed(0)  # same head in every arm
        self.model = ImageClassifier(
            vit={"preset": preset}, num_classes=10, encoder_ckpt=encoder_ckpt, **ARMS[name]
        )
        self.model.train()
        spec = self.model.hparams.lora or {}
        if spec.get("compress_after"):  # measure the compressed layer (ΔW is ~0 here anyway)
            compress_deep_lora(self.model.model, spec["r_c"])
        self.init_seconds = 0.0
        if spec.get("init") == "gradient":
            start = time.perf_counter()
            batches = [(images, labels)] * INIT_BATCHES
            gradient_init(self.model.model, batches, nn.functional.cross_entropy)
            self.init_seconds = time.perf_counter() - start
        self.opt = adamw(self.model, lr=1e-3, weight_decay=0.05)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(images), labels)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        start = time.perf_counter()
        loss = self.loss(images, labels)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return time.perf_counter() - start


def time_decompositions(model: nn.Module, repeats: int = 3) -> tuple[float, float]:
    """Seconds for the gradient init's top-r step over every adapted weight's shape (float64):
    a full SVD against :func:`top_singular_pairs` (random matrices: content does not change
    the time of either)."""
    g = torch.Generator().manual_seed(0)
    views = lora_layers(model).values()
    mats = [
        (torch.randn(v.base.weight.shape, generator=g, dtype=torch.float64), v.r) for v in views
    ]
    out = []
    for fn in (
        lambda m, r: torch.linalg.svd(m, full_matrices=False),
        lambda m, r: top_singular_pairs(m, r),
    ):
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for m, r in mats:
                fn(m, r)
            times.append(time.perf_counter() - start)
        out.append(statistics.median(times))
    return out[0], out[1]


def _batch(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.randint(0, 10, (batch,), generator=g)


def _encoder_file(preset: str) -> str:
    """The 'pretrained' encoder every arm starts from (a timm state_dict in a temporary file)."""
    torch.manual_seed(1)
    path = Path(tempfile.gettempdir()) / f"bench_adapt_{preset}.pt"
    torch.save(ImageClassifier(vit={"preset": preset}, num_classes=10).model.state_dict(), path)
    return str(path)


def check_identical(preset: str, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Max relative gap of loss and adapter gradients between maskrank's and peft's LoRA."""
    encoder = _encoder_file(preset)
    ours = Arm("lora_all", preset, encoder, images, labels)
    theirs = Arm("peft_all", preset, encoder, images, labels)
    mine, peft_views = lora_layers(ours.model.model), lora_layers(theirs.model.model)
    assert mine.keys() == peft_views.keys()
    with torch.no_grad():
        theirs.model.model.head.load_state_dict(ours.model.model.head.state_dict())
        for name, view in mine.items():
            view.lora_b.normal_(std=0.02)  # a non-zero B, so every term of the update matters
            peft_views[name].lora_a.copy_(view.lora_a)
            peft_views[name].lora_b.copy_(view.lora_b)
    gaps = []
    losses = [arm.loss(images[:16], labels[:16]) for arm in (ours, theirs)]
    gaps.append(abs(losses[0].item() - losses[1].item()) / abs(losses[1].item()))
    for loss in losses:
        loss.backward()
    for name, view in mine.items():
        for a, b in (
            (view.lora_a, peft_views[name].lora_a),
            (view.lora_b, peft_views[name].lora_b),
        ):
            gaps.append(float((a.grad - b.grad).norm() / b.grad.norm().clamp_min(1e-30)))
    return max(gaps)


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(name: str, preset: str, batch: int, steps: int) -> None:
    """Run one arm alone and print its RSS figures as JSON (called in a fresh process, Linux).

    The high-water mark is reset (``/proc/self/clear_refs``) once the model, optimizer and batch
    exist, so ``growth_mb`` is what the training steps add and ``peak_mb`` the peak during them.
    """
    images, labels = _batch(batch)
    arm = Arm(name, preset, _encoder_file(preset), images, labels)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _status_mb("VmRSS")
    for _ in range(steps):
        arm.step(images, labels)
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_mb": peak, "growth_mb": peak - before}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="vit_tiny_32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.preset, args.batch, args.warmup + 2)

    images, labels = _batch(args.batch)
    gap = check_identical(args.preset, images, labels)
    print(f"identical math: maskrank vs peft LoRA, max relative gap (loss, grads) = {gap:.1e}")
    assert gap < 1e-4, "maskrank's and peft's LoRA disagree"

    encoder = _encoder_file(args.preset)
    arms = {name: Arm(name, args.preset, encoder, images, labels) for name in args.arms}
    times: dict[str, list[float]] = {name: [] for name in arms}
    ratios: dict[str, list[float]] = {name: [] for name in arms}
    init_ratios: list[float] = []
    for r in range(args.rounds):
        medians = {}
        for name, arm in arms.items():
            for _ in range(args.warmup):
                arm.step(images, labels)
            round_times = [arm.step(images, labels) for _ in range(args.steps)]
            times[name] += round_times
            medians[name] = statistics.median(round_times)
        for name in arms:
            if "full" in medians:
                ratios[name].append(medians["full"] / medians[name])
        if "gradient_all" in arms and "full" in medians:
            # the init of a fresh adapter in the warm process, against this round's full steps
            fresh = Arm("gradient_all", args.preset, encoder, images, labels)
            init_ratios.append(fresh.init_seconds / (INIT_BATCHES * medians["full"]))
        print(
            f"round {r + 1}/{args.rounds}: "
            + ", ".join(f"{n} {t:.2f}s" for n, t in medians.items()),
            flush=True,
        )

    memory = {}
    for name in [] if args.no_memory else arms:
        cmd = [
            sys.executable,
            __file__,
            "--memory-child",
            name,
            "--preset",
            args.preset,
            "--batch",
            str(args.batch),
            "--warmup",
            str(args.warmup),
            "--threads",
            str(args.threads),
        ]
        memory[name] = json.loads(
            subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        )

    print(
        f"\n{args.preset} classifier, 32 px, batch {args.batch}, {torch.get_num_threads()} thread(s), "
        f"{args.rounds} rounds x {args.steps} timed steps"
    )
    print(
        f"{'arm':<12} {'trainable':>10} {'img/s':>7} {'vs full':>8} {'peak RSS':>9} {'step growth':>12}"
    )
    for name, arm in arms.items():
        trainable, _ = trainable_parameters(arm.model)
        ips = args.batch / statistics.median(times[name])
        ratio = f"{statistics.median(ratios[name]):.2f}x" if ratios[name] else "-"
        mem = memory.get(name, {"peak_mb": float("nan"), "growth_mb": float("nan")})
        print(
            f"{name:<12} {trainable:>10,} {ips:>7.1f} {ratio:>8} {mem['peak_mb']:>7.0f}MB "
            f"{mem['growth_mb']:>10.0f}MB"
        )
    step = {name: statistics.median(t) for name, t in times.items()}
    if "deep_c4" in step and "lora_all" in step:
        print(f"deep_c4 step / lora_all step: {step['deep_c4'] / step['lora_all']:.2f}x")
    if init_ratios:
        svd_s, pairs_s = time_decompositions(arms["gradient_all"].model.model)
        print(
            f"top-r decomposition of every adapted weight (float64, median of 3): "
            f"torch.linalg.svd {svd_s:.3f}s, top_singular_pairs {pairs_s:.3f}s"
        )
        first = arms["gradient_all"].init_seconds
        print(
            f"gradient init over {INIT_BATCHES} batches / {INIT_BATCHES} full steps of the same "
            f"round: median {statistics.median(init_ratios):.2f}x (rounds: "
            + ", ".join(f"{x:.2f}" for x in init_ratios)
            + f"); the process's first init, cold: {first:.2f}s"
        )


if __name__ == "__main__":
    main()
