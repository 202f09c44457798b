"""``maskrank lora-rank`` and ``maskrank export``: what to do with an adaptation checkpoint.

    maskrank lora-rank last:finetune_cifar10 --out rank_map.yaml
    maskrank fit -c configs/adapt/lora_cifar10.yaml --model.init_args.lora.rank_pattern rank_map.yaml
    maskrank export last:lora_cifar10 --out exported/

``CKPT`` is a checkpoint file or ``last:<experiment>`` (the newest run's ``last.ckpt``).
``lora-rank`` reads a full fine-tune (``ΔW = W - W₀``, with ``W₀`` the encoder it started from) or a
LoRA run (``ΔW = (α/r) B A``), prints each module's spectrum summary (energy ranks at 0.9 and 0.99,
effective and stable rank, ``‖ΔW‖_F / ‖W₀‖_F``) and writes the energy rank at ``--energy`` as a
per-module rank map (SCIENCE.md §1 and §6). ``export`` writes the merged plain-timm model and, for
LoRA, the adapter alone in peft's format.
"""

from __future__ import annotations

import argparse
import inspect
from pathlib import Path

import torch

from maskrank.errors import ConfigError
from maskrank.io.checkpoints import (
    encoder_state_dict,
    load_checkpoint,
    resolve_checkpoint,
    state_dict_mismatch,
)
from maskrank.metrics import energy_rank_key, singular_values, spectrum_metrics
from maskrank.models.lora import (
    DEFAULT_TARGETS,
    adapter_deltas,
    as_lora_spec,
    save_merged,
    target_matches,
    write_rank_map,
)
from maskrank.models.lora.export import save_lora_artefacts
from maskrank.tasks.adaptation import fold_probe_head
from maskrank.tasks.classification import ImageClassifier

__all__ = ["export_command", "load_classifier", "lora_rank_command", "update_deltas"]


