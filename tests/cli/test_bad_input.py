"""The README's bad-input table, row by row: each user mistake ends ``maskrank`` with exit status 2
and a message naming the flag or file (one ``maskrank: error:`` line for maskrank's own checks;
jsonargparse's usage message, naming the key, for argument-parsing errors). Nothing trains."""

from __future__ import annotations

import errno
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

from maskrank.cli import main
from maskrank.models.vit import ViTSpec
from testkit.resume import tiny_mae_model, write_config
from testkit.tiny import TINY_VIT


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


EVIL_PICKLE = pickle.dumps({"state_dict": _Payload()})
# a Lightning checkpoint (no hyper_parameters, as a plain Trainer writes it) of some other network
OTHER_MODEL = dict(
    state_dict={"net.weight": torch.zeros(2, 2)}, optimizer_states=[], loops={}, global_step=0
)


@dataclass
class Files:
    """A tiny classifier and MAE config, and the files the rows feed them."""

    root: Path

    def __post_init__(self) -> None:
        self.runs = self.root / "runs"
        self.cls = write_config(self.root / "cls.yaml", self.runs, _classifier())
        self.mae = write_config(self.root / "mae.yaml", self.runs, tiny_mae_model())

    def path(self, name: str) -> Path:
        return self.root / name

    def image_tree(self, corrupt: bool) -> Path:
        """``root/{train,val}/{cat,dog}/``: one readable image each (or a corrupt one), or none."""
        tree = self.root / ("corrupt_tree" if corrupt else "empty_tree")
        for split in ("train", "val"):
            for name in ("cat", "dog"):
                folder = tree / split / name
                folder.mkdir(parents=True)
                if corrupt:
                    Image.new("RGB", (8, 8)).save(folder / "0.png")
                else:
                    (folder / "notes.txt").write_text("no images here")
        if corrupt:
            (tree / "train" / "dog" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n not a png")
        return tree

    def encoder_checkpoint(self, **vit) -> Path:
        """A plain timm ViT state_dict (the encoder of another run)."""
        path = self.root / "encoder.pt"
        model = ViTSpec(**{**TINY_VIT, **vit}).build(img_size=32, in_chans=3, num_classes=0)
        torch.save(model.state_dict(), path)
        return path

    def checkpoint(self, name: str, **content) -> Path:
        path = self.root / name
        torch.save(content, path)
        return path

    def truncated_checkpoint(self) -> Path:
        whole = self.checkpoint("whole.ckpt", state_dict={"w": torch.zeros(256, 256)})
        path = self.root / "truncated.ckpt"
        data = whole.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        return path

    def bad_yaml(self) -> Path:
        path = self.root / "broken.yaml"
        path.write_text(
            "model:\n  class_path: maskrank.tasks.ImageClassifier\n  init_args: {vit: [\n"
        )
        return path

    def sweep(self) -> Path:
        path = self.root / "sweep.yaml"
        grid = {"model.init_args.vit.no_such_key": [1, 2]}
        path.write_text(yaml.safe_dump({"name": "bad", "base": str(self.cls), "grid": grid}))
        return path


def _classifier() -> dict:
    return {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}


@dataclass(frozen=True)
class Row:
    """One README row: the arguments after ``maskrank`` and what the message must contain."""

    argv: Callable[[Files], list[str]]
    expect: Callable[[Files], list[str]]
    parser_error: bool = False  # printed by jsonargparse (usage + error), not one maskrank line


def _fit(config: Path, *args: object) -> list[str]:
    return ["fit", "-c", str(config), *map(str, args)]


FOLDER = ("--data", "maskrank.data.ImageFolderDataModule", "--data.root")
CIFAR = ("--data", "maskrank.data.CIFAR10DataModule", "--data.root")
ENCODER = "--model.init_args.encoder_ckpt"
MASK_RATIO = "--model.init_args.mask_ratio"
LORA = ("--model.init_args.adaptation", "lora")
PROBE = ("--model.init_args.adaptation", "linear_probe")
OPTIMIZER = "--model.init_args.optimizer"
EXPLICIT = "{variant: feature, rate: 0.1, mode: explicit}"

ROWS = {
    "unknown config key": Row(
        lambda f: _fit(f.cls, "--model.init_args.learning_rate", "0.1"),
        lambda f: ["learning_rate"],
        parser_error=True,
    ),
    "wrong type": Row(
        lambda f: _fit(f.cls, "--trainer.max_epochs", "two"),
        lambda f: ['"trainer.max_epochs"', "int"],
        parser_error=True,
    ),
    "value not among the choices": Row(
        lambda f: _fit(f.cls, "--nan_guard.action", "ignore"),
        lambda f: ['"nan_guard.action"', "stop", "skip"],
        parser_error=True,
    ),
    "mask ratio outside [0, 1)": Row(
        lambda f: _fit(f.mae, "--model.init_args.mask_ratio", "1.0"),
        lambda f: ["model.init_args.mask_ratio", "[0, 1)"],
    ),
    "patch size not dividing the image size": Row(
        lambda f: _fit(f.cls, "--model.init_args.vit.patch_size", "5"),
        lambda f: ["patch_size", "5", "32"],
    ),
    "batch larger than the training set": Row(
        lambda f: _fit(f.cls, "--data.init_args.batch_size", "1000"),
        lambda f: ["--data.batch_size 1000", "64 training images"],
    ),
    "dataset missing offline": Row(
        lambda f: _fit(f.cls, *CIFAR, f.path("nodata")),
        lambda f: [str(f.path("nodata")), "--data.download true"],
    ),
    "image folder missing": Row(
        lambda f: _fit(f.cls, *FOLDER, f.path("nowhere")),
        lambda f: ["--data.root", str(f.path("nowhere")), "<root>/train/<class>/<image>"],
    ),
    "image folder without images": Row(
        lambda f: _fit(f.cls, *FOLDER, f.image_tree(corrupt=False)),
        lambda f: [str(f.path("empty_tree") / "train"), "contains no images"],
    ),
    "corrupt image file": Row(
        lambda f: _fit(f.cls, *FOLDER, f.image_tree(corrupt=True)),
        lambda f: [str(f.path("corrupt_tree") / "train" / "dog" / "1.png"), "not a readable image"],
    ),
    "encoder checkpoint of another architecture": Row(
        lambda f: _fit(
            f.cls, "--model.init_args.vit.embed_dim", "32", ENCODER, f.encoder_checkpoint()
        ),
        lambda f: [str(f.path("encoder.pt")), "model.init_args.encoder_ckpt", "shape mismatch"],
    ),
    "encoder checkpoint of the wrong stage (no ViT in it)": Row(
        lambda f: _fit(
            f.cls, ENCODER, f.checkpoint("head.ckpt", state_dict={"fc.weight": torch.zeros(2)})
        ),
        lambda f: [str(f.path("head.ckpt")), "model.init_args.encoder_ckpt", "holds no ViT"],
    ),
    "checkpoint of another model (--ckpt_path)": Row(
        lambda f: _fit(f.cls, "--ckpt_path", f.checkpoint("other.ckpt", **OTHER_MODEL)),
        lambda f: [str(f.path("other.ckpt")), "--ckpt_path", "does not fit the model"],
    ),
    "weights-only checkpoint to resume a fit": Row(
        lambda f: _fit(
            f.cls, "--ckpt_path", f.checkpoint("weights.ckpt", state_dict={"w": torch.zeros(2)})
        ),
        lambda f: [str(f.path("weights.ckpt")), "--ckpt_path", "weights only"],
    ),
    "checkpoint file missing": Row(
        lambda f: ["validate", "-c", str(f.cls), "--ckpt_path", str(f.path("gone.ckpt"))],
        lambda f: [str(f.path("gone.ckpt")), "--ckpt_path", "does not exist"],
    ),
    "truncated checkpoint": Row(
        lambda f: _fit(f.cls, "--ckpt_path", f.truncated_checkpoint()),
        lambda f: [str(f.path("truncated.ckpt")), "--ckpt_path", "truncated or damaged"],
    ),
    "text file as checkpoint": Row(
        lambda f: ["test", "-c", str(f.cls), "--ckpt_path", _write(f.path("notes.ckpt"), b"hi\n")],
        lambda f: [str(f.path("notes.ckpt")), "--ckpt_path", "not a torch checkpoint"],
    ),
    "checkpoint pickle that would run code": Row(
        lambda f: _fit(f.cls, "--ckpt_path", _write(f.path("evil.ckpt"), EVIL_PICKLE)),
        lambda f: [str(f.path("evil.ckpt")), "--ckpt_path", "could run code"],
    ),
    "--ckpt_path last with nothing to resume": Row(
        lambda f: _fit(f.cls, "--ckpt_path", "last"),
        lambda f: ["--ckpt_path last", str(f.runs / "exp" / "version_*")],
    ),
    "accelerator this machine does not have": Row(
        lambda f: _fit(f.cls, "--trainer.accelerator", "gpu"),
        lambda f: ["--trainer.accelerator gpu", "no GPU", "cpu or auto"],
    ),
    "run directory that cannot be created (under /proc)": Row(
        lambda f: _fit(f.cls, "--trainer.logger", _logger("/proc/maskrank_runs")),
        lambda f: ["/proc/maskrank_runs", "no such file or directory"],
    ),
    "config file with a YAML syntax error": Row(
        lambda f: ["fit", "-c", str(f.bad_yaml())],
        lambda f: [str(f.path("broken.yaml")), "(-c)", "not valid YAML", "line 4, column 1"],
    ),
    "config file missing": Row(
        lambda f: ["fit", "-c", str(f.path("nope.yaml"))],
        lambda f: [str(f.path("nope.yaml")), "(-c)", "does not exist"],
    ),
    "LoRA settings without adaptation: lora": Row(
        lambda f: _fit(f.cls, "--model.init_args.lora", "{r: 4}"),
        lambda f: ["model.init_args.lora", "model.init_args.adaptation", "'finetune'"],
    ),
    "layer decay outside a fine-tune": Row(
        lambda f: _fit(
            f.cls,
            "--model.init_args.adaptation",
            "linear_probe",
            "--model.init_args.layer_decay",
            0.75,
        ),
        lambda f: ["model.init_args.layer_decay", "'linear_probe'"],
    ),
    "mask-ratio range given high-to-low": Row(
        lambda f: _fit(f.mae, "--model.init_args.mask_ratio_range", "[0.9, 0.5]"),
        lambda f: ["model.init_args.mask_ratio_range", "high-to-low"],
    ),
    # settings that leave nothing to learn (the tiny MAE has 16 patches)
    "mask ratio masking no patch": Row(
        lambda f: _fit(f.mae, MASK_RATIO, 0.0),  # int(16 x 1.0) = 16 visible
        lambda f: ["model.init_args.mask_ratio = 0.0", "none of the model's 16 patches"],
    ),
    "mask-ratio range starting at a ratio masking no patch": Row(
        lambda f: _fit(f.mae, "--model.init_args.mask_ratio_range", "[0.0, 0.5]"),
        lambda f: ["model.init_args.mask_ratio_range = [0.0, 0.5]", "masks none"],
    ),
    "mask-ratio schedule ending at a ratio masking no patch": Row(
        lambda f: _fit(f.mae, "--model.init_args.mask_ratio_end", 0.0),
        lambda f: ["model.init_args.mask_ratio_end = 0.0", "masks none"],
    ),
    "a fine-tuning head on the pretraining encoder": Row(
        lambda f: _fit(f.mae, "--model.init_args.vit.global_pool", "avg"),
        lambda f: ["model.init_args.vit.global_pool = 'avg'", "global_pool: token"],
    ),
    "grid masking with a drawn or scheduled ratio": Row(
        lambda f: _fit(f.mae, "--model.init_args.masking", "grid"),  # the tiny MAE draws a ratio
        lambda f: ["model.init_args.mask_ratio_range", "masking is grid", "one fixed ratio"],
    ),
    "base learning rate 0": Row(
        lambda f: _fit(f.mae, "--model.init_args.base_lr", 0.0),
        lambda f: ["model.init_args.base_lr = 0.0", "> 0"],
    ),
    "LoRA alpha 0 for a layer": Row(
        lambda f: _fit(f.cls, *LORA, "--model.init_args.lora", "{alpha_pattern: {qkv: 0.0}}"),
        lambda f: ["model.init_args.lora.alpha_pattern['qkv'] = 0.0", "> 0"],
    ),
    "negative LoRA rank for a layer": Row(
        lambda f: _fit(f.cls, *LORA, "--model.init_args.lora", "{rank_pattern: {qkv: -1}}"),
        lambda f: ["model.init_args.lora.rank_pattern['qkv'] = -1", ">= 0"],
    ),
    "LoRA ranks all 0": Row(
        lambda f: _fit(f.cls, *LORA, "--model.init_args.lora", "{rank_pattern: {'.*': 0}}"),
        lambda f: ["model.init_args.lora.rank_pattern", "every targeted layer to rank 0"],
    ),
    "Deep LoRA starting from zero factors": Row(
        lambda f: _fit(f.cls, *LORA, "--model.init_args.lora", "{depth: 3, init_scale: 0.0}"),
        lambda f: ["model.init_args.lora.init_scale = 0.0", "> 0"],
    ),
    "dropout in a linear probe's frozen encoder": Row(
        lambda f: _fit(f.cls, *PROBE, "--model.init_args.dropout", "{variant: feature, rate: 0.1}"),
        lambda f: ["model.init_args.dropout", "'linear_probe'", "never act"],
    ),
    "explicit dropout penalty on a LoRA-adapted fc2": Row(
        lambda f: _fit(f.cls, *LORA, "--model.init_args.dropout", EXPLICIT),
        lambda f: ["model.init_args.dropout", "model.init_args.lora.targets", "blocks.0.mlp.fc2"],
    ),
    "GaLore targets that the adaptation freezes": Row(
        lambda f: _fit(f.cls, *PROBE, OPTIMIZER, "{name: galore_adamw, rank: 4}"),
        lambda f: ["model.init_args.optimizer.targets", "only frozen weights", "blocks.0.attn"],
    ),
    "a directory given as the checkpoint to export": Row(
        lambda f: ["export", str(f.root), "--out", str(f.path("exported"))],
        lambda f: [str(f.root), "is a directory", "no .ckpt file inside"],
    ),
    "sweep grid over a missing key": Row(
        lambda f: ["sweep", str(f.sweep()), "--dry-run"],
        lambda f: ["sweep.yaml", "model.init_args.vit.no_such_key", "not accepted"],
    ),
}


def _logger(save_dir: str) -> str:
    return yaml.safe_dump(
        {
            "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
            "init_args": {"save_dir": save_dir},
        },
        default_flow_style=True,
    ).strip()


def _write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_bad_input_is_one_clear_line(row: Row, tmp_path, capsys, monkeypatch, request):
    if "accelerator" in request.node.callspec.id and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    monkeypatch.chdir(tmp_path)  # sweeps and data caches write relative to the working directory
    files = Files(tmp_path)
    argv = row.argv(files)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    if row.parser_error:
        message = "\n".join(err)
        assert message.startswith("usage:") and "\nerror: " in message
    else:
        assert len(err) == 1 and err[0].startswith("maskrank: error:"), captured.err[-1500:]
        message = err[0]
    for needle in row.expect(files):
        assert needle in message, (needle, message)
    assert "this must never run" not in captured.out
    assert not list(files.runs.rglob("*.ckpt"))  # nothing was trained


def test_lora_target_matching_no_module(tmp_path, capsys):
    # README row "LoRA target matching no module" (a flow-style YAML value on the command line)
    cfg = write_config(tmp_path / "cls.yaml", tmp_path / "runs", _classifier())
    lora = "{targets: [no_such_layer]}"
    with pytest.raises(SystemExit) as exit_:
        main(_fit(cfg, "--model.init_args.adaptation", "lora", "--model.init_args.lora", lora))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:")
    assert "'no_such_layer'" in err[0] and "model.init_args.lora.targets" in err[0]


@pytest.mark.parametrize(
    "code, words", [(errno.EROFS, "read-only file system"), (errno.EACCES, "permission denied")]
)
def test_a_run_directory_that_cannot_be_written_is_one_line(
    tmp_path, capsys, monkeypatch, code, words
):
    # a read-only or forbidden run directory (root ignores permission bits, so the OS refuses here)
    cfg = write_config(tmp_path / "cls.yaml", tmp_path / "runs", _classifier())
    real = os.makedirs

    def refuse(name, *args, **kwargs):
        if str(tmp_path / "runs") in str(name):
            raise OSError(code, os.strerror(code), str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(os, "makedirs", refuse)
    with pytest.raises(SystemExit) as exit_:
        main(_fit(cfg))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err
    assert str(tmp_path / "runs") in err[0] and words in err[0]


def test_a_full_disk_names_the_checkpoint_and_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    cfg = write_config(tmp_path / "cls.yaml", tmp_path / "runs", _classifier(), max_epochs=2)
    main(_fit(cfg, "--trainer.max_epochs", 1))  # a first run leaves version_0/last.ckpt
    last = tmp_path / "runs" / "exp" / "version_0" / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    real_save = torch.save

    def full(obj, handle, *args, **kwargs):
        if getattr(handle, "name", "").endswith(".tmp") and "last.ckpt" in handle.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, handle, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(SystemExit) as exit_:
        main(_fit(cfg, "--ckpt_path", "last"))
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error:"), err
    assert str(last) in err[0] and "disk is full" in err[0] and "previous file is intact" in err[0]
    assert last.read_bytes() == before
