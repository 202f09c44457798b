"""The three monitors declared in YAML under trainer.callbacks write their tags to TensorBoard."""

from __future__ import annotations

from pathlib import Path

import yaml

from maskrank.cli import main
from testkit.events import event_tags
from testkit.tiny import TINY_DATA, TINY_VIT

CALLBACKS = [
    {
        "class_path": "maskrank.callbacks.RepresentationRankMonitor",
        "init_args": {"every_n_epochs": 1, "token_matrix": True},
    },
    {
        "class_path": "maskrank.callbacks.WeightSpectrumMonitor",
        "init_args": {"every_n_steps": 2, "subspace_k": 4, "all_metrics": True},
    },
    {
        "class_path": "maskrank.callbacks.DropoutPenaltyMonitor",
        "init_args": {"probe_size": 16, "all_metrics": True},
    },
]


def _config(tmp_path: Path) -> Path:
    cfg = {
        "trainer": {
            "max_epochs": 1,
            "log_every_n_steps": 1,
            "enable_model_summary": False,
            "enable_progress_bar": False,
            "num_sanity_val_steps": 0,
            "logger": {
                "class_path": "pytorch_lightning.loggers.TensorBoardLogger",
                "init_args": {"save_dir": str(tmp_path / "runs"), "name": "exp"},
            },
            "callbacks": CALLBACKS,
        },
        "model": {
            "class_path": "maskrank.tasks.MAEPretraining",
            "init_args": {
                "vit": {**TINY_VIT, "proj_drop_rate": 0.1},
                "decoder_dim": 32,
                "decoder_depth": 1,
                "decoder_heads": 2,
            },
        },
        "data": TINY_DATA,
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_yaml_callbacks_write_scalars_histograms_and_images(tmp_path):
    main(["fit", "-c", str(_config(tmp_path))])
    run = tmp_path / "runs" / "exp" / "version_0"
    scalars = event_tags(run)
    expected = {
        # RepresentationRankMonitor
        "rank/final_cls/effective_rank",
        "rank/final_cls/numerical_rank_1e-3",
        "rank/final_cls/energy_rank_0.99",
        "rank/final_mean/alpha_req",
        "rank/final_mean/participation_ratio",
        "rank/block01_cls/effective_rank",
        "rank/block00_mean/stable_rank",
        "rank/tokens/effective_rank",
        # WeightSpectrumMonitor
        "weights/enc.b00.qkv/effective_rank",
        "weights/dec.b00.fc2/spectral_norm",
        "updates/enc.b01.fc1/energy_rank_0.9",
        "updates/enc.b01.proj/moved_singular_values",
        "updates/enc.b01.proj/subspace_similarity_top4",
        "updates/enc.qkv_mean/energy_rank_0.9",
        "grads/enc.b00.fc2/effective_rank",
        "grads/dec.b00.qkv/norm",
        # DropoutPenaltyMonitor
        "dropout/enc.b00.mlp/penalty",
        "dropout/enc.b01.mlp/penalty_per_lambda",
        "dropout/dec.b00.mlp/equalization",
        "dropout/enc.mlp_mean/penalty",
    }
    assert expected <= scalars, sorted(expected - scalars)
    assert not any("block00_cls/alpha_req" in t for t in scalars)  # per block: modest by default
    assert not any("patch_embed" in t or "decoder_pred" in t for t in scalars)
    assert {"spectrum/final_cls", "spectrum/final_mean", "spectrum/tokens"} <= event_tags(
        run, kind="histograms"
    )
    assert "spectrum_plot/representation" in event_tags(run, kind="images")
