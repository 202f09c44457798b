"""Every command of the README's "Commands" section runs, in order, on tiny copies of the configs
it names (the shipped configs with the tiny ViT, tiny generated data and one epoch)."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest
import yaml

from maskrank.cli import main
from testkit.tiny import TINY_VIT

ROOT = Path(__file__).resolve().parents[1]
TINY = {"train_size": 64, "val_size": 32, "batch_size": 16, "num_classes": 4, "class_rank": 2}


def readme_commands() -> list[str]:
    """The ``maskrank ...`` lines of the first code block under ``## Commands``, comments cut."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Commands") :]
    block = section[section.index("```bash") + len("```bash") : section.index("```\n", 8)]
    lines = [line.split("  #")[0].strip() for line in block.splitlines()]
    return [line for line in lines if line.startswith("maskrank ")]


def _tiny_config(source: str, out: Path, max_epochs: int = 1) -> Path:
    cfg = yaml.safe_load((ROOT / source).read_text())
    cfg["trainer"].update(max_epochs=max_epochs, log_every_n_steps=1, enable_progress_bar=False)
    cfg["model"]["init_args"]["vit"] = dict(TINY_VIT)
    if "decoder_dim" in cfg["model"]["init_args"]:
        cfg["model"]["init_args"].update(decoder_dim=32, decoder_depth=1)
    cfg["data"]["init_args"].update(TINY)
    out.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return out


def _tiny_sweep(out: Path, quickstart: Path, supervised: Path) -> Path:
    spec = yaml.safe_load((ROOT / "configs/sweeps/mask_ratio.yaml").read_text())
    spec["vars"] = {k: 1 if "epochs" in k else 64 for k in spec["vars"]}
    spec["stages"]["pretrain"]["base"] = str(quickstart)
    spec["stages"]["finetune"]["base"] = str(supervised)
    spec["stages"]["finetune"]["overrides"]["data.init_args.batch_size"] = 16
    spec["grid"] = {"pretrain.model.init_args.mask_ratio": [0.75]}
    spec["seeds"] = [0]
    out.write_text(yaml.safe_dump(spec, sort_keys=False))
    return out


def _newest(pattern: str) -> str:
    found = sorted(Path().glob(pattern), key=lambda p: p.stat().st_mtime)
    assert found, pattern
    return str(found[-1])


@pytest.mark.slow
def test_every_readme_command_runs(tmp_path, monkeypatch, capsys):
    commands = readme_commands()
    assert {c.split()[1] for c in commands} >= {
        "fit", "validate", "test", "predict", "sweep", "report", "lora-rank", "export"
    }  # fmt: skip
    monkeypatch.chdir(tmp_path)  # the configs write runs/ relative to the working directory
    Path("configs/sweeps").mkdir(parents=True)
    quickstart = _tiny_config("configs/quickstart.yaml", tmp_path / "configs/quickstart.yaml")
    supervised = _tiny_config(
        "configs/supervised/vit_nano_synthetic.yaml", tmp_path / "supervised.yaml"
    )
    _tiny_sweep(tmp_path / "configs/sweeps/mask_ratio.yaml", quickstart, supervised)
    placeholders = {
        "<ckpt>": lambda: _newest("runs/quickstart/version_*/checkpoints/last.ckpt"),
        "<finetune ckpt>": lambda: _newest("runs/sweeps/mask_ratio/**/finetune/**/last.ckpt"),
        "<classifier ckpt>": lambda: _newest("runs/sweeps/mask_ratio/**/finetune/**/last.ckpt"),
    }
    for command in commands:
        for placeholder, value in placeholders.items():
            if placeholder in command:
                command = command.replace(placeholder, value())
        argv = shlex.split(command)[1:]
        redirect = argv.index(">") if ">" in argv else None
        target = argv[redirect + 1] if redirect is not None else None
        argv = argv[:redirect]
        stdout = io.StringIO()
        with contextlib.redirect_stdout(stdout):
            try:
                main(argv)
            except SystemExit as exit_:  # --help and --print_config exit 0 when done
                assert exit_.code in (0, None), (command, capsys.readouterr().err[-2000:])
        if target is not None:
            Path(target).write_text(stdout.getvalue())
        if argv[0] == "predict":
            assert re.search(r"predictions: \S+predictions\.pt", stdout.getvalue()), command
    assert Path("rank_map.yaml").is_file() and Path("exported/timm/config.json").is_file()
    assert Path("runs/sweeps/mask_ratio/results.csv").is_file()
