"""Every shipped config parses, names real classes and arguments, and prints a resolved config."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maskrank.cli import main

CONFIGS = sorted(
    p for p in (Path(__file__).parent.parent / "configs").rglob("*.yaml") if "sweeps" not in p.parts
)


def test_configs_exist():
    names = {p.name for p in CONFIGS}
    assert {"quickstart.yaml", "vit_tiny_cifar10.yaml", "mae_vit_tiny_cifar10.yaml"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda p: str(p.relative_to(p.parents[1])))
def test_config_parses(config, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(config), "--print_config"])
    assert exit_.value.code in (0, None)
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["model"]["class_path"].startswith("maskrank.tasks.")
    assert resolved["data"]["class_path"].startswith("maskrank.data.")


SWEEPS = sorted((Path(__file__).parent.parent / "configs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("sweep", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_validates_every_cell(sweep, tmp_path, capsys):
    # --dry-run parses every stage of every cell through the CLI parser and runs nothing
    main(["sweep", str(sweep), "--dry-run", "--out", str(tmp_path / "sweep")])
    assert "nothing was run" in capsys.readouterr().out
