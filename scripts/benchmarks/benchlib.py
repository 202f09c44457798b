"""Shared benchmark code: one analytic FLOP model, shuffled paired rounds, spreads, tables.

The bench scripts ``import benchlib``: Python puts a script's own folder first on ``sys.path``, so
``python scripts/benchmarks/bench_x.py`` finds it from any working directory.

**FLOP model** (:func:`mae_flops_of`, :func:`classifier_step_flops`). A step's FLOPs are those of
its matrix products, counted as 2 m k n per (m x k) @ (k x n) product, the convention of
``torch.utils.flop_counter`` and of MFU figures; normalizations, softmax, GELU, residual adds,
masking gathers and the optimizer are not counted. The products of a pre-norm timm ViT block over
T tokens of width D (MLP hidden H, any head count) on B images:

- qkv ``(BT, D) @ (D, 3D)``, proj ``(BT, D) @ (D, D)``, fc1 ``(BT, D) @ (D, H)``,
  fc2 ``(BT, H) @ (H, D)``;
- attention scores ``Q Kᵀ`` and attention-times-values ``A V``: ``2 B T² D`` FLOPs each, summed
  over the heads (whatever kernel runs them: SDPA and the explicit matmuls do the same products);

plus the patch embedding (a ``(B L, C p²) @ (C p², D)`` product for L patches), the MAE's decoder
embedding, decoder blocks and pixel head, or the classifier's head on the pooled token. Backward
forms, per product, the gradient of each operand that needs one, each as costly as the forward
product: 2x forward when both do (every activation-activation product and every trainable weight
fed by a differentiable input), 1x for the patch embedding (the images need no gradient), 1x for
a frozen weight below a trainable one (LoRA), nothing below every trainable parameter.

LoRA adapters are counted as the rank-``r`` products ``(x Aᵀ) Bᵀ`` (peft's formulation, and
``depth - 2`` middle ``r x r`` factors for Deep LoRA) next to the frozen product. maskrank's
adapter kernel computes the same function with one merged GEMM, so its executed count differs:
this is the model's count, the same for every engine. DoRA's weight-norm term is not counted.
"""

from __future__ import annotations

import os
import random
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import pytorch_lightning as pl
import torch

__all__ = [
    "CLOCKS",
    "LORA_TARGETS",
    "Adapters",
    "Gemm",
    "StepFlops",
    "Timings",
    "ViTShape",
    "classifier_gemms",
    "classifier_step_flops",
    "load_average",
    "mae_flops_of",
    "mae_gemms",
    "markdown_table",
    "overhead_cell",
    "orders_line",
    "overheads",
    "print_round",
    "ratio_cell",
    "round_orders",
    "run_rounds",
    "spread",
    "time_steps",
    "total_flops",
]

LORA_TARGETS = ("qkv", "proj", "fc1", "fc2")


# ----------------------------------------------------------------------------- FLOP model
@dataclass(frozen=True)
class Gemm:
    """One product ``(m, k) @ (k, n)``; ``grad_a`` / ``grad_b``: whether backward forms the
    gradient of the left / right operand (each costs one more product of the same size)."""

    m: int
    k: int
    n: int
    grad_a: bool
    grad_b: bool

    @property
    def forward(self) -> int:
        return 2 * self.m * self.k * self.n

    @property
    def backward(self) -> int:
        return self.forward * (int(self.grad_a) + int(self.grad_b))


@dataclass(frozen=True)
class StepFlops:
    """Forward and backward FLOPs of one training step."""

    forward: int
    backward: int

    @property
    def total(self) -> int:
        return self.forward + self.backward


def total_flops(gemms: Iterable[Gemm]) -> StepFlops:
    """Sum of the forward and backward FLOPs of ``gemms``."""
    gemms = list(gemms)
    return StepFlops(sum(g.forward for g in gemms), sum(g.backward for g in gemms))


