"""maskrank data optimize -> StreamingDataModule: samples, order, crops, probes and bad input."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from maskrank.cli import main
from maskrank.cli.data import data_command
from maskrank.data import StreamingDataModule
from maskrank.data.images.encoded import sample_seed, train_crop
from maskrank.data.stream.layout import read_meta
from maskrank.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from testkit.streaming import CLASSES, flat_image, identities, sorted_ids, write_image_folder

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def optimized(tmp_path_factory) -> tuple[Path, Path]:
    """(source ImageFolder, its optimized copy): 64 training and 16 held-out images."""
    base = tmp_path_factory.mktemp("stream")
    src = write_image_folder(base / "src")
    data_command(["optimize", "--src", str(src), "--out", str(base / "out"), "--workers", "2"])
    return src, base / "out"


def _epoch_ids(loader) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for images, batch_labels in loader:
        assert images.dtype == torch.uint8 and images.shape[1:] == (3, 32, 32)
        ids += identities(images)
        labels += batch_labels.tolist()
    return ids, labels


def test_optimize_writes_every_image_with_its_label_and_the_class_names(optimized):
    src, out = optimized
    meta = read_meta(str(out))
    assert meta.classes == CLASSES and meta.splits == {"train": 64, "val": 16}
    assert meta.source == str(src)
    assert not (out / ".maskrank-optimize.json").exists()  # finished


@pytest.mark.parametrize("augment", [False, True])
def test_every_training_image_once_per_epoch_in_a_new_order(optimized, augment):
    _, out = optimized
    dm = StreamingDataModule(str(out), image_size=32, batch_size=8, num_workers=0, augment=augment)
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert len(loader) == 8
    first, labels = _epoch_ids(loader)
    second, _ = _epoch_ids(loader)
    assert sorted(first) == sorted(second) == list(range(64))
    assert labels == [i % 4 for i in first]  # each image keeps its class
    assert first != second and first != sorted(first)  # shuffled, differently per epoch


def test_heldout_images_are_centre_crops_in_stored_order_and_probes_are_fixed(optimized):
    src, out = optimized
    dm = StreamingDataModule(str(out), image_size=32, batch_size=8, num_workers=0)
    dm.setup("validate")
    ids, labels = _epoch_ids(dm.val_dataloader())
    assert ids == sorted_ids(src, "val") and labels == [i % 4 for i in ids]
    probe, probe_labels = dm.probe_batch(5)
    again, _ = StreamingDataModule(str(out), image_size=32, batch_size=8).probe_batch(3)
    assert torch.equal(probe[:3], again)  # a smaller probe is a prefix of a larger one
    assert probe_labels.tolist() == [i % 4 for i in identities(probe)]
    normalized = dm.normalize(probe)
    assert normalized.dtype == torch.float32 and normalized.shape == probe.shape


def test_training_crops_come_from_the_original_image_and_depend_on_seed_epoch_and_index():
    pixels = torch.arange(48 * 40 * 3, dtype=torch.int64).remainder(251).to(torch.uint8)
    image = flat_image(0, 48, 40)
    image.putdata([tuple(p) for p in pixels.view(-1, 3).tolist()])
    data = io.BytesIO()
    image.save(data, format="PNG")
    crop = lambda seed: train_crop(data.getvalue(), seed, 16, (0.2, 1.0), True, 3, "x")  # noqa: E731
    state = torch.get_rng_state()
    a, b = crop(sample_seed(0, 1, 5)), crop(sample_seed(0, 1, 5))
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is untouched
    assert torch.equal(a, b) and a.shape == (3, 16, 16)
    others = [crop(sample_seed(0, 2, 5)), crop(sample_seed(0, 1, 6)), crop(sample_seed(1, 1, 5))]
    assert all(not torch.equal(a, other) for other in others)


def test_streaming_imports_no_lightning_package():
    code = "import sys, maskrank.data, maskrank.data.stream.optimize; print(sorted(m for m in sys.modules if m == 'lightning' or m.startswith('lightning.')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- bad input
def test_optimize_onto_a_non_empty_folder_needs_overwrite(optimized, tmp_path):
    src, _ = optimized
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError) as error:
        data_command(["optimize", "--src", str(src), "--out", str(out)])
    assert "--out" in str(error.value) and "--overwrite" in str(error.value)
    assert "\n" not in str(error.value) and (out / "notes.txt").exists()


def test_optimize_resumes_an_interrupted_conversion_and_overwrite_replaces(optimized, tmp_path):
    src, done = optimized
    out = tmp_path / "out"
    out.mkdir()
    # an interrupted run: train/ finished, val/ not started, no maskrank.json
    (out / ".maskrank-optimize.json").write_text(json.dumps({"source": str(src)}))
    subprocess.run(["cp", "-r", str(done / "train"), str(out / "train")], check=True)
    stamp = (out / "train" / "index.json").stat().st_mtime_ns
    data_command(["optimize", "--src", str(src), "--out", str(out)])
    assert (out / "train" / "index.json").stat().st_mtime_ns == stamp  # kept, not redone
    assert read_meta(str(out)).splits == {"train": 64, "val": 16}
    with pytest.raises(ConfigError, match="already|optimized dataset"):
        data_command(["optimize", "--src", str(src), "--out", str(out)])
    data_command(["optimize", "--src", str(src), "--out", str(out), "--overwrite"])
    assert (out / "train" / "index.json").stat().st_mtime_ns != stamp


@pytest.mark.parametrize("root", ["missing", "local:{tmp}/missing"])
def test_a_streaming_root_that_does_not_exist_is_one_line(tmp_path, root):
    root = root.format(tmp=tmp_path) if "{tmp}" in root else str(tmp_path / root)
    with pytest.raises(DatasetNotFoundError) as error:
        StreamingDataModule(root)
    message = str(error.value)
    assert root in message and "maskrank data optimize" in message and "\n" not in message


@pytest.mark.parametrize("workers", [0, 1])
def test_a_corrupt_sample_is_named_by_shard_and_index(tmp_path, workers):
    src = write_image_folder(tmp_path / "src", train=16, val=4)
    victim = sorted((src / "train").glob("*/*.png"))[5]
    victim.write_bytes(b"not an image at all")
    data_command(["optimize", "--src", str(src), "--out", str(tmp_path / "out")])
    dm = StreamingDataModule(
        str(tmp_path / "out"), image_size=32, batch_size=4, num_workers=workers
    )
    dm.setup("fit")
    with pytest.raises(CorruptFileError) as error:  # also when raised in a loader worker
        list(dm.train_dataloader())
    message = str(error.value)
    assert "sample 5 in shard chunk-0-0.bin" in message and "train" in message
    assert "\n" not in message


def test_batch_larger_than_the_data_and_a_model_with_another_head_are_one_line(optimized):
    _, out = optimized
    dm = StreamingDataModule(str(out), image_size=32, batch_size=128)
    with pytest.raises(ConfigError, match="--data.batch_size 128"):
        dm.setup("fit")

    class Trainer:  # what check_model_classes reads from a trainer
        world_size = 1
        lightning_module = type("M", (), {"hparams": {"num_classes": 10}})()

    dm = StreamingDataModule(str(out), image_size=32, batch_size=8)
    dm.trainer = Trainer()  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="has 4 classes but the model's head has 10"):
        dm.setup("fit")


def test_bad_streaming_input_through_the_cli_is_one_line(tmp_path, capsys):
    fit = ["fit", "--model", "MAEPretraining", "--data", "StreamingDataModule"]
    with pytest.raises(SystemExit) as exit_:
        main([*fit, f"--data.root={tmp_path / 'nowhere'}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error: --data.root"), err
    assert "does not exist" in err[0]


def test_a_url_root_streams_through_the_cache_and_serves_probes(optimized, tmp_path):
    src, out = optimized
    dm = StreamingDataModule(
        f"local:{out}", image_size=32, batch_size=8, num_workers=0, cache_dir=str(tmp_path / "c")
    )
    dm.setup("fit")
    ids, _ = _epoch_ids(dm.train_dataloader())
    assert sorted(ids) == list(range(64))
    probe, labels = dm.probe_batch(4)
    local, _ = StreamingDataModule(str(out), image_size=32).probe_batch(4)
    assert torch.equal(probe, local) and labels.tolist() == [i % 4 for i in identities(probe)]
