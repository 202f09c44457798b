"""Benchmark one adaptation step: full fine-tune against LoRA (maskrank's layers and peft's).

    python scripts/benchmarks/bench_adapt.py                    # ViT-Tiny/4 classifier, 32 px, batch 128
    python scripts/benchmarks/bench_adapt.py --rounds 5 --steps 4 --threads 1 --seed 3
    python scripts/benchmarks/bench_adapt.py --arms full lora_all lora_all_compiled --no-memory

Arms, all from the same pretrained-like weights on the same images (cross-entropy; every arm
steps the same optimizer implementation, maskrank's default fused AdamW):

- ``full``: every weight trains (``adaptation: finetune``);
- ``lora_qkv`` / ``lora_all``: maskrank's LoRA r=8 on qkv / on qkv, proj, fc1, fc2, head trains;
- ``lora_all_compiled``: ``lora_all`` with every block compiled in place (``compile: true``; the
  compile itself happens before timing and is reported apart);
- ``peft_qkv`` / ``peft_all``: the same adapters made by peft (``engine: peft``);
- ``pissa_all`` / ``gradient_all``: ``lora_all`` started by PiSSA / from the gradient's subspace
  (the same step; the gradient init's own cost is timed apart: in every round a fresh adapter is
  initialised in the warm process and its init time divided by 4 full fine-tune steps of that
  round);
- ``deep_all`` / ``deep_c4``: Deep LoRA r=8 (three factors), before / after compression to r_c=4;
- ``peft_dora``: peft's DoRA r=8 on qkv, proj, fc1, fc2.

Before timing, the script checks that maskrank's and peft's ``lora_all`` give the same loss and
adapter gradients from the same adapter weights, and the compiled ``lora_all`` the eager one's
("identical math").

Timing (``benchlib``): ``rounds`` rounds, the arms in a fresh random order in each (``--seed``,
printed); in a round every arm runs ``warmup`` untimed steps and then ``steps`` timed steps
(forward, backward, optimizer step), in wall seconds or, with ``--clock cpu``, in the process's
CPU seconds (on a machine shared with other work, with ``--threads 1``). Reported: images/s and
ms/step (median and interquartile range over all timed steps), the paired speed-up over ``full``
(per round: full's median step time over the arm's; their median and every round's value),
trainable parameters, GFLOP per step from ``benchlib``'s analytic model (the model's products
with the arm's trainable set: frozen weights form no weight gradient; DoRA's norm term is not
counted) and the rate it implies, and peak memory: each arm (but a compiled one, whose fresh
process would count the compiler's own memory) runs again alone in a fresh process, which reports
its peak RSS and its peak RSS growth over the state before the first step (the activations,
gradients and optimizer state the step itself needs). The machine's load average is printed
before and after.
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

import benchlib  # scripts/benchmarks/benchlib.py: a script's own folder is first on sys.path
import torch
from torch import nn

from maskrank.models.lora import compress_deep_lora, gradient_init, lora_layers
from maskrank.models.lora.init import top_singular_pairs
from maskrank.optim import adamw
from maskrank.tasks import ImageClassifier
from maskrank.tasks.adaptation import trainable_parameters
from maskrank.tasks.compiling import check_compile

ARMS = {
    "full": {},
    "lora_qkv": {"adaptation": "lora", "lora": {"r": 8, "targets": ["qkv"]}},
    "lora_all": {"adaptation": "lora", "lora": {"r": 8}},
    "lora_all_compiled": {"adaptation": "lora", "lora": {"r": 8}, "compile": True},
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
        self,
        name: str,
        preset: str,
        encoder_ckpt: str,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
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
            if images is None or labels is None:
                raise ValueError(f"arm {name} initialises its adapters from a batch: pass one")
            start = time.perf_counter()
            batches = [(images, labels)] * INIT_BATCHES
            gradient_init(self.model.model, batches, nn.functional.cross_entropy)
            self.init_seconds = time.perf_counter() - start
        self.opt = adamw(self.model, lr=1e-3, weight_decay=0.05)

    def flops(self, batch: int) -> int:
        """Forward + backward FLOPs of one step (``benchlib``'s analytic model)."""
        spec = self.model.hparams.lora
        adapters = None
        if spec is not None:
            rank = spec["r_c"] if spec.get("compress_after") else spec["r"]  # width measured
            adapters = benchlib.Adapters(rank, tuple(spec["targets"]), spec["depth"])
        shape = benchlib.ViTShape.of(self.model.model)
        return benchlib.classifier_step_flops(shape, batch, 10, adapters).total

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


def check_compiled(preset: str, images: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """Max relative gap of loss and trainable gradients between the compiled and the eager
    ``lora_all``, and the seconds of the compiled arm's first forward + backward (its compile)."""
    encoder = _encoder_file(preset)
    eager = Arm("lora_all", preset, encoder)
    compiled = Arm("lora_all_compiled", preset, encoder)
    with torch.no_grad():  # a non-zero B in both, so every term of the adapter matters
        torch.manual_seed(2)
        for p_e, p_c in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
            if p_e.requires_grad and not p_e.any():
                p_e.normal_(std=0.02)
            p_c.copy_(p_e)
    losses = []
    for arm in (eager, compiled):
        start = time.perf_counter()
        losses.append(arm.loss(images, labels))
        losses[-1].backward()
        seconds = time.perf_counter() - start  # the compiled arm's: it compiles
    gaps = [abs(losses[0].item() - losses[1].item()) / abs(losses[0].item())]
    for p_e, p_c in zip(eager.model.parameters(), compiled.model.parameters(), strict=True):
        if p_e.grad is not None:
            gaps.append(float((p_c.grad - p_e.grad).norm() / p_e.grad.norm().clamp_min(1e-30)))
    return max(gaps), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="vit_tiny_32")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=4, help="timed steps per arm per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the arm order per round")
    parser.add_argument(
        "--clock", choices=list(benchlib.CLOCKS), default="wall", help="wall or process CPU time"
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        return memory_child(args.memory_child, args.preset, args.batch, args.warmup + 2)

    print(f"before: {benchlib.load_average()}")
    images, labels = _batch(args.batch)
    gap = check_identical(args.preset, images, labels)
    print(f"identical math: maskrank vs peft LoRA, max relative gap (loss, grads) = {gap:.1e}")
    assert gap < 1e-4, "maskrank's and peft's LoRA disagree"
    compiled = [name for name in args.arms if ARMS[name].get("compile")]
    if compiled:
        check_compile(torch.device("cpu"))
        gap, seconds = check_compiled(args.preset, images, labels)
        print(
            f"identical math: compiled vs eager lora_all, max relative gap = {gap:.1e} "
            f"(first compiled step, which compiles: {seconds:.1f} s)"
        )
        assert gap < 1e-3, "the compiled LoRA step disagrees with the eager one"

    encoder = _encoder_file(args.preset)
    arms = {name: Arm(name, args.preset, encoder, images, labels) for name in args.arms}
    for name in compiled:  # compile before timing (the first step builds the kernels)
        arms[name].step(images, labels)
    init_ratios: list[float] = []

    def report(r: int, medians: dict[str, float]) -> None:
        if "gradient_all" in arms and "full" in medians:
            # the init of a fresh adapter in the warm process, against this round's full steps
            fresh = Arm("gradient_all", args.preset, encoder, images, labels)
            init_ratios.append(fresh.init_seconds / (INIT_BATCHES * medians["full"]))
        benchlib.print_round(r, medians)

    def round_of(arm: Arm):
        return lambda: benchlib.time_steps(
            lambda: arm.step(images, labels), args.warmup, args.steps, args.clock
        )

    timings = benchlib.run_rounds(
        {name: round_of(arm) for name, arm in arms.items()}, args.rounds, args.seed, report
    )
    print(f"after: {benchlib.load_average()}")

    memory = {}
    for name in [] if args.no_memory else arms:
        if name in compiled:  # a fresh process would count the compiler's own memory
            continue
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
        f"\n{args.preset} classifier, 32 px, batch {args.batch}, {torch.get_num_threads()} "
        f"thread(s), {args.rounds} rounds x {args.steps} timed steps, {args.clock} clock, "
        + benchlib.orders_line(args.seed, timings.orders)
    )
    rows = []
    for name, arm in arms.items():
        trainable, _ = trainable_parameters(arm.model)
        med, low, high = benchlib.spread(timings.all(name))
        flops = arm.flops(args.batch)
        ratio = benchlib.ratio_cell(timings.paired(name, "full") if "full" in arms else [])
        mem = memory.get(name)
        rows.append(
            (
                name,
                f"{trainable:,}",
                f"{args.batch / med:.1f}",
                f"{med * 1e3:.0f} [{low * 1e3:.0f}-{high * 1e3:.0f}]",
                f"{flops / 1e9:.1f}",
                f"{flops / med / 1e9:.1f}",
                ratio,
                "-" if mem is None else f"{mem['peak_mb']:.0f} MB",
                "-" if mem is None else f"{mem['growth_mb']:.0f} MB",
            )
        )
    headers = (
        "arm",
        "trainable",
        "img/s",
        "ms/step [IQR]",
        "GFLOP/step",
        "GFLOP/s",
        "vs full, paired (per round)",
        "peak RSS",
        "step growth",
    )
    print(benchlib.markdown_table(headers, rows))
    step = {name: statistics.median(timings.all(name)) for name in arms}
    if "deep_c4" in step and "lora_all" in step:
        print(f"deep_c4 step / lora_all step: {step['deep_c4'] / step['lora_all']:.2f}x")
    if "lora_all_compiled" in step and "lora_all" in step:
        print(
            "lever compile, lora_all -> lora_all_compiled: "
            + benchlib.ratio_cell(timings.paired("lora_all_compiled", "lora_all"))
        )
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