@dataclass(frozen=True)
class ViTShape:
    """The GEMM geometry of a timm ViT with one class token.

    Attributes:
        img_size: image side in pixels.
        patch: patch side in pixels.
        chans: image channels.
        dim: token width D.
        depth: transformer blocks.
        mlp_hidden: MLP hidden width H (``mlp_ratio * D``).
    """

    img_size: int
    patch: int
    chans: int
    dim: int
    depth: int
    mlp_hidden: int

    @property
    def num_patches(self) -> int:
        return (self.img_size // self.patch) ** 2

    @classmethod
    def of(cls, vit) -> ViTShape:
        """The geometry of a built timm ``VisionTransformer`` (read from its modules)."""
        proj = vit.patch_embed.proj  # Conv2d(C, D, p, stride p)
        grid = vit.patch_embed.grid_size
        if grid[0] != grid[1]:
            raise ValueError(f"square patch grids only, got {tuple(grid)}")
        return cls(
            img_size=grid[0] * proj.kernel_size[0],
            patch=proj.kernel_size[0],
            chans=proj.in_channels,
            dim=vit.embed_dim,
            depth=len(vit.blocks),
            mlp_hidden=vit.blocks[0].mlp.fc1.out_features,
        )


@dataclass(frozen=True)
class Adapters:
    """LoRA adapters: rank ``r`` on the ``targets`` of every block; ``depth`` 1 is LoRA's two
    factors, ``depth`` 3 Deep LoRA's three."""

    r: int
    targets: tuple[str, ...] = LORA_TARGETS
    depth: int = 1


def _linear(
    rows: int, fan_in: int, fan_out: int, x_grad: bool, trains: bool, lora: Adapters | None
) -> list[Gemm]:
    """A Linear layer on ``rows`` tokens: the weight product, then any adapter's products."""
    gemms = [Gemm(rows, fan_in, fan_out, x_grad, trains)]
    if lora is not None:
        # A (r, k), [Deep LoRA's depth - 2 middle (r, r) factors,] B (d, r)
        widths = [fan_in] + [lora.r] * max(1, lora.depth - 1) + [fan_out]
        grad = x_grad
        for k, n in zip(widths[:-1], widths[1:], strict=True):
            gemms.append(Gemm(rows, k, n, grad, True))
            grad = True  # every later factor's input depends on a trainable factor
    return gemms


def _block(
    batch: int,
    tokens: int,
    dim: int,
    hidden: int,
    x_grad: bool,
    trains: bool,
    lora: Adapters | None = None,
    mlp_tokens: int | None = None,
) -> tuple[list[Gemm], bool]:
    """One pre-norm ViT block over ``tokens`` tokens (its MLP over ``mlp_tokens``, default all).

    Returns the products and whether the block's output needs a gradient.
    """

    def adapter(name: str) -> Adapters | None:
        return lora if lora is not None and name in lora.targets else None

    rows = batch * tokens
    gemms = _linear(rows, dim, 3 * dim, x_grad, trains, adapter("qkv"))
    grad = x_grad or trains or adapter("qkv") is not None  # q, k, v
    # Q Kᵀ and A V over all heads: (B T, D) x (D, T) and (B T, T) x (T, D) in FLOPs
    gemms += [Gemm(rows, dim, tokens, grad, grad), Gemm(rows, tokens, dim, grad, grad)]
    gemms += _linear(rows, dim, dim, grad, trains, adapter("proj"))
    grad = grad or trains or adapter("proj") is not None
    mlp_rows = batch * (tokens if mlp_tokens is None else mlp_tokens)
    gemms += _linear(mlp_rows, dim, hidden, grad, trains, adapter("fc1"))
    grad = grad or trains or adapter("fc1") is not None
    gemms += _linear(mlp_rows, hidden, dim, grad, trains, adapter("fc2"))
    return gemms, grad or trains or adapter("fc2") is not None


def mae_gemms(
    encoder: ViTShape,
    batch: int,
    kept: int,
    decoder_dim: int,
    decoder_depth: int,
    decoder_hidden: int,
    masked_tail: bool = False,
) -> list[Gemm]:
    """The products of one MAE training step (every parameter trains).

    The encoder runs on ``1 + kept`` tokens (CLS + visible), the decoder on ``1 + L``. With
    ``masked_tail`` (maskrank's ``training_loss``) the last decoder block's MLP and the pixel
    head run on the ``L - kept`` masked tokens only; without it (MAE's forward) the head runs
    on all ``1 + L`` tokens.
    """
    length, e = encoder.num_patches, encoder
    gemms = [Gemm(batch * length, e.chans * e.patch**2, e.dim, False, True)]  # patch embedding
    for _ in range(e.depth):
        gemms += _block(batch, 1 + kept, e.dim, e.mlp_hidden, True, True)[0]
    gemms.append(Gemm(batch * (1 + kept), e.dim, decoder_dim, True, True))  # decoder_embed
    for i in range(decoder_depth):
        last = i == decoder_depth - 1
        mlp_tokens = length - kept if masked_tail and last else None
        gemms += _block(
            batch, 1 + length, decoder_dim, decoder_hidden, True, True, None, mlp_tokens
        )[0]
    head_rows = batch * (length - kept if masked_tail else 1 + length)
    gemms.append(Gemm(head_rows, decoder_dim, e.chans * e.patch**2, True, True))
    return gemms


def mae_flops_of(mae, batch: int, kept: int, masked_tail: bool = False) -> StepFlops:
    """Forward and backward FLOPs of one MAE training step (:func:`mae_gemms`), the geometry read
    from a built ``MaskedAutoencoder``."""
    blocks = mae.decoder_blocks
    gemms = mae_gemms(
        ViTShape.of(mae.encoder),
        batch,
        kept,
        mae.decoder_embed.out_features,
        len(blocks),
        blocks[0].mlp.fc1.out_features,
        masked_tail,
    )
    return total_flops(gemms)


def classifier_gemms(
    vit: ViTShape, batch: int, num_classes: int, lora: Adapters | None = None
) -> list[Gemm]:
    """The products of one classifier training step on ``1 + L`` tokens, head on one pooled
    token per image. Without ``lora`` every weight trains; with it only the adapters and the
    head do (the patch embedding and every base weight are frozen)."""
    trains = lora is None
    gemms = [Gemm(batch * vit.num_patches, vit.chans * vit.patch**2, vit.dim, False, trains)]
    grad = trains  # the block input needs a gradient only below a trainable patch embedding
    for _ in range(vit.depth):
        block, grad = _block(
            batch, 1 + vit.num_patches, vit.dim, vit.mlp_hidden, grad, trains, lora
        )
        gemms += block
    gemms.append(Gemm(batch, vit.dim, num_classes, grad, True))  # the head always trains
    return gemms


def classifier_step_flops(
    vit: ViTShape, batch: int, num_classes: int, lora: Adapters | None = None
) -> StepFlops:
    """Forward and backward FLOPs of one classifier training step (:func:`classifier_gemms`)."""
    return total_flops(classifier_gemms(vit, batch, num_classes, lora))


# ----------------------------------------------------------------------------- timing
def load_average() -> str:
    """``uptime``'s load averages and the core count, for the record of a timed run."""
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {cores} cores"


def round_orders(names: Sequence[str], rounds: int, seed: int) -> list[list[str]]:
    """A fresh random order of ``names`` for every round, reproducible from ``seed``.

    Shuffling (not a fixed or rotated order) keeps a slow drift of the machine's load, or an arm
    that warms the caches for the next, from always favouring the same arm.
    """
    rng = random.Random(seed)
    orders = []
    for _ in range(rounds):
        order = list(names)
        rng.shuffle(order)
        orders.append(order)
    return orders


# ``wall``: elapsed seconds. ``cpu``: this process's CPU seconds (all its threads), which a busy
# machine inflates far less than wall time: run with one thread to exclude threads' spin-waiting.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


def time_steps(
    step: Callable[[], object], warmup: int, steps: int, clock: str = "wall"
) -> list[float]:
    """Seconds (of ``clock``, see :data:`CLOCKS`) of each of ``steps`` calls of ``step``, after
    ``warmup`` untimed ones."""
    now = CLOCKS[clock]
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = now()
        step()
        times.append(now() - start)
    return times


class StepTimer(pl.Callback):
    """Wall seconds of every training step inside a ``Trainer`` (end of one step to the end of the
    next, so the data loading and every callback hook of the step count; CUDA is synchronised)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._last: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._last is None:
            self._last = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.times.append(now - self._last)  # type: ignore[operator]
        self._last = now


@dataclass
class Timings:
    """Seconds per unit of work (a step, an image) of every arm, one list per round."""

    seed: int
    orders: list[list[str]]
    samples: dict[str, list[list[float]]] = field(default_factory=dict)

    def all(self, name: str) -> list[float]:
        """Every sample of ``name``, all rounds together."""
        return [t for round_ in self.samples[name] for t in round_]

    def round_medians(self, name: str) -> list[float]:
        return [statistics.median(r) for r in self.samples[name]]

    def paired(self, name: str, baseline: str) -> list[float]:
        """Per round, ``baseline``'s median over ``name``'s: > 1 when ``name`` is faster."""
        return [
            b / a
            for a, b in zip(self.round_medians(name), self.round_medians(baseline), strict=True)
        ]


def run_rounds(
    arms: Mapping[str, Callable[[], list[float]]],
    rounds: int,
    seed: int,
    report: Callable[[int, dict[str, float]], None] | None = None,
) -> Timings:
    """Run every arm once per round, in a shuffled order per round (:func:`round_orders`).

    An arm is a callable that does one round's work (its own warm-up included) and returns the
    seconds of each timed unit. ``report(round_index, {arm: median seconds})`` follows each round.
    """
    timings = Timings(seed, round_orders(list(arms), rounds, seed), {n: [] for n in arms})
    for r, order in enumerate(timings.orders):
        for name in order:
            timings.samples[name].append(list(arms[name]()))
        if report is not None:
            report(r, {n: statistics.median(timings.samples[n][-1]) for n in order})
    return timings


def print_round(r: int, medians: dict[str, float]) -> None:
    """One line per round: the arms in the order they ran, median seconds each."""
    print(f"  round {r + 1}: " + ", ".join(f"{n} {t:.4f}s" for n, t in medians.items()), flush=True)


def orders_line(seed: int, orders: Iterable[Sequence[str]], what: str = "arm") -> str:
    """``"arm order seed 0: a b; b a"``: the seed and every round's order, for the printout."""
    return f"{what} order seed {seed}: " + "; ".join(" ".join(o) for o in orders)


def spread(values: Sequence[float]) -> tuple[float, float, float]:
    """(median, low, high): the quartiles with 4 or more values, else the minimum and maximum."""
    med = statistics.median(values)
    if len(values) >= 4:
        low, _, high = statistics.quantiles(values, n=4)
        return med, low, high
    return med, min(values), max(values)


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table (what docs/RESULTS.md holds), cells as given."""
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def ratio_cell(ratios: Sequence[float]) -> str:
    """A paired ratio: median over rounds and the per-round values."""
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f}x ({', '.join(f'{x:.2f}' for x in ratios)})"


def overheads(speedups: Sequence[float]) -> list[float]:
    """Per round, an arm's extra time over its baseline in percent, from paired speed-ups
    (:meth:`Timings.paired`)."""
    return [100 * (1 / x - 1) for x in speedups]


def overhead_cell(speedups: Sequence[float]) -> str:
    """:func:`overheads`: their median over rounds and every round's value."""
    if not speedups:
        return "-"
    extra = overheads(speedups)
    return f"{statistics.median(extra):+.2f} % ({', '.join(f'{x:+.1f}' for x in extra)})"
