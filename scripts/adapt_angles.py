"""Principal angles between each adapter's final update and the full fine-tune's (SCIENCE.md §8).

    python scripts/adapt_angles.py runs/sweeps/adaptation            # a swept adaptation.yaml
    python scripts/adapt_angles.py --full FT.ckpt ADAPTER.ckpt [...]  # any classifier checkpoints

For every adapted module, ``ΔW = W_merged - W₀`` (``W₀`` the encoder the run started from, so a
PiSSA or gradient init's offset cancels) and the fine-tune's ``ΔW_full``; the angles between their
top-``k`` left singular subspaces (``k`` = the adapter's rank, a compressed Deep LoRA's ``r_c``,
at most 8), averaged over modules.
In a sweep directory, cells are ``arm=<name>,seed=<s>`` with the fine-tune as ``arm=full``.
Prints one row per adapter: mean angle (degrees), mean cos², and the random-subspace cos² ``k/d``.
"""

from __future__ import annotations

import argparse
import re
import statistics
from pathlib import Path

import torch

from maskrank.cli.adapt import load_classifier
from maskrank.io.checkpoints import encoder_state_dict
from maskrank.models.lora import merge_lora
from maskrank.models.lora.angles import update_angles

_CELL = re.compile(r"arm=(?P<arm>[^,]+),seed=(?P<seed>\d+)")


def _weights(path: Path) -> tuple[dict[str, torch.Tensor], dict, str | None]:
    model = load_classifier(path)
    vit = merge_lora(model.model)
    weights = {n: m.weight.detach() for n, m in vit.named_modules() if type(m) is torch.nn.Linear}
    return weights, dict(model.hparams.get("lora") or {}), model.hparams.get("encoder_ckpt")


def compare(full: Path, adapters: list[Path]) -> list[dict]:
    """One row per adapter checkpoint: its mean principal angle to the fine-tune's update."""
    ft, _, encoder = _weights(full)
    start = encoder_state_dict(encoder, "--full")
    base = {n: start[f"{n}.weight"] for n in ft if f"{n}.weight" in start}
    rows = []
    for path in adapters:
        weights, lora, _ = _weights(path)
        width = lora.get("r_c") if lora.get("compress_after") else lora.get("r", 8)
        k = min(int(width or max(1, int(lora.get("r", 8)) // 2)), 8)  # Deep LoRA: its r_c
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
    for full, adapters in pairs:
        for row in compare(full, adapters):
            print(
                f"{row['adapter'][-70:]:<70} {row['k']:>3} {row['mean_deg']:>7.1f} "
                f"{row['cos2']:>6.3f} {row['random_cos2']:>7.3f}"
            )


if __name__ == "__main__":
    main()
