"""Principal angles between each adapter's final update and the full fine-tune's (SCIENCE.md §8).

    python scripts/experiments/adapt_angles.py runs/sweeps/adaptation            # a swept adaptation.yaml
    python scripts/experiments/adapt_angles.py --full FT.ckpt ADAPTER.ckpt [...]  # any classifier checkpoints

On a sweep directory it also prints the adaptation table: per arm, the mean over seeds (and the
range) of ``adapt:val/acc``, ``cost/trainable_params`` and ``cost/step_s`` from the sweep's
``results.csv`` (``maskrank.callbacks.TrainingCost``), next to the mean angle.

For every adapted module, ``ΔW = W_merged - W₀`` (``W₀`` the encoder the run started from, so a
PiSSA or gradient init's offset cancels) and the fine-tune's ``ΔW_full``; the angles between their
top-``k`` left singular subspaces (``k`` = the adapter's rank, a compressed Deep LoRA's ``r_c``,
GaLore's projection rank, at most 8), averaged over modules.
In a sweep directory, cells are ``arm=<name>,seed=<s>`` with the fine-tune as ``arm=full``.
Prints one row per adapter: mean angle (degrees), mean cos², and the random-subspace cos² ``k/d``.
"""

from __future__ import annotations

import argparse
import csv
import re
import statistics
from collections import defaultdict
from pathlib import Path

import torch

from maskrank.cli.adapt import load_classifier
from maskrank.io.checkpoints import encoder_state_dict
from maskrank.models.lora import as_lora_spec, merge_lora
from maskrank.models.lora.angles import update_angles
from maskrank.optim import as_optimizer_spec

_CELL = re.compile(r"arm=(?P<arm>[^,]+),seed=(?P<seed>\d+)")


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], int, str | None]:
    """The merged Linear weights, the rank ``k`` to compare at, and the starting encoder."""
    model = load_classifier(path)
    vit = merge_lora(model.model)
    weights = {n: m.weight.detach() for n, m in vit.named_modules() if type(m) is torch.nn.Linear}
    optimizer = as_optimizer_spec(model.hparams.get("optimizer"))
    if model.hparams.get("lora"):  # a compressed Deep LoRA moves in r_c directions
        lora = as_lora_spec(model.hparams["lora"])
        k = lora.compressed_width if lora.compress_after is not None else lora.r
    elif optimizer.name == "galore_adamw":
        k = optimizer.rank
    else:
        k = 8
    return weights, min(k, 8), model.hparams.get("encoder_ckpt")


def compare(full: Path, adapters: list[Path]) -> list[dict]:
    """One row per adapter checkpoint: its mean principal angle to the fine-tune's update."""
    ft, _, encoder = _weights(full)
    start = encoder_state_dict(encoder, "--full")
    base = {n: start[f"{n}.weight"] for n in ft if f"{n}.weight" in start}
    rows = []
    for path in adapters:
        weights, k, _ = _weights(path)
        per_module = update_angles({n: weights[n] for n in base}, ft, base, k)
        angles = [v["mean_deg"] for v in per_module.values()]
        cos2 = [v["cos2_mean"] for v in per_module.values()]
        d = statistics.median(w.shape[0] for w in base.values())
        rows.append(
            {
                "adapter": str(path),
                "k": k,
                "mean_deg": statistics.mean(angles),
                "cos2": statistics.mean(cos2),
                "random_cos2": k / d,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("paths", nargs="+", help="a sweep directory, or adapter checkpoints")
    parser.add_argument("--full", help="the full fine-tune's checkpoint (without a sweep dir)")
    args = parser.parse_args()
    pairs: list[tuple[Path, list[Path]]] = []
    if args.full:
        pairs.append((Path(args.full), [Path(p) for p in args.paths]))
    else:
        cells: dict[str, dict[str, Path]] = {}
        for ckpt in sorted(Path(args.paths[0]).glob("*/adapt/checkpoints/last.ckpt")):
            match = _CELL.search(ckpt.parents[2].name)
            if match:
                cells.setdefault(match["seed"], {})[match["arm"]] = ckpt
        for arms in cells.values():
            if "full" in arms:
                pairs.append((arms["full"], [p for a, p in sorted(arms.items()) if a != "full"]))
    print(f"{'adapter':<70} {'k':>3} {'angle°':>7} {'cos²':>6} {'random':>7}")
    angles: dict[str, list[dict]] = defaultdict(list)
    for full, adapters in pairs:
        for row in compare(full, adapters):
            print(
                f"{row['adapter'][-70:]:<70} {row['k']:>3} {row['mean_deg']:>7.1f} "
                f"{row['cos2']:>6.3f} {row['random_cos2']:>7.3f}"
            )
            match = _CELL.search(row["adapter"])
            if match:
                angles[match["arm"]].append(row)
    results = Path(args.paths[0]) / "results.csv"
    if not args.full and results.is_file():
        print()
        print(adaptation_table(results, angles))


def _mean_range(values: list[float], fmt: str) -> str:
    if not values:
        return "-"
    mean = format(statistics.mean(values), fmt)
    if len(values) == 1:
        return mean
    return f"{mean} ({format(min(values), fmt)}-{format(max(values), fmt)})"


def adaptation_table(results: Path, angles: dict[str, list[dict]]) -> str:
    """Markdown: per arm, seed means (ranges) of val/acc, trainable parameters, step time, angle."""
    by_arm: dict[str, list[dict[str, str]]] = defaultdict(list)
    with results.open() as f:
        for row in csv.DictReader(f):
            by_arm[row["adapt.arm"]].append(row)

    def column(rows: list[dict[str, str]], key: str) -> list[float]:
        return [float(r[key]) for r in rows if r.get(key) not in (None, "")]

    lines = [
        "| arm | seeds | val/acc | trainable params | s/step | angle to full (°) | cos² |",
        "| --- | ---: | --- | ---: | --- | --- | --- |",
    ]
    for arm, rows in by_arm.items():
        params = column(rows, "adapt:cost/trainable_params")
        rows_angles = angles.get(arm, [])
        lines.append(
            f"| {arm} | {len(rows)} | {_mean_range(column(rows, 'adapt:val/acc'), '.3f')} | "
            f"{int(statistics.mean(params)) if params else '-'} | "
            f"{_mean_range(column(rows, 'adapt:cost/step_s'), '.3f')} | "
            f"{_mean_range([r['mean_deg'] for r in rows_angles], '.1f')} | "
            f"{_mean_range([r['cos2'] for r in rows_angles], '.3f')} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
