"""Reading checkpoints safely and handing an encoder from one stage to the next.

Everything here loads with ``torch.load(..., weights_only=True)``: a user-supplied file can hold
tensors and plain containers, never code. A file that is missing, truncated, of the wrong kind or of
the wrong shape is refused with a :class:`~maskrank.errors.MaskRankError` that names it.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import torch
from torch import nn

from maskrank.errors import ConfigError, CorruptFileError, MissingFileError

MAE_ENCODER_PREFIX = "mae.encoder."
CLASSIFIER_PREFIX = "model."


def load_checkpoint(path: str | Path, flag: str = "--ckpt_path", mmap: bool = False) -> dict:
    """Load a checkpoint dict with ``weights_only=True``; one-line errors name the file.

    ``mmap=True`` maps the tensors of a (zip-format) checkpoint instead of reading them, for a cheap
    check of a file that Lightning reads again anyway.
    """
    path = Path(path)
    if path.is_dir():
        found = sorted(p.relative_to(path).as_posix() for p in path.rglob("*.ckpt"))
        inside = f"checkpoints inside: {', '.join(found[:3])}" if found else "no .ckpt file inside"
        raise MissingFileError(
            f"checkpoint {path} ({flag}) is a directory, not a checkpoint file ({inside})"
        )
    if not path.is_file():
        raise MissingFileError(f"checkpoint {path} ({flag}) does not exist")
    try:
        mmap = mmap and zipfile.is_zipfile(path)
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # foreign bytes fail in arbitrary ways (KeyError for a text file, ...)
        raise CorruptFileError(
            f"checkpoint {path} ({flag}) cannot be read as a torch checkpoint: {_why_unreadable(err)}"
        ) from None
    if not isinstance(ckpt, dict):
        raise CorruptFileError(
            f"checkpoint {path} ({flag}) holds a {type(ckpt).__name__}, "
            "expected a dict with a state_dict"
        )
    return ckpt


def _why_unreadable(err: Exception) -> str:
    """A short reason for a failed ``torch.load`` (torch's own messages run to paragraphs)."""
    text = " ".join(str(err).split())
    if "Weights only load failed" in text:
        found = re.search(r"Unsupported (global: GLOBAL \S+|operand \d+)", text)
        what = f" ({found.group(0)})" if found else ""
        return (
            f"it holds objects other than tensors and plain containers{what}, and unpickling "
            "them could run code, so it is not loaded"
        )
    if isinstance(err, RuntimeError) and text:  # e.g. a truncated zip archive
        return f"truncated or damaged ({text.split('. ')[0][:160]})"
    return f"not a torch checkpoint ({type(err).__name__})"


LAST_PREFIX = "last:"
RUNS_ROOT = Path("runs")  # where the default logger writes (the CLI's save_dir)


def newest_last_checkpoint(experiment: str | Path) -> Path | None:
    """``last.ckpt`` of the highest ``version_N`` of an experiment directory that has one."""
    found = []
    for run in Path(experiment).glob("version_*"):
        number = run.name.removeprefix("version_")
        if number.isdigit() and (run / "checkpoints" / "last.ckpt").is_file():
            found.append((int(number), run / "checkpoints" / "last.ckpt"))
    return max(found)[1] if found else None


def resolve_checkpoint(path: str | Path, flag: str) -> Path:
    """``last:<experiment>`` -> the newest ``runs/<experiment>/version_N/checkpoints/last.ckpt``
    (``last:<dir>`` with a slash: that experiment directory); any other path as it is.

    So a config can name the stage-1 run it continues from without hard-coding its version.
    """
    text = str(path)
    if not text.startswith(LAST_PREFIX):
        return Path(text)
    name = text[len(LAST_PREFIX) :]
    experiment = Path(name) if "/" in name else RUNS_ROOT / name
    found = newest_last_checkpoint(experiment)
    if found is None:
        raise MissingFileError(
            f"{text} ({flag}): no {experiment}/version_*/checkpoints/last.ckpt; "
            f"runs there: {sorted(p.name for p in experiment.glob('version_*')) or 'none'}"
        )
    return found


def encoder_state_dict(path: str | Path, flag: str = "model.init_args.encoder_ckpt") -> dict:
    """The timm-format encoder weights of a checkpoint, keyed as in a timm ``VisionTransformer``.

    Accepts a maskrank MAE pretraining checkpoint (``mae.encoder.*``), a maskrank classifier
    checkpoint (``model.*``, the head is dropped) or a plain timm ``state_dict``; ``path`` may be
    ``last:<experiment>`` (:func:`resolve_checkpoint`).
    """
    path = resolve_checkpoint(path, flag)
    ckpt = load_checkpoint(path, flag)
    state = ckpt.get("state_dict", ckpt)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CorruptFileError(f"checkpoint {path} ({flag}) has no tensor state_dict")
    for prefix in (MAE_ENCODER_PREFIX, CLASSIFIER_PREFIX):
        if any(k.startswith(prefix) for k in state):
            out = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            return {k: v for k, v in out.items() if not k.startswith("head.")}
    if "patch_embed.proj.weight" in state:  # already a timm ViT state_dict
        return {k: v for k, v in state.items() if not k.startswith("head.")}
    raise ConfigError(
        f"checkpoint {path} ({flag}) holds no ViT encoder: expected keys starting with "
        f"'{MAE_ENCODER_PREFIX}' (MAE pretraining) or '{CLASSIFIER_PREFIX}' (classifier)"
    )


def load_encoder(
    model: nn.Module, path: str | Path, flag: str = "model.init_args.encoder_ckpt"
) -> None:
    """Copy the encoder weights of ``path`` into the timm ViT ``model`` (its head is left alone).

    Raises ConfigError naming the file when a weight is missing, unexpected or of another shape
    (an architecture mismatch), so a wrong checkpoint never half-loads.
    """
    path = resolve_checkpoint(path, flag)
    state = encoder_state_dict(path, flag)
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    state, own = match_pooling_norm(state, own)
    detail = state_dict_mismatch(own, state)
    if detail:
        raise ConfigError(
            f"checkpoint {path} ({flag}) does not match the model's encoder architecture: {detail}"
        )
    model.load_state_dict(state, strict=False)


def match_pooling_norm(state: dict, own: dict) -> tuple[dict, dict]:
    """Let an encoder pretrained with one pooling start a model with the other.

    A token-pooled ViT (MAE's encoder) ends in ``norm``; a mean-pooled one (``global_pool: avg``)
    has no ``norm`` but an ``fc_norm`` after the pooling. As MAE's own fine-tuning code does, the
    checkpoint's final norm is dropped and the model's keeps its fresh initialisation (and the
    same the other way round). Returns ``state`` and ``own`` without those keys.
    """
    for theirs, ours in (("norm.", "fc_norm."), ("fc_norm.", "norm.")):
        if (
            any(k.startswith(theirs) for k in state)
            and not any(k.startswith(theirs) for k in own)
            and any(k.startswith(ours) for k in own)
            and not any(k.startswith(ours) for k in state)
        ):
            state = {k: v for k, v in state.items() if not k.startswith(theirs)}
            own = {k: v for k, v in own.items() if not k.startswith(ours)}
    return state, own


def state_dict_mismatch(own: dict, state: dict) -> str:
    """What keeps ``state`` (a checkpoint's) from loading into ``own`` (a model's); "" if nothing.

    Names up to three missing, unexpected and wrongly shaped weights each.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and hasattr(state[k], "shape") and state[k].shape != v.shape
    ]
    return "; ".join(
        part
        for part in (
            f"missing {missing[:3]}" if missing else "",
            f"unexpected {unexpected[:3]}" if unexpected else "",
            f"shape mismatch {wrong[:3]} (checkpoint vs model)" if wrong else "",
        )
        if part
    )
