"""The probe set in TensorBoard's projector, and the intrinsic-rank reference in the spectrum plot."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig
from torch.utils.tensorboard import SummaryWriter

from maskrank.callbacks import RepresentationRankMonitor
from maskrank.callbacks._common import eval_mode
from maskrank.callbacks.embedding import (
    THUMBNAIL,
    add_embeddings,
    compact,
    embedding_points,
    thumbnails,
)
from maskrank.callbacks.representation import spectrum_figure
from maskrank.cli.lightning import build_cli
from maskrank.errors import ConfigError
from testkit.resume import write_config
from testkit.tiny import tiny_data, tiny_mae, tiny_mae_config


def _projector(run: Path) -> ProjectorConfig:
    return text_format.Parse((run / "projector_config.pbtxt").read_text(), ProjectorConfig())


def _tsv(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A 1-epoch CLI fit of the tiny MAE with the rank monitor (its 32 held-out images are the
    probe set) and the CLI object, for its model and datamodule."""
    tmp = tmp_path_factory.mktemp("fit")
    monitor = {
        "class_path": "maskrank.callbacks.RepresentationRankMonitor",
        "init_args": {"every_n_epochs": 1, "per_block": False, "plot": False},
    }
    cfg = write_config(
        tmp / "cfg.yaml", tmp / "runs", tiny_mae_config(), max_epochs=1, callbacks=[monitor]
    )
    cli = build_cli(["fit", "-c", str(cfg), "--threads", "1"])
    return cli, tmp / "runs" / "exp" / "version_0"


def test_fit_ends_with_the_probe_set_in_the_projector(fitted):
    cli, run = fitted
    step = cli.trainer.global_step
    entries = {e.tensor_name: e for e in _projector(run).embeddings}
    assert set(entries) == {f"probe_final_cls:{step:05d}", f"probe_final_mean:{step:05d}"}

    data = cli.datamodule
    raw, labels = data.probe_batch(10_000)  # the whole held-out split: 32 images
    model = cli.model
    with eval_mode(model), torch.no_grad():
        features = model.encode(data.normalize(raw))
    for where, expected in (("final_cls", features.cls), ("final_mean", features.patch_mean)):
        entry = entries[f"probe_{where}:{step:05d}"]
        rows = np.array(_tsv(run / entry.tensor_path), dtype=np.float64)  # (N, D)
        peak = float(expected.abs().max())
        # the final weights' features of the probe images, in probe order (4 significant digits)
        np.testing.assert_allclose(rows, expected.double().numpy(), atol=1e-3 * peak, rtol=0)
        header, *meta = _tsv(run / entry.metadata_path)
        assert header == ["label", "class"]
        assert [int(label) for label, _ in meta] == labels.tolist()
        assert [name for _, name in meta] == [data.classes[i] for i in labels.tolist()]
        sprite = Image.open(run / entry.sprite.image_path)
        side = math.ceil(math.sqrt(len(meta))) * 32  # 32-pixel images: no shrinking
        assert sprite.size == (side, side)
        assert list(entry.sprite.single_image_dim) == [32, 32]


def test_every_n_epochs_adds_embeddings_and_the_default_only_the_last(make_trainer, tmp_path):
    def steps(monitor):
        trainer = make_trainer([monitor], max_epochs=3)
        trainer.fit(tiny_mae(), datamodule=tiny_data())
        run = Path(trainer.log_dir)
        names = [e.tensor_name for e in _projector(run).embeddings]
        return sorted({int(n.split(":")[1]) for n in names})

    assert steps(RepresentationRankMonitor(every_n_epochs=1, per_block=False)) == [12]
    every = RepresentationRankMonitor(every_n_epochs=1, per_block=False, embedding_every_n_epochs=2)
    assert steps(every) == [8, 12]  # after epoch 2, and the last measurement


def test_embedding_off_writes_no_projector_files(make_trainer):
    monitor = RepresentationRankMonitor(every_n_epochs=1, per_block=False, embedding=False)
    trainer = make_trainer([monitor])
    trainer.fit(tiny_mae(), datamodule=tiny_data())
    run = Path(trainer.log_dir)
    assert "rank/final_cls/effective_rank" in monitor.last_metrics
    assert not (run / "projector_config.pbtxt").exists()
    assert not any(p.is_dir() and p.name.isdigit() for p in run.iterdir())


