"""LoRASpectrumMonitor: exact spectra of (α/r) B A from the factors, logged while training."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from maskrank.callbacks.lora import LoRASpectrumMonitor, lora_singular_values
from maskrank.data import SyntheticLowRank
from maskrank.metrics import effective_rank, singular_values
from maskrank.models.lora import LoRASpec, apply_lora, delta_weight, lora_layers
from maskrank.tasks import ImageClassifier
from testkit.events import event_tags
from testkit.tiny import TINY_VIT


def test_factor_spectrum_equals_the_dense_update(tiny_spec):
    model = tiny_spec.build(img_size=32, num_classes=4)
    layers = apply_lora(model, LoRASpec(r=5, alpha=3.0))
    view = layers["blocks.0.mlp.fc1"]
    with torch.no_grad():  # a rank-2 update inside a rank-5 adapter
        view.lora_b.copy_(torch.randn(view.lora_b.shape[0], 2) @ torch.randn(2, 5))
    dense = singular_values(delta_weight(view))[:5]
    factored = lora_singular_values(view)
    # float32 factors: agreement to float32 round-off of the top singular value
    torch.testing.assert_close(factored, dense, atol=1e-6 * float(dense[0]), rtol=1e-5)
    assert int((factored > 1e-5 * dense[0]).sum()) == 2


def test_monitor_logs_per_module_and_means_during_fit(tmp_path):
    model = ImageClassifier(vit=TINY_VIT, num_classes=4, adaptation="lora", lora={"r": 4})
    monitor = LoRASpectrumMonitor(every_n_steps=2)
    trainer = pl.Trainer(
        max_steps=4,
        default_root_dir=tmp_path,
        logger=pl.loggers.TensorBoardLogger(tmp_path, name="x"),
        callbacks=[monitor],
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    data = SyntheticLowRank(num_classes=4, class_rank=2, train_size=64, val_size=16, batch_size=16)
    trainer.fit(model, datamodule=data)
    m = monitor.last_metrics  # measured at step 4, the weights the fit ended with
    layers = lora_layers(model.model)
    delta = {name: delta_weight(view).detach() for name, view in layers.items()}
    qkv = delta["blocks.0.attn.qkv"]  # the dense (α/r) B A, (192, 64)
    assert m["lora/enc.b00.qkv/effective_rank"] == pytest.approx(effective_rank(qkv), rel=1e-4)
    mean_fro = sum(float(d.norm()) for n, d in delta.items() if n.endswith("qkv")) / 2
    assert m["lora/enc.qkv_mean/frobenius_norm"] == pytest.approx(mean_fro, rel=1e-4)
    assert mean_fro > 0  # B moved off zero
    tags = event_tags(tmp_path / "x" / "version_0")
    assert {"lora/enc.b01.fc2/energy_rank_0.9", "lora/enc.fc1_mean/stable_rank"} <= tags


def test_monitor_logs_deep_lora_factor_spectra_and_moved_values(tiny_spec):
    from maskrank.callbacks.lora import deep_factor_spectra
    from maskrank.models.lora import DeepLoRALinear

    model = tiny_spec.build(img_size=32, num_classes=4)
    apply_lora(model, LoRASpec(r=4, depth=3, init_scale=0.01))
    layer = model.blocks[0].attn.qkv
    assert isinstance(layer, DeepLoRALinear)
    fresh = deep_factor_spectra(layer)
    assert {fresh[f"w{i}/moved_sv"] for i in (1, 2, 3)} == {0.0}  # all start at init_scale
    assert abs(fresh["w2/sv_1"] - 0.01) < 1e-6
    with torch.no_grad():  # W₂ = εQ becomes Q diag(100ε, ε, ε, ε): one singular value moves
        layer.w2[:, 0] *= 100
    assert deep_factor_spectra(layer)["w2/moved_sv"] == 1.0
    holder = torch.nn.Module()
    holder.model = model
    metrics = LoRASpectrumMonitor(every_n_steps=1).measure(holder)
    assert metrics["lora/enc.b00.qkv/w2/moved_sv"] == 1.0
    assert metrics["lora/enc.qkv_mean/w2/moved_sv"] == 0.5  # one of the two blocks moved
