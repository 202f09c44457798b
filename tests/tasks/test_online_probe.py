"""Online linear probe and uniformity term of MAEPretraining (SCIENCE.md §9)."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from maskrank.errors import ConfigError
from maskrank.metrics import uniformity_loss
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier, MAEPretraining
from maskrank.tasks.online_probe import OnlineLinearProbe, RunningWhitening
from testkit.tiny import TINY_VIT, tiny_data, tiny_mae


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny models: one intra-op thread is faster on a busy machine."""


def _mae(**kw) -> MAEPretraining:
    return tiny_mae(proj_drop_rate=0.1, **kw)


def _fit(tmp_path, model: MAEPretraining, epochs: int = 2) -> pl.Trainer:
    pl.seed_everything(0)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True,
    )
    trainer.fit(model, datamodule=tiny_data())
    return trainer


DESIGNS = [("unmasked", 1), ("unmasked", 3), ("visible", 1)]


@pytest.fixture(scope="module")
def plain_weights(tmp_path_factory) -> dict[str, torch.Tensor]:
    """The weights of the 2-epoch fit without a probe, the reference of every design."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as the probed fits (single_thread): same kernels, same rounding
    try:
        plain = _mae()
        _fit(tmp_path_factory.mktemp("plain"), plain)
    finally:
        torch.set_num_threads(previous)
    return plain.state_dict()


@pytest.mark.parametrize(("probe_input", "every"), DESIGNS)
def test_online_probe_leaves_the_encoder_bit_identical(tmp_path, plain_weights, probe_input, every):
    # proj_drop_rate 0.1: the probe's extra pass must draw no dropout masks (eval mode)
    probed = _mae(
        online_probe=True,
        num_classes=4,
        probe_lr=0.05,
        probe_input=probe_input,
        probe_every_n_steps=every,
    )
    before = {k: v.clone() for k, v in probed.online_probe.state_dict().items()}
    trainer = _fit(tmp_path, probed)
    reference = plain_weights
    weights = probed.state_dict()
    assert set(weights) - set(reference) == {f"online_probe.{k}" for k in before}
    for key, value in reference.items():  # encoder, decoder and mask token alike
        assert torch.equal(value, weights[key]), key
    # ... while the probe itself trained and reported an accuracy
    assert not torch.equal(before["linear.weight"], probed.online_probe.linear.weight)
    assert 0.0 <= float(trainer.callback_metrics["eval/online_linear_acc"]) <= 1.0
    assert "train/online_probe_loss" in trainer.callback_metrics


def test_probe_has_its_own_param_group_without_weight_decay(tmp_path):
    model = _mae(online_probe=True, num_classes=4, probe_lr=0.02, weight_decay=0.05)
    trainer = _fit(tmp_path, model, epochs=1)
    groups = trainer.optimizers[0].param_groups
    probe_ids = {id(p) for p in model.online_probe.parameters()}
    probe_groups = [g for g in groups if {id(p) for p in g["params"]} & probe_ids]
    assert len(probe_groups) == 1 and {id(p) for p in probe_groups[0]["params"]} == probe_ids
    assert probe_groups[0]["weight_decay"] == 0.0 and probe_groups[0]["initial_lr"] == 0.02
    others = {id(p) for g in groups if g is not probe_groups[0] for p in g["params"]}
    assert others == {id(p) for p in model.mae.parameters() if p.requires_grad}


def _colour_classes(n: int, seed: int) -> DataLoader:
    """4 classes told apart by their mean colour (linearly separable), plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    colours = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0], [-1.0, -1.0, -1.0]])
    images = colours[labels][:, :, None, None] + 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    return DataLoader(TensorDataset(images, labels), batch_size=16, shuffle=False)


@pytest.mark.parametrize(("probe_input", "every"), DESIGNS)
def test_online_probe_learns_separable_classes(tmp_path, probe_input, every):
    model = _mae(
        online_probe=True,
        num_classes=4,
        probe_lr=0.05,
        probe_feature="mean",
        probe_input=probe_input,
        probe_every_n_steps=every,
    )
    pl.seed_everything(0)
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, _colour_classes(64, 0), _colour_classes(32, 1))
    # chance is 0.25 (4 balanced classes)
    assert float(trainer.callback_metrics["eval/online_linear_acc"]) >= 0.9


def test_uniformity_term_is_added_to_the_objective():
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    labels = torch.zeros(8, dtype=torch.long)
    plain, weighted = _mae(), _mae(uniformity_weight=0.5)
    weighted.load_state_dict(plain.state_dict())
    losses = {}
    for name, model in (("plain", plain), ("weighted", weighted)):
        torch.manual_seed(1)
        with pytest.warns(UserWarning, match="self.log"):  # no trainer attached here
            losses[name] = model.training_step((images, labels), 0)
    torch.manual_seed(1)
    _, latent = plain.mae.training_loss_and_latent(images, 0.75)
    expected = losses["plain"] + 0.5 * uniformity_loss(latent[:, 0])
    assert losses["weighted"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_uniformity_logged_during_fit(tmp_path):
    trainer = _fit(tmp_path, _mae(uniformity_weight=0.1, uniformity_feature="mean"), epochs=1)
    value = float(trainer.callback_metrics["train/uniformity"])
    assert -4.0 <= value <= 0.0  # log mean exp(-2 d²), d² in [0, 4]


def test_encoder_of_a_probed_run_loads_into_the_classifier(tmp_path):
    model = _mae(online_probe=True, num_classes=4)
    path = tmp_path / "mae.ckpt"
    torch.save({"state_dict": model.state_dict()}, path)
    clf = ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4, img_size=32, encoder_ckpt=path)
    for key, value in model.encoder.state_dict().items():
        if not key.startswith("head"):
            assert torch.equal(value, clf.model.state_dict()[key]), key


