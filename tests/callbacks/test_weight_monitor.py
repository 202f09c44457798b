"""WeightSpectrumMonitor: which weights, the metrics, the gradient floor, W0 across a checkpoint."""

from __future__ import annotations

import pytest
import torch

from maskrank.callbacks import WeightSpectrumMonitor
from maskrank.callbacks._common import short_module_name
from maskrank.callbacks._weight_spectra import Group, Snapshot, batched_gram_spectra, compute
from maskrank.metrics import (
    singular_values,
    spectrum_metrics,
    subspace_similarity,
    top_singular_vectors,
    update_spectrum,
)
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier
from testkit.events import event_tags
from testkit.tiny import TINY_VIT, tiny_data, tiny_mae


def _expected(prefix: str, depth: int) -> set[str]:
    leaves = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    return {f"{prefix}.{b}.{leaf}.weight" for b in range(depth) for leaf in leaves}


def test_pattern_matches_exactly_block_linears_of_encoder_and_decoder():
    monitor = WeightSpectrumMonitor()
    mae = tiny_mae()
    expected = _expected("mae.encoder.blocks", 2) | _expected("mae.decoder_blocks", 1)
    assert set(monitor.matched_parameters(mae)) == expected
    clf = ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4, img_size=32)
    assert set(monitor.matched_parameters(clf)) == _expected("model.blocks", 2)
    # not patch_embed.proj, decoder_embed/pred or the head, all 2-D weights too
    assert "model.head.weight" in dict(clf.named_parameters())


def test_short_names():
    assert short_module_name("mae.encoder.blocks.3.attn.qkv.weight") == "enc.b03.qkv"
    assert short_module_name("model.blocks.11.mlp.fc2.weight") == "enc.b11.fc2"
    assert short_module_name("mae.decoder_blocks.1.mlp.fc1.weight") == "dec.b01.fc1"
    assert short_module_name("mae.encoder.patch_embed.proj.weight") == "enc.patch_embed.proj"


def _snapshot(step, w, g=None, k0="a.blocks.0.attn.qkv.weight"):
    grads, index = (None, []) if g is None else (g[None], [0])
    return Snapshot(step, [Group([k0], [short_module_name(k0)], w[None], grads, index)])


def test_metrics_match_the_metric_functions():
    gen = torch.Generator().manual_seed(0)
    w0 = torch.randn(24, 8, generator=gen, dtype=torch.float64)
    lowrank = torch.randn(24, 3, generator=gen, dtype=torch.float64) @ torch.randn(
        3, 8, generator=gen, dtype=torch.float64
    )
    w1, w2 = w0 + 0.1 * lowrank, w0 + 0.1 * lowrank + 0.02 * torch.randn(24, 8, generator=gen)
    grad = torch.randn(24, 8, generator=gen, dtype=torch.float64)
    key, name = "a.blocks.0.attn.qkv.weight", "enc.b00.qkv"
    kw = dict(subspace_k=2, grad_norm_floor=0.0, moved_rtol=1e-2, per_module=True, summaries=True)
    kw["all_metrics"] = True
    sv0: dict = {}
    first, bases, new_sv0 = compute(_snapshot(1, w1, grad), {key: w0}, sv0, {}, **kw)
    sv0.update(new_sv0)
    assert torch.allclose(new_sv0[key], singular_values(w0))
    ref_w, ref_d = spectrum_metrics(w1), update_spectrum(w1, w0)
    for metric in ("effective_rank", "stable_rank", "spectral_norm", "nuclear_norm"):
        assert first[f"weights/{name}/{metric}"] == pytest.approx(ref_w[metric], rel=1e-9)
    for metric in (
        "effective_rank",
        "energy_rank_0.9",
        "energy_rank_0.99",
        "moved_singular_values",
    ):
        assert first[f"updates/{name}/{metric}"] == pytest.approx(ref_d[metric], rel=1e-9)
    ref_g = spectrum_metrics(grad)
    assert first[f"grads/{name}/effective_rank"] == pytest.approx(ref_g["effective_rank"])
    assert first[f"grads/{name}/norm"] == pytest.approx(float(grad.norm()))
    assert f"updates/{name}/subspace_similarity_top2" not in first  # nothing to compare yet
    assert first["updates/enc.qkv_mean/effective_rank"] == first[f"updates/{name}/effective_rank"]
    second, _, _ = compute(_snapshot(2, w2), {key: w0}, sv0, bases, **kw)
    expected = subspace_similarity(
        top_singular_vectors(w2 - w0, 2), top_singular_vectors(w1 - w0, 2)
    )
    assert second[f"updates/{name}/subspace_similarity_top2"] == pytest.approx(expected, abs=1e-9)
    assert not any(t.startswith("grads/") for t in second)  # no gradient that step


def test_batched_gram_spectra_match_singular_values():
    gen = torch.Generator().manual_seed(1)
    for shape in ((3, 20, 6), (2, 6, 20), (2, 7, 7)):
        a = torch.randn(*shape, generator=gen, dtype=torch.float64)
        sv, u = batched_gram_spectra(a, k=3)
        for i in range(shape[0]):
            assert torch.allclose(sv[i], singular_values(a[i], method="svd"), rtol=1e-10)
            ref = top_singular_vectors(a[i], 3)
            assert subspace_similarity(u[i], ref) == pytest.approx(1.0, abs=1e-10)


