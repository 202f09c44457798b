"""Sweep files: expansion into cells, ids, interpolation, and the mistakes they reject (no fits)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from maskrank.errors import ConfigError
from maskrank.sweep.load import load_sweep
from maskrank.sweep.plan import plan
from maskrank.sweep.spec import format_value, short_names


@pytest.fixture
def base(tmp_path) -> str:
    path = tmp_path / "base.yaml"
    path.write_text("trainer: {max_epochs: 1}\n")
    return str(path)


def _load(tmp_path: Path, spec: dict):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return load_sweep(path)


def _overrides(spec, tmp_path, cell_index: int = 0, stage_index: int = 0) -> dict:
    _, runs = plan(spec, tmp_path / "out")[cell_index]
    return {key: value for key, value, _ in runs[stage_index].overrides}


def test_grid_zip_and_seeds_expand_in_a_stable_order(tmp_path, base):
    spec = _load(
        tmp_path,
        {
            "base": base,
            "grid": {"model.init_args.mask_ratio": [0.5, 0.75]},
            "zip": {"a.b.lr": [0.1, 0.2, 0.3], "a.c.lr": [1, 2, 3]},
            "seeds": [0, 1],
        },
    )
    cells = spec.cells()
    assert len(cells) == 2 * 3 * 2
    assert cells[0].id == "mask_ratio=0.5,b.lr=0.1,c.lr=1,seed=0"
    assert cells[1].params == {
        "model.init_args.mask_ratio": 0.5,
        "a.b.lr": 0.1,
        "a.c.lr": 1,
        "seed": 1,
    }
    assert cells[-1].id == "mask_ratio=0.75,b.lr=0.3,c.lr=3,seed=1"
    flags = _overrides(spec, tmp_path, 3)
    assert flags == {
        "model.init_args.mask_ratio": 0.5,
        "a.b.lr": 0.2,
        "a.c.lr": 2,
        "seed_everything": 1,
    }


def test_no_axes_is_one_default_cell(tmp_path, base):
    spec = _load(tmp_path, {"base": base, "overrides": {"trainer.max_epochs": 2}})
    (cell,) = spec.cells()
    assert cell.id == "default" and _overrides(spec, tmp_path) == {"trainer.max_epochs": 2}


def test_option_axis_applies_a_named_set_of_overrides(tmp_path, base):
    spec = _load(
        tmp_path,
        {
            "base": base,
            "vars": {"rate": 0.2},
            "grid": {
                "drop": {"none": {}, "attn": {"model.init_args.vit.attn_drop_rate": "${vars.rate}"}}
            },
        },
    )
    assert [c.id for c in spec.cells()] == ["drop=none", "drop=attn"]
    assert _overrides(spec, tmp_path, 0) == {}
    assert _overrides(spec, tmp_path, 1) == {"model.init_args.vit.attn_drop_rate": 0.2}


def test_stages_interpolate_an_earlier_checkpoint_and_scope_grid_keys(tmp_path, base):
    spec = _load(
        tmp_path,
        {
            "stages": {
                "pretrain": {"base": base},
                "finetune": {
                    "base": base,
                    "overrides": {
                        "model.init_args.encoder_ckpt": "${stages.pretrain.ckpt}",
                        "trainer.default_root_dir": "${cell.dir}/${cell.params.pretrain.model.init_args.mask_ratio}",
                    },
                },
            },
            "grid": {"pretrain.model.init_args.mask_ratio": [0.9]},
            "overrides": {"trainer.max_epochs": 2},
        },
    )
    out = (tmp_path / "out").resolve()
    assert _overrides(spec, tmp_path, 0, 0) == {
        "trainer.max_epochs": 2,
        "model.init_args.mask_ratio": 0.9,
    }
    assert _overrides(spec, tmp_path, 0, 1) == {
        "trainer.max_epochs": 2,
        "model.init_args.encoder_ckpt": str(out / "mask_ratio=0.9/pretrain/checkpoints/last.ckpt"),
        "trainer.default_root_dir": str(out / "mask_ratio=0.9") + "/0.9",
    }


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"grid": {"a.b": [1]}, "seed": [0]}, "unknown key 'seed'"),
        ({"grid": {"a.b": 0.5}}, "grid.a.b must be a non-empty list"),
        ({"grid": {"a.b": []}}, "non-empty list"),
        ({"zip": {"a.b": [1, 2], "a.c": [1]}}, "same length"),
        ({"grid": {"a.b": [1]}, "overrides": {"a.b": 2}}, "both swept"),
        ({"overrides": {"trainer.logger.init_args.save_dir": "x"}}, "set by the sweep"),
        ({"seeds": [0.5]}, "integers"),
        ({"grid": {"x": [1], "y": [1]}, "name": "a b"}, "name 'a b'"),
        ({"grid": {"a.b": [1, "1"]}}, "same id"),
    ],
)
def test_mistakes_name_the_key(tmp_path, base, spec, message):
    with pytest.raises(ConfigError, match=message) as err:
        spec = _load(tmp_path, {"base": base, **spec})
        plan(spec, tmp_path / "out")
    assert "sweep.yaml" in str(err.value) and "\n" not in str(err.value)


def test_a_stage_cannot_use_a_later_checkpoint(tmp_path, base):
    spec = _load(
        tmp_path,
        {
            "stages": {
                "a": {
                    "base": base,
                    "overrides": {"model.init_args.encoder_ckpt": "${stages.b.ckpt}"},
                },
                "b": {"base": base},
            }
        },
    )
    with pytest.raises(ConfigError, match="earlier stage"):
        plan(spec, tmp_path / "out")


def test_base_and_stage_shape_errors(tmp_path, base):
    with pytest.raises(ConfigError, match="either base"):
        _load(tmp_path, {"base": base, "stages": {"a": {"base": base}}})
    with pytest.raises(ConfigError, match="no config file"):
        _load(tmp_path, {"base": "nope.yaml"})
    with pytest.raises(ConfigError, match="not a valid stage name"):
        _load(tmp_path, {"stages": {"model": {"base": base}}})
    with pytest.raises(ConfigError, match="no sweep file"):
        load_sweep(tmp_path / "missing.yaml")


def test_ids_are_short_safe_and_unique():
    assert short_names(["a.x.lr", "b.x.lr", "model.depth"]) == {
        "a.x.lr": "a.x.lr",
        "b.x.lr": "b.x.lr",
        "model.depth": "depth",
    }
    assert format_value(0.25) == "0.25" and format_value(None) == "null"
    assert format_value("random/block") == "random-block"
    long = format_value({"class_path": "maskrank.callbacks.RepresentationRankMonitor"})
    assert len(long) <= 24 and "/" not in long


def test_set_changes_the_sweep_file_from_the_command_line(tmp_path, base):
    path = tmp_path / "sweep.yaml"
    spec = {
        "base": base,
        "vars": {"epochs": 5},
        "overrides": {"trainer.max_epochs": "${vars.epochs}"},
    }
    path.write_text(yaml.safe_dump(spec | {"seeds": [0, 1]}))
    changed = load_sweep(path, ["vars.epochs=2", "seeds=[7]"])
    assert [c.id for c in changed.cells()] == ["seed=7"]
    assert _overrides(changed, tmp_path) == {"trainer.max_epochs": 2, "seed_everything": 7}
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load_sweep(path, ["vars.epochs"])