def test_a_second_process_keeps_the_first_ones_entries(tmp_path):
    features = {"final_cls": torch.randn(5, 3), "final_mean": torch.randn(5, 3)}
    images = torch.randint(0, 256, (5, 3, 8, 8), dtype=torch.uint8)
    points = embedding_points(features, torch.tensor([0, 1, 2, 1, 0]), ["a", "b", "c"], images)
    for step in (4, 8):  # a fit, then the fit resumed in a new process (a new SummaryWriter)
        writer = SummaryWriter(str(tmp_path))
        add_embeddings(writer, points, step)
        writer.close()
    entries = _projector(tmp_path).embeddings
    assert [e.tensor_name for e in entries] == [
        "probe_final_cls:00004",
        "probe_final_mean:00004",
        "probe_final_cls:00008",
        "probe_final_mean:00008",
    ]
    for entry in entries:  # every entry's files exist; both tags share one sprite per step
        assert (tmp_path / entry.tensor_path).is_file()
        assert (tmp_path / entry.sprite.image_path).is_file()
        assert entry.sprite.image_path.startswith(entry.tensor_name[-5:] + "/probe_final_cls/")


def test_points_carry_labels_class_names_and_tsv_safe_names():
    features = {"final_cls": torch.zeros(3, 2), "final_mean": torch.zeros(3, 2)}
    images = torch.zeros(3, 1, 4, 4, dtype=torch.uint8)
    points = embedding_points(features, torch.tensor([2, 0, 5]), ["cat", "dog\tx", "a\nb"], images)
    assert points.metadata == [["2", "a b"], ["0", "cat"], ["5", "5"]]  # 5: no name, its number


def test_compact_keeps_four_significant_digits_of_the_largest_value():
    x = torch.tensor([[123.456, -0.0123456], [1e-6, 99.99]])
    out = compact(x)
    np.testing.assert_allclose(out, x.double().numpy(), atol=0.05 + 1e-12, rtol=0)
    assert [str(v) for v in out.ravel()] == ["123.5", "-0.0", "0.0", "100.0"]


def test_thumbnails_keep_the_image_and_shrink_large_ones():
    flat = torch.full((2, 3, 64, 64), 51, dtype=torch.uint8)  # 51 / 255 = 0.2 everywhere
    small = thumbnails(flat)
    assert max(small.shape[-2:]) <= THUMBNAIL
    assert torch.allclose(small, torch.full_like(small, 0.2))
    four = torch.randint(0, 256, (2, 4, 8, 8), dtype=torch.uint8)  # no sprite for 4 channels
    grey = thumbnails(four)
    assert torch.allclose(grey[:, 0], four.float().mean(dim=1) / 255)


def test_embedding_schedule_must_follow_the_measurements():
    with pytest.raises(
        ConfigError, match="embedding_every_n_epochs = 3 must be a positive multiple"
    ):
        RepresentationRankMonitor(every_n_epochs=2, embedding_every_n_epochs=3)
    with pytest.raises(ConfigError, match="embedding_points = 0"):
        RepresentationRankMonitor(embedding_points=0)


def test_spectrum_figure_marks_the_intrinsic_rank():
    sv = torch.logspace(0, -3, 64)
    metrics = {"rank/block00_cls/effective_rank": 5.0, "rank/block01_cls/effective_rank": 7.0}
    left, right = spectrum_figure({"final_cls": sv}, metrics, intrinsic_rank=40).axes
    (vertical,) = [ln for ln in left.get_lines() if "rank 40" in ln.get_label()]
    assert list(vertical.get_xdata()) == [40, 40]  # at k = 40, across the panel
    (horizontal,) = [ln for ln in right.get_lines() if "rank 40" in ln.get_label()]
    assert list(horizontal.get_ydata()) == [40, 40]
    assert right.get_ylim()[1] >= 40  # in view although the curves stay below
    plain_left, plain_right = spectrum_figure({"final_cls": sv}, metrics).axes
    assert not any(
        "rank 40" in ln.get_label() for ax in (plain_left, plain_right) for ln in ax.get_lines()
    )


def test_a_standalone_validation_writes_its_embedding(make_trainer):
    trainer = make_trainer([RepresentationRankMonitor(per_block=False)])
    trainer.validate(tiny_mae(), datamodule=tiny_data(), verbose=False)
    names = [e.tensor_name for e in _projector(Path(trainer.log_dir)).embeddings]
    assert names == ["probe_final_cls:00000", "probe_final_mean:00000"]