def test_gradient_metrics_skipped_below_the_floor():
    w0 = torch.randn(16, 8, dtype=torch.float64)
    grad = 1e-7 * torch.randn(16, 8, dtype=torch.float64)  # ‖G‖ ~ 1e-6
    kw = dict(subspace_k=2, moved_rtol=1e-2, per_module=True, summaries=True, all_metrics=True)
    snap = _snapshot(1, w0 + 1.0, grad)
    low, _, _ = compute(snap, {snap.groups[0].keys[0]: w0}, {}, {}, grad_norm_floor=1e-3, **kw)
    assert "grads/enc.b00.qkv/norm" in low
    assert not any(t.endswith(("effective_rank", "stable_rank")) for t in low if "grads/" in t)
    high, _, _ = compute(snap, {snap.groups[0].keys[0]: w0}, {}, {}, grad_norm_floor=0.0, **kw)
    assert "grads/enc.b00.qkv/effective_rank" in high


def test_floor_in_a_fit(make_trainer):
    monitor = WeightSpectrumMonitor(every_n_steps=2, grad_norm_floor=1e9, all_metrics=True)
    make_trainer([monitor], limit_val_batches=0).fit(tiny_mae(), datamodule=tiny_data())
    tags = monitor.last_metrics
    assert "grads/enc.b00.qkv/norm" in tags and "weights/enc.b00.qkv/effective_rank" in tags
    assert not any(t.startswith("grads/") and t.endswith("effective_rank") for t in tags)


def test_w0_survives_a_checkpoint_round_trip(make_trainer, tmp_path):
    model = tiny_mae()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    monitor = WeightSpectrumMonitor(every_n_steps=2)
    trainer = make_trainer([monitor], limit_val_batches=0)
    trainer.fit(model, datamodule=tiny_data())
    path = tmp_path / "mid.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)["callbacks"]["WeightSpectrumMonitor"]
    key = "mae.encoder.blocks.0.attn.qkv.weight"
    assert torch.equal(state["w0"][key], start[key])
    assert not torch.equal(model.state_dict()[key], start[key])  # it did train
    assert set(state["bases"]) == set(state["w0"])
    # resume with a fresh callback: it measures against the original W0, not the checkpoint's
    resumed = WeightSpectrumMonitor(every_n_steps=2)
    trainer = make_trainer([resumed], limit_val_batches=0, max_epochs=2)
    trainer.fit(tiny_mae(seed=1), datamodule=tiny_data(), ckpt_path=path)
    assert torch.equal(resumed._w0[key], start[key])
    assert "updates/enc.b00.qkv/subspace_similarity_top8" in resumed.last_metrics
    # and a plain state_dict round trip
    copy = WeightSpectrumMonitor()
    copy.load_state_dict(resumed.state_dict())
    assert torch.equal(copy._w0[key], start[key])


def test_background_thread_logs_the_same_values(make_trainer):
    results = []
    for background in (False, True):
        monitor = WeightSpectrumMonitor(every_n_steps=2, background=background)
        make_trainer([monitor], limit_val_batches=0).fit(tiny_mae(), datamodule=tiny_data())
        results.append(monitor.last_metrics)
    assert results[0] == results[1]


_TYPES = [(w, leaf) for w in ("enc", "dec") for leaf in ("qkv", "proj", "fc1", "fc2")]


@pytest.mark.parametrize("per_module", [True, False])
def test_default_series_are_where_the_update_goes_and_planned_exactly(
    make_trainer, tmp_path, per_module
):
    monitor = WeightSpectrumMonitor(every_n_steps=2, per_module=per_module)
    model = tiny_mae()
    make_trainer([monitor], limit_val_batches=0).fit(model, datamodule=tiny_data())
    (run,) = (tmp_path / "runs" / "exp").glob("version_*")
    logged = {t for t in event_tags(run) if t.startswith(("weights/", "updates/", "grads/"))}
    assert logged == monitor.planned_tags(model, measurements=2)  # 4 steps: 2 measurements
    kinds = {"updates/enc.b00.qkv/": per_module, "updates/enc.qkv_mean/": not per_module}
    for prefix, present in kinds.items():
        leaves = {t.removeprefix(prefix) for t in logged if t.startswith(prefix)}
        expected = {"effective_rank", "moved_singular_values", "subspace_similarity_top8"}
        assert leaves == (expected if present else set())
    weights = {t for t in logged if t.startswith("weights/")}
    assert weights == {f"weights/{w}.{leaf}_mean/effective_rank" for w, leaf in _TYPES}
    assert not any(t.startswith("grads/") for t in logged)  # gradient spectra: all_metrics


def test_all_metrics_adds_norms_energy_ranks_and_gradients(make_trainer):
    monitor = WeightSpectrumMonitor(every_n_steps=2, all_metrics=True)
    model = tiny_mae()
    make_trainer([monitor], limit_val_batches=0).fit(model, datamodule=tiny_data())
    tags = set(monitor.last_metrics)
    assert {
        "weights/enc.b00.qkv/spectral_norm",
        "updates/enc.b01.fc1/energy_rank_0.99",
        "grads/dec.b00.fc2/effective_rank",
        "grads/enc.fc1_mean/norm",
    } <= tags
    assert tags == monitor.planned_tags(model, measurements=2)  # every gradient above the floor
