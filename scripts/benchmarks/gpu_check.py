"""One table of the figures that need a GPU (run by scripts/gpu_check.sh; about 3-4 minutes).

    bash scripts/gpu_check.sh                  # on a machine with a CUDA GPU
    bash scripts/gpu_check.sh --workers 8      # loader workers (default: the cores available)
    python scripts/benchmarks/gpu_check.py --cpu-smoke    # every piece at toy sizes on the CPU (code path only)

Rows (each is paired with its baseline in the same run where one exists):

1. MAE ViT-B/16 at 224 px (decoder 512 wide, 8 blocks, 16 heads, mask 0.75), bf16 autocast,
   maskrank's ``training_loss`` + fused AdamW, batch 128: img/s and MFU, eager and with every block
   compiled (as ``MAEPretraining(compile=True)`` does). MFU = model FLOPs per step (forward +
   backward, ``torch.utils.flop_counter``) / step time / the device's nominal dense bf16 peak; the
   share of a measured 8192^3 bf16 GEMM rate is shown too.
2. LoRA r=8 on every linear layer of a ViT-B/16 classifier, batch 64, bf16: maskrank's engine vs
   peft's (``scripts/benchmarks/bench_adapt.py`` arms), interleaved rounds, paired ratio.
3. The file-backed ImageFolder loader (``scripts/benchmarks/bench_data.py``): img/s of the training
   DataLoader with N workers on generated ImageNet-like JPEGs, and per worker.
4. Rank callbacks (``scripts/benchmarks/bench_callbacks.py``): per-step overhead of the default callbacks on
   the CIFAR-scale MAE, and one invocation of each.

Without a GPU (and without ``--cpu-smoke``) it prints "no GPU" and exits 0.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling bench scripts

import bench_adapt  # noqa: E402
import bench_callbacks  # noqa: E402
import bench_data  # noqa: E402
import bench_pretrain  # noqa: E402

from maskrank.callbacks import RepresentationRankMonitor  # noqa: E402
from maskrank.data import SyntheticLowRank  # noqa: E402
from maskrank.data.base import available_cores  # noqa: E402
from maskrank.models.mae import MaskedAutoencoder  # noqa: E402
from maskrank.models.vit import ViTSpec  # noqa: E402
from maskrank.optim import adamw  # noqa: E402
from maskrank.tasks import MAEPretraining  # noqa: E402

# Nominal dense bf16 tensor-core peaks (FLOP/s) by device-name fragment, from vendor data sheets.
NOMINAL_BF16 = {
    "H200": 989e12,
    "H100 SXM": 989e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
    "L4": 121e12,
}

Row = tuple[str, str, str]  # (what, figure, note)


def settings(smoke: bool) -> SimpleNamespace:
    """Sizes of every piece: the real check, or toy sizes for ``--cpu-smoke``."""
    if smoke:
        return SimpleNamespace(
            vit=dict(preset="vit_nano_32", patch_size=8, embed_dim=64, depth=2, num_heads=2),
            img=32, decoder=(32, 1, 2), mae_batch=8, steps=2, warmup=1, rounds=2,
            lora_preset="vit_nano_32", lora_batch=4, lora_img=32,
            files=16, loader_batches=3, loader_batch=4, cb_steps=2, cb_batch=16,
        )  # fmt: skip
    return SimpleNamespace(
        vit=dict(preset="vit_base_224"), img=224, decoder=(512, 8, 16), mae_batch=128,
        steps=20, warmup=5, rounds=3, lora_preset="vit_base_224", lora_batch=64, lora_img=224,
        files=512, loader_batches=40, loader_batch=64, cb_steps=20, cb_batch=128,
    )  # fmt: skip


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[], object], device: torch.device, warmup: int, steps: int):
    """Median seconds of ``step()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bf16_gemm_rate(device: torch.device, n: int) -> float:
    """FLOP/s of an ``n^3`` matmul in bf16 (fp32 on the CPU), median of 5."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed_steps(lambda: a @ b, device, 2, 5)


def nominal_peak(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in NOMINAL_BF16.items() if key in name), None)


def mae_rows(cfg: SimpleNamespace, device: torch.device) -> list[Row]:
    """MAE step img/s and MFU, eager and compiled (bench_pretrain's Arm and FLOP counter)."""
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )
    gemm = bf16_gemm_rate(device, 8192 if device.type == "cuda" else 512)
    peak = nominal_peak(device)
    images = torch.randn(cfg.mae_batch, 3, cfg.img, cfg.img, device=device)
    rows = []
    for compiled in (False, True):
        torch.manual_seed(0)
        encoder = ViTSpec(**cfg.vit).build(img_size=cfg.img, in_chans=3, num_classes=0)
        dim, depth, heads = cfg.decoder
        model = MaskedAutoencoder(
            encoder, decoder_dim=dim, decoder_depth=depth, decoder_heads=heads
        )
        model.to(device)
        if compiled:  # every block, in place, as MAEPretraining(compile=True)
            backend = "inductor" if device.type == "cuda" else "eager"
            for block in [*model.encoder.blocks, *model.decoder_blocks]:
                block.compile(backend=backend)

        def call(x: torch.Tensor, seed: int, model=model) -> torch.Tensor:
            generator = torch.Generator(device=device).manual_seed(seed)
            with autocast:
                return model.training_loss(x, 0.75, "random", generator=generator)

        arm = bench_pretrain.Arm("mae", model, adamw(model, 1e-4, 0.05, (0.9, 0.95)), call)
        if not compiled:  # the same math compiled; the FLOP counter needs the eager modules
            flops = bench_pretrain.step_flops(arm, images)
        seconds = timed_steps(lambda arm=arm: arm.step(images, 0), device, cfg.warmup, cfg.steps)
        rate = flops / seconds
        mfu = f"MFU {100 * rate / peak:.1f}% of nominal" if peak else "no nominal peak known"
        label = "compiled" if compiled else "eager"
        rows.append(
            (
                f"MAE {cfg.vit['preset']} {cfg.img}px step, {label}, batch {cfg.mae_batch}",
                f"{cfg.mae_batch / seconds:,.0f} img/s",
                f"{mfu}; {100 * rate / gemm:.0f}% of measured GEMM ({gemm / 1e12:.0f} TFLOP/s)",
            )
        )
    return rows