def load_classifier(path: str | Path, flag: str = "CKPT") -> ImageClassifier:
    """Rebuild the :class:`ImageClassifier` of a checkpoint (no file it was built from is read)."""
    path = resolve_checkpoint(path, flag)
    ckpt = load_checkpoint(path, flag)
    hparams, state = ckpt.get("hyper_parameters"), ckpt.get("state_dict")
    if not isinstance(hparams, dict) or not isinstance(state, dict):
        raise ConfigError(f"checkpoint {path} ({flag}) is not a maskrank training checkpoint")
    if any(k.startswith("mae.") for k in state):
        raise ConfigError(
            f"checkpoint {path} ({flag}) is an MAE pretraining checkpoint; this command reads a "
            "classifier checkpoint (stage 2: configs/adapt/*.yaml)"
        )
    accepted = set(inspect.signature(ImageClassifier.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in hparams.items() if k in accepted}
    kwargs.update(encoder_ckpt=None, pretrained=False)  # the weights come from the state dict
    model = ImageClassifier(**kwargs)
    mismatch = state_dict_mismatch(model.state_dict(), state)
    if mismatch:
        raise ConfigError(f"checkpoint {path} ({flag}) is not an ImageClassifier: {mismatch}")
    model.load_state_dict(state)
    # what the run started from, for `lora-rank` (not read here)
    model.hparams.update(encoder_ckpt=hparams.get("encoder_ckpt"))
    model.data_config = ckpt.get("data_config")  # the training data's preprocessing, if recorded
    return model.eval()


def update_deltas(
    model: ImageClassifier, base: str | Path | None, targets: list[str], flag: str = "--base"
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(ΔW, W₀)`` per module: what training moved each weight by, and where it started.

    A fine-tune: ``W - W₀`` with ``W₀`` from ``base``. LoRA with the default init: ``(α/r) B A``
    (it starts at zero on the unchanged ``W₀``). LoRA whose init offsets the base (PiSSA,
    gradient, peft's SVD inits): ``W_merged - W₀``, since ``(α/r) B A`` also holds the initial
    ``(α/r) B₀A₀`` that the offset base cancels.
    """
    if model.hparams.adaptation == "lora":
        deltas = adapter_deltas(model.model)
        if not as_lora_spec(model.hparams.get("lora")).offsets_base:
            bases = {n: model.model.get_submodule(n).weight.detach() for n in deltas}
            return deltas, bases
        merged = {n: model.model.get_submodule(n).weight.detach() + d for n, d in deltas.items()}
        start = _start_weights(model, base, flag, "an offset-init LoRA run")
        return _moved_from(merged, start, flag)
    start = _start_weights(model, base, flag, "the fine-tune")
    weights = {
        name: module.weight.detach()
        for name, module in model.model.named_modules()
        if isinstance(module, torch.nn.Linear) and any(target_matches(name, t) for t in targets)
    }
    if not weights:
        raise ConfigError(f"--targets {targets} match no Linear layer of the encoder")
    return _moved_from(weights, start, flag)


def _start_weights(
    model: ImageClassifier, base: str | Path | None, flag: str, what: str
) -> tuple[str | Path, dict[str, torch.Tensor]]:
    """The checkpoint a run started from (``base`` or its ``encoder_ckpt``) and its weights."""
    base = base or model.hparams.get("encoder_ckpt")
    if base is None:
        raise ConfigError(
            f"{flag}: {what} has no encoder_ckpt in its hyper-parameters; give the checkpoint "
            "it started from with --base"
        )
    return base, encoder_state_dict(base, flag)


def _moved_from(
    weights: dict[str, torch.Tensor],
    start: tuple[str | Path, dict[str, torch.Tensor]],
    flag: str,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(W - W₀, W₀)`` per module name, every ``W₀`` checked against ``W``'s shape."""
    path, state = start
    deltas, bases = {}, {}
    for name, weight in weights.items():
        key = f"{name}.weight"
        if key not in state or state[key].shape != weight.shape:
            raise ConfigError(f"checkpoint {path} ({flag}) has no weight {key} of this shape")
        bases[name] = state[key]
        deltas[name] = weight - state[key].to(weight.dtype)
    return deltas, bases


def lora_rank_command(argv: list[str]) -> None:
    """``maskrank lora-rank CKPT [--out rank_map.yaml]``."""
    parser = argparse.ArgumentParser(
        prog="maskrank lora-rank",
        description="Per-module LoRA ranks from the energy spectrum of a fine-tune's update.",
    )
    parser.add_argument("ckpt", help="classifier checkpoint of a finetune or lora run")
    parser.add_argument(
        "--base",
        help="checkpoint the fine-tune started from (default: its model.init_args.encoder_ckpt)",
    )
    parser.add_argument(
        "--energy",
        type=float,
        default=0.9,
        help="rank = smallest k holding this fraction of ‖ΔW‖_F² (default 0.9)",
    )
    parser.add_argument(
        "--targets",
        nargs="+",
        default=list(DEFAULT_TARGETS),
        help="Linear layers to analyse, by name suffix (default qkv proj fc1 fc2)",
    )
    parser.add_argument("--min-rank", type=int, default=1, help="lower clamp (default 1)")
    parser.add_argument("--max-rank", type=int, default=64, help="upper clamp (default 64)")
    parser.add_argument("--out", default="rank_map.yaml", help="rank map to write")
    args = parser.parse_args(argv)
    if not 0.0 < args.energy <= 1.0:
        raise ConfigError(f"--energy {args.energy} must be in (0, 1]")
    if not 0 <= args.min_rank <= args.max_rank:
        raise ConfigError(
            f"--min-rank {args.min_rank} / --max-rank {args.max_rank}: need 0 <= min <= max"
        )
    model = load_classifier(args.ckpt)
    deltas, bases = update_deltas(model, args.base, args.targets)
    key = energy_rank_key(args.energy)
    energies = sorted({0.9, 0.99, args.energy})
    print(
        f"{'module':<24} {'shape':>10} {'e90':>5} {'e99':>5} {'erank':>7} {'stable':>7} "
        f"{'|dW|/|W0|':>10} {'rank':>5}"
    )
    ranks = {}
    for name, delta in deltas.items():
        sv = singular_values(delta)
        m = spectrum_metrics(sv=sv, energies=energies)
        rel = float(sv.norm() / bases[name].double().norm().clamp_min(1e-12))
        ranks[name] = int(min(args.max_rank, max(args.min_rank, m[key])))
        shape = "x".join(map(str, delta.shape))
        print(
            f"{name:<24} {shape:>10} {m['energy_rank_0.9']:>5.0f} {m['energy_rank_0.99']:>5.0f} "
            f"{m['effective_rank']:>7.2f} {m['stable_rank']:>7.2f} {rel:>10.4f} {ranks[name]:>5}"
        )
    write_rank_map(
        args.out,
        ranks,
        source=str(args.ckpt),
        energy=args.energy,
        adaptation=model.hparams.adaptation,
    )
    total = sum(ranks.values())
    print(
        f"wrote {args.out}: {len(ranks)} modules, mean rank {total / len(ranks):.1f}; use it with "
        f"--model.init_args.lora.rank_pattern {args.out}"
    )


def export_command(argv: list[str]) -> None:
    """``maskrank export CKPT --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="maskrank export",
        description="Write a classifier checkpoint as a plain timm model (adapters merged, "
        "a linear probe's BatchNorm folded) and, for LoRA, the adapter alone in peft's format.",
    )
    parser.add_argument("ckpt", help="classifier checkpoint (finetune, linear_probe or lora)")
    parser.add_argument("--out", required=True, help="folder to write timm/ (and adapter/) into")
    args = parser.parse_args(argv)
    model = load_classifier(args.ckpt)
    if model.data_config is None:
        raise ConfigError(
            f"checkpoint {args.ckpt} (CKPT) records no data_config (the training data's mean, "
            "std, input size and class names), so an export could not say how to feed the "
            "model; export a checkpoint written by `maskrank fit` with a maskrank datamodule"
        )
    vit = model.model
    out = Path(args.out)
    if model.hparams.adaptation == "lora":
        written = save_lora_artefacts(vit, out, as_lora_spec(model.hparams.lora))
        adapter, base = written["adapter"], written.get("base")
        on = (
            "timm_model"
            if base is None
            else f"timm.create_model('local-dir:{base}', pretrained=True)"
        )
        print(f"adapter: {adapter}  (peft.PeftModel.from_pretrained({on}, '{adapter}'))")
    vit.head = fold_probe_head(vit.head)
    merged = save_merged(vit, out / "timm", model.data_config)
    print(f"timm model: {merged}  (timm.create_model('local-dir:{merged}', pretrained=True))")
