from __future__ import annotations

import pytest
import torch

from maskrank.errors import ConfigError
from maskrank.models.vit import ViTSpec
from maskrank.optim import adamw
from maskrank.tasks import ImageClassifier


def _classifier(spec: ViTSpec, **kw) -> ImageClassifier:
    return ImageClassifier(vit=spec, num_classes=4, img_size=32, in_chans=3, **kw)


def test_loss_goes_down_on_a_fixed_batch(tiny_spec):
    model = _classifier(tiny_spec)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(16, 3, 32, 32, generator=g)
    labels = torch.randint(0, 4, (16,), generator=g)
    opt = adamw(model, lr=1e-3, weight_decay=0.0)
    losses = []
    for _ in range(30):
        loss = torch.nn.functional.cross_entropy(model(images), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert (model(images).argmax(-1) == labels).float().mean() > 0.9


def test_every_parameter_gets_a_gradient(tiny_spec):
    model = _classifier(tiny_spec)
    loss = model(torch.randn(2, 3, 32, 32)).logsumexp(-1).sum()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing


def test_hparams_are_plain_and_rebuild_the_same_model(tiny_spec):
    model = _classifier(tiny_spec, label_smoothing=0.1)
    assert model.hparams["vit"]["embed_dim"] == 64  # a dict, loadable with weights_only=True
    clone = ImageClassifier(**model.hparams)
    clone.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval(), clone.eval()
    torch.testing.assert_close(model(x), clone(x))


def test_bad_label_smoothing_names_the_flag(tiny_spec):
    with pytest.raises(ConfigError, match="label_smoothing"):
        _classifier(tiny_spec, label_smoothing=1.0)
