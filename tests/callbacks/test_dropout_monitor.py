"""DropoutPenaltyMonitor: equals dropout_penalty on the hooked activations, reads the run's rate."""

from __future__ import annotations

import pytest
import torch

import maskrank.callbacks.dropout
from maskrank.callbacks import DropoutPenaltyMonitor, NonFiniteGuard
from maskrank.callbacks.dropout import MASK_SEED, find_mlps, run_drop_rate
from maskrank.metrics import dropout_penalty, equalization_score
from maskrank.models.vit import ViTSpec
from maskrank.tasks import ImageClassifier
from testkit.events import event_tags
from testkit.tiny import TINY_VIT, tiny_data, tiny_mae


def _probe(n: int = 12) -> torch.Tensor:
    dm = tiny_data()
    dm.setup("validate")
    return dm.normalize(dm.probe_batch(n)[0])  # (n, 3, 32, 32)


def _hooked_activations(model, images) -> dict[str, torch.Tensor]:
    """Every input of every fc2 during the same masked pass, kept whole: name -> (tokens, hidden)."""
    acts: dict[str, list[torch.Tensor]] = {}
    handles = [
        mlp.fc2.register_forward_pre_hook(
            lambda mod, args, name=name: acts.setdefault(name, []).append(
                args[0].reshape(-1, args[0].shape[-1])
            )
        )
        for name, mlp in find_mlps(model).items()
    ]
    model.eval()
    with torch.no_grad():
        gen = torch.Generator().manual_seed(MASK_SEED)
        for chunk in images.split(5):
            model.mae(chunk, model.hparams.mask_ratio, "random", gen)
    for handle in handles:
        handle.remove()
    return {name: torch.cat(chunks) for name, chunks in acts.items()}


def test_penalty_equals_dropout_penalty_of_hooked_activations():
    model = tiny_mae(proj_drop_rate=0.2)
    images = _probe()
    mlps = find_mlps(model)
    assert set(mlps) == {"enc.b00.mlp", "enc.b01.mlp", "dec.b00.mlp"}
    assert run_drop_rate(mlps["enc.b00.mlp"]) == pytest.approx(0.2)  # timm Mlp.drop1 = fc2's input
    assert run_drop_rate(mlps["dec.b00.mlp"]) == 0.0
    model.train()
    metrics = DropoutPenaltyMonitor(batch_size=5, all_metrics=True).measure(model, images, mlps)
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(not mlp.fc2._forward_pre_hooks for mlp in mlps.values())  # hooks removed
    acts = _hooked_activations(model, images)
    for name, mlp in mlps.items():
        a, w = acts[name], mlp.fc2.weight.detach()
        p = run_drop_rate(mlp)
        by_hand = float((w.double().square().sum(0) * a.double().square().mean(0)).sum())
        if p > 0:
            assert metrics[f"dropout/{name}/penalty"] == pytest.approx(
                dropout_penalty(w, a, p), rel=1e-9
            )
        assert metrics[f"dropout/{name}/penalty_per_lambda"] == pytest.approx(by_hand, rel=1e-9)
        assert metrics[f"dropout/{name}/equalization"] == pytest.approx(
            equalization_score(w, a), rel=1e-9
        )
    assert "dropout/dec.b00.mlp/penalty" not in metrics  # p = 0 in the decoder: 0 at every step
    assert metrics["dropout/dec.b00.mlp/penalty_per_lambda"] > 0.0  # the all_metrics baseline
    default = DropoutPenaltyMonitor(batch_size=5).measure(model, images, mlps)
    assert {t.split("/")[1] for t in default} == {"enc.b00.mlp", "enc.b01.mlp", "enc.mlp_mean"}
    assert all(default[t] == pytest.approx(metrics[t], rel=1e-12) for t in default)
    lam = 0.2 / 0.8
    assert metrics["dropout/enc.b00.mlp/penalty"] == pytest.approx(
        lam * metrics["dropout/enc.b00.mlp/penalty_per_lambda"], rel=1e-9
    )
    assert metrics["dropout/enc.mlp_mean/penalty"] == pytest.approx(
        (metrics["dropout/enc.b00.mlp/penalty"] + metrics["dropout/enc.b01.mlp/penalty"]) / 2
    )