def lora_rows(cfg: SimpleNamespace, device: torch.device) -> list[Row]:
    """maskrank's vs peft's LoRA on every linear layer (bench_adapt's arms), paired rounds."""
    encoder = bench_adapt._encoder_file(cfg.lora_preset)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.lora_batch, 3, cfg.lora_img, cfg.lora_img, generator=generator)
    labels = torch.randint(0, 10, (cfg.lora_batch,), generator=generator)
    # the batch an arm's gradient init would read (neither of these two arms has one)
    arms = {
        name: bench_adapt.Arm(name, cfg.lora_preset, encoder, images, labels)
        for name in ("lora_all", "peft_all")
    }
    for arm in arms.values():
        arm.model.to(device)
    images, labels = images.to(device), labels.to(device)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )

    def step(arm: bench_adapt.Arm) -> None:
        with autocast:
            arm.step(images, labels)

    medians: dict[str, list[float]] = {name: [] for name in arms}
    for r in range(cfg.rounds):
        for name in list(arms)[:: 1 if r % 2 == 0 else -1]:
            arm = arms[name]
            medians[name].append(
                timed_steps(lambda arm=arm: step(arm), device, cfg.warmup, cfg.steps)
            )
    ratio = statistics.median(
        p / m for m, p in zip(medians["lora_all"], medians["peft_all"], strict=True)
    )
    rows = []
    for name, label in (("lora_all", "maskrank"), ("peft_all", "peft")):
        rows.append(
            (
                f"LoRA r=8 all linears, {cfg.lora_preset}, batch {cfg.lora_batch}: {label}",
                f"{cfg.lora_batch / statistics.median(medians[name]):,.0f} img/s",
                f"maskrank / peft paired speed {ratio:.2f}x" if label == "maskrank" else "",
            )
        )
    return rows


def loader_rows(cfg: SimpleNamespace, workers: int) -> list[Row]:
    """The file-backed loader on generated JPEGs with ``workers`` worker processes."""
    with tempfile.TemporaryDirectory() as tmp:
        root = bench_data.make_jpeg_folder(Path(tmp), cfg.files)
        rate = bench_data.loader_throughput(root, workers, cfg.loader_batches, cfg.loader_batch)
    return [
        (
            f"ImageFolder in_memory=false, 500x375 JPEGs -> 224, {workers} workers",
            f"{rate:,.0f} img/s",
            f"{rate / workers:,.0f} img/s per worker; 3000 img/s needs "
            f"{bench_data.FEED_TARGET * workers / rate:.0f} such workers",
        )
    ]


def callback_rows(cfg: SimpleNamespace, device: torch.device, smoke: bool) -> list[Row]:
    """Per-step overhead of the default rank callbacks, and one invocation of each."""
    args = SimpleNamespace(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
        steps=cfg.cb_steps,
    )
    torch.manual_seed(0)
    model = MAEPretraining(
        vit=ViTSpec(preset="vit_tiny_32"), img_size=32, decoder_dim=128, decoder_depth=4,
        decoder_heads=4, mask_ratio=0.75,
    )  # fmt: skip
    probe = 64 if smoke else RepresentationRankMonitor()._size(model)
    data = SyntheticLowRank(
        num_classes=10, class_rank=4, train_size=cfg.cb_batch * (cfg.cb_steps + 2),
        val_size=probe, batch_size=cfg.cb_batch,
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base = bench_callbacks.step_times(args, model, data, root, [])
        with_cb = bench_callbacks.step_times(
            args, model, data, root, bench_callbacks.default_callbacks()
        )
        costs = {} if smoke else bench_callbacks.one_off_costs(args, model, data, root)
    step, step_cb = statistics.median(base), statistics.median(with_cb)
    rows = [
        (
            f"rank callbacks, MAE vit_tiny_32 batch {cfg.cb_batch}, per step",
            f"{100 * (step_cb / step - 1):+.1f}%",
            f"{step * 1e3:.1f} ms/step without, {step_cb * 1e3:.1f} ms/step with",
        )
    ]
    for name, seconds in costs.items():
        rows.append((f"  one {name}", f"{seconds * 1e3:,.0f} ms", ""))
    return rows


def print_table(rows: list[Row], title: str) -> None:
    width = max(len(r[0]) for r in rows)
    print(title)
    print(f"{'what':<{width}}  {'figure':>14}  note")
    for what, figure, note in rows:
        print(f"{what:<{width}}  {figure:>14}  {note}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on the CPU")
    parser.add_argument("--workers", type=int, default=None, help="loader workers (default: cores)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("no GPU: scripts/gpu_check.sh measures GPU figures only; nothing to do")
        return 0
    device = torch.device("cpu" if args.cpu_smoke else "cuda")
    cfg = settings(args.cpu_smoke)
    workers = args.workers or (1 if args.cpu_smoke else min(available_cores(), 16))
    start = time.perf_counter()
    rows = mae_rows(cfg, device) + lora_rows(cfg, device)
    rows += loader_rows(cfg, workers) + callback_rows(cfg, device, args.cpu_smoke)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (toy sizes)"
    print_table(rows, f"gpu_check on {name}, torch {torch.__version__}, {available_cores()} cores, "
                f"{time.perf_counter() - start:.0f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