def test_bad_settings_name_the_flag():
    with pytest.raises(ConfigError, match="model.init_args.uniformity_weight"):
        _mae(uniformity_weight=-0.1)
    with pytest.raises(ConfigError, match="model.init_args.online_probe.*class labels"):
        _mae(online_probe=True)
    with pytest.raises(ConfigError, match="model.init_args.probe_lr"):
        _mae(online_probe=True, num_classes=4, probe_lr=0.0)
    with pytest.raises(ConfigError, match="model.init_args.probe_input"):
        _mae(online_probe=True, num_classes=4, probe_input="masked")
    with pytest.raises(ConfigError, match="model.init_args.probe_every_n_steps"):
        _mae(online_probe=True, num_classes=4, probe_every_n_steps=0)


def _anisotropic_classes(
    n: int, seed: int, loud: float = 10.0, quiet: float = 0.05
) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 32) features, 4 classes: 4 loud nuisance directions (std ``loud``) and 28 quiet ones
    (std about ``quiet``) holding the class means, all mixed by one rotation, so every coordinate
    is loud and per-coordinate standardisation leaves the classes small (an MAE CLS token's
    shape)."""
    q = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(7)))[0]
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 4
    means = torch.randn(4, 28, generator=torch.Generator().manual_seed(8)) * quiet
    quiet_part = means[labels] + quiet * torch.randn(n, 28, generator=g)
    loud_part = loud * torch.randn(n, 4, generator=g)
    return torch.cat([loud_part, quiet_part], dim=1) @ q.T, labels


def _train_probe(probe: torch.nn.Module, steps: int = 150) -> float:
    """AdamW at lr 1e-2 (the default ``probe_lr``), batch 64; held-out accuracy."""
    x, y = _anisotropic_classes(64 * steps, 0)
    test_x, test_y = _anisotropic_classes(1024, 1)
    optimizer = torch.optim.AdamW(probe.parameters(), lr=1e-2, weight_decay=0.0)
    probe.train()
    for i in range(steps):
        batch = slice(64 * i, 64 * (i + 1))
        loss = torch.nn.functional.cross_entropy(probe(x[batch]), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    probe.eval()
    with torch.no_grad():
        return float((probe(test_x).argmax(dim=1) == test_y).float().mean())


def test_probe_learns_classes_in_quiet_directions_of_anisotropic_features():
    # the quickstart's failure in miniature: classes in directions of small variance. Whitening
    # makes them as loud as the rest, so a few epochs of AdamW find them (chance: 0.25).
    assert _train_probe(OnlineLinearProbe(32, 4)) >= 0.9


def test_whitening_equalises_the_variance_of_every_direction():
    whiten = RunningWhitening(32, eps=0.0)  # no ridge: the map itself, not its safety margin
    features = {"loud": 1.0, "quiet": 0.07}  # variances 1 and 0.01, mixed: every coordinate ~0.13
    whiten.train()
    for batch in _anisotropic_classes(64 * 100, 0, **features)[0].split(64):
        whiten(batch)
    whiten.eval()
    out = whiten(_anisotropic_classes(4096, 1, **features)[0])
    eigenvalues = torch.linalg.eigvalsh(torch.cov(out.T.double()))
    # raw variances span 100x (per-coordinate standardisation keeps that); whitened ones lie
    # within 4x (the shrinkage to the diagonal, 32 / (1216 + 32), keeps the quiet ones below 1)
    assert eigenvalues.max() < 1.2 and eigenvalues.min() > 0.3, eigenvalues
    assert out.mean(dim=0).abs().max() < 0.1


def test_running_estimates_average_then_forget_with_the_effective_sample_count():
    whiten = RunningWhitening(8, momentum=0.1)
    assert float(whiten.shrinkage()) == 1.0  # no samples: only the diagonal (standardisation)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(16, 8, generator=g) * (k + 1) for k in range(40)]
    for k, batch in enumerate(batches[:10]):
        whiten(batch)
        seen = torch.cat(batches[: k + 1])
        # the first 1 / momentum batches: the plain average, n = every sample so far
        assert torch.allclose(whiten.running_mean, seen.mean(0), atol=1e-5)
        assert float(whiten.shrinkage()) == pytest.approx(8 / (16 * (k + 1) + 8), rel=1e-5)
    for batch in batches[10:]:
        whiten(batch)
    # then exponential: n tends to B (2 - m) / m = 304 samples
    assert float(whiten.shrinkage()) == pytest.approx(8 / (304 + 8), rel=1e-2)
    assert torch.allclose(whiten.running_cov.diagonal(), torch.full((8,), 1600.0), rtol=0.5)


def test_a_batchnorm_probe_state_loads_as_the_same_standardisation():
    norm = torch.nn.BatchNorm1d(8, affine=False)
    norm.train()
    for _ in range(20):
        norm(torch.randn(32, 8) * torch.arange(1.0, 9.0) + 3)
    whiten = RunningWhitening(8, eps=0.0)
    whiten.load_state_dict(norm.state_dict())
    whiten.eval(), norm.eval()
    x = torch.randn(16, 8) * 4
    assert torch.allclose(whiten(x), norm(x), rtol=1e-4, atol=1e-4)