def test_drop_rate_override_and_classifier_encoder_only():
    clf = ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4, img_size=32)
    mlps = find_mlps(clf)
    assert set(mlps) == {"enc.b00.mlp", "enc.b01.mlp"}
    metrics = DropoutPenaltyMonitor(drop_rate=0.5).measure(clf, _probe(4), mlps)
    for name in mlps:  # λ(0.5) = 1
        assert metrics[f"dropout/{name}/penalty"] == metrics[f"dropout/{name}/penalty_per_lambda"]


def test_explicit_mode_reports_the_penalty_rate_in_the_loss():
    spec = {"variant": "feature", "rate": 0.3, "mode": "explicit"}
    model = ImageClassifier(vit=ViTSpec(**TINY_VIT), num_classes=4, img_size=32, dropout=spec)
    mlps = find_mlps(model)
    assert all(run_drop_rate(mlp) == 0.0 for mlp in mlps.values())  # dropout itself is off
    metrics = DropoutPenaltyMonitor(batch_size=6).measure(model, _probe(), mlps)
    for name in mlps:
        per_lambda = metrics[f"dropout/{name}/penalty_per_lambda"]
        assert per_lambda > 0
        assert metrics[f"dropout/{name}/penalty"] == pytest.approx(0.3 / 0.7 * per_lambda)


def test_a_nonfinite_measurement_is_skipped_and_logged_and_the_fit_goes_on(make_trainer):
    model = tiny_mae(proj_drop_rate=0.1)
    block = model.mae.encoder.blocks[0]

    def nan_in_eval(module, args, output):  # the monitor measures in eval mode; training is clean
        return output if module.training else torch.full_like(output, float("nan"))

    block.register_forward_hook(nan_in_eval)
    monitor = DropoutPenaltyMonitor(probe_size=8)
    trainer = make_trainer([NonFiniteGuard(action="skip"), monitor], max_epochs=2)
    with pytest.warns(UserWarning, match="DropoutPenaltyMonitor: step 4: .*non-finite.*skipped"):
        trainer.fit(model, datamodule=tiny_data())
    assert trainer.global_step == 8 and trainer.current_epoch == 2  # the fit went on
    assert monitor.last_metrics == {"monitor/DropoutPenaltyMonitor/skipped_nonfinite": 1.0}
    assert trainer.callback_metrics["monitor/DropoutPenaltyMonitor/skipped_nonfinite"] == 1.0


@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_without_dropout_nothing_is_logged_or_run_and_it_says_so_once(
    make_trainer, monkeypatch, drop
):
    model = tiny_mae(proj_drop_rate=drop)
    probe_passes = []  # the monitor's MAE pass is the only caller of mae.__call__ in this fit
    model.mae.register_forward_pre_hook(lambda module, args: probe_passes.append(module.training))
    said: list[str] = []
    monitor = DropoutPenaltyMonitor(probe_size=8)
    monkeypatch.setattr(maskrank.callbacks.dropout, "rank_zero_info", said.append)
    make_trainer([monitor], max_epochs=2).fit(model, datamodule=tiny_data())
    if drop > 0:
        assert probe_passes == [False, False] and monitor.last_metrics and not said
        return
    assert monitor.last_metrics == {} and monitor.planned_tags(model) == set()
    assert probe_passes == []
    assert len(said) == 1 and said[0].startswith("DropoutPenaltyMonitor: no block MLP")


def test_logged_tags_are_the_planned_ones(make_trainer, tmp_path):
    model = tiny_mae(proj_drop_rate=0.1)
    monitor = DropoutPenaltyMonitor(probe_size=8)
    make_trainer([monitor], max_epochs=1).fit(model, datamodule=tiny_data())
    (run,) = (tmp_path / "runs" / "exp").glob("version_*")
    logged = {t for t in event_tags(run) if t.startswith("dropout/")}
    assert logged == monitor.planned_tags(model)
    assert {t.split("/")[1] for t in logged} == {"enc.b00.mlp", "enc.b01.mlp", "enc.mlp_mean"}
