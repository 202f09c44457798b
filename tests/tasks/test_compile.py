"""``compile: true``: the compiled blocks train the same function, and a broken toolchain is
refused in one line before training."""

from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from maskrank.errors import ConfigError
from maskrank.tasks import ImageClassifier, compiling
from testkit.tiny import TINY_VIT, tiny_data, tiny_mae


def _compiler_works() -> str | None:
    try:
        compiling.check_compile(torch.device("cpu"))
    except ConfigError as err:
        return str(err)
    return None


pytestmark = [pytest.mark.slow]
STEPS = 2


@pytest.fixture(scope="module")
def compiler():
    reason = _compiler_works()
    if reason is not None:
        pytest.skip(f"torch.compile cannot build CPU kernels here: {reason}")


def same_training(eager, compiled, params, loss_of) -> None:
    """``STEPS`` SGD steps of both copies: equal losses and gradients at every step."""
    counters.clear()
    opts = [torch.optim.SGD(params(m), lr=0.1) for m in (eager, compiled)]
    for step in range(STEPS):
        losses = []
        for model, opt in zip((eager, compiled), opts, strict=True):
            opt.zero_grad(set_to_none=True)
            loss = loss_of(model, step)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-6)
        for (name, a), b in zip(
            [(n, p) for n, p in eager.named_parameters() if p.requires_grad],
            params(compiled),
            strict=True,
        ):
            torch.testing.assert_close(b.grad, a.grad, rtol=1e-3, atol=1e-5, msg=name)
        for opt in opts:
            opt.step()
    # the compiled copy ran kernels of its own (not an eager fallback)
    assert counters["stats"]["unique_graphs"] >= 1


def test_compiled_mae_trains_like_eager(compiler):
    eager, compiled = tiny_mae(), tiny_mae(compile=True)
    images = torch.randn(8, 3, 32, 32)

    def loss_of(task, step: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(step)  # the same masks in both copies
        return task.mae.training_loss(images, 0.75, "random", generator=generator)

    def params(task) -> list[torch.Tensor]:
        return [p for p in task.parameters() if p.requires_grad]

    same_training(eager, compiled, params, loss_of)


def test_compiled_lora_classifier_trains_like_eager(compiler):
    def build(**kw) -> ImageClassifier:
        torch.manual_seed(0)
        lora = {"r": 4, "targets": ["qkv", "fc2"]}
        vit = {**TINY_VIT, "depth": 1}  # one block: one graph to compile, the test stays short
        return ImageClassifier(vit=vit, num_classes=4, adaptation="lora", lora=lora, **kw)

    eager, compiled = build(), build(compile=True)
    with torch.no_grad():  # a non-zero B, so the adapters change the function
        for task in (eager, compiled):
            torch.manual_seed(1)
            for name, p in task.named_parameters():
                if "lora_B" in name:
                    p.normal_(std=0.1)
    images, labels = torch.randn(8, 3, 32, 32), torch.arange(8) % 4

    def loss_of(task, step: int) -> torch.Tensor:
        return F.cross_entropy(task(images), labels)

    def params(task) -> list[torch.Tensor]:
        return [p for p in task.parameters() if p.requires_grad]

    same_training(eager, compiled, params, loss_of)


class _Steps(pl.Callback):
    def __init__(self) -> None:
        self.count = 0

    def on_train_batch_start(self, *args) -> None:
        self.count += 1


def _compiled_classifier() -> ImageClassifier:
    return ImageClassifier(vit=TINY_VIT, num_classes=4, compile=True)


@pytest.mark.parametrize(
    "build",
    [lambda: tiny_mae(compile=True), _compiled_classifier],
    ids=["pretraining", "classification"],
)
def test_a_broken_toolchain_is_refused_before_training(compiler, monkeypatch, tmp_path, build):
    monkeypatch.setattr(compiling, "_CHECKED", set())
    torch._dynamo.reset()  # no cached probe: it must build again with the broken compiler
    steps = _Steps()
    trainer = pl.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[steps],
    )
    # inductor's own config patch: restores the compiler setting exactly, whatever state an
    # earlier test left the config module in
    broken = torch._inductor.config.patch({"cpp.cxx": ("/nonexistent/c++",)})
    with broken, pytest.raises(ConfigError) as caught:
        trainer.fit(build(), datamodule=tiny_data())
    message = str(caught.value)
    assert "model.init_args.compile" in message and "\n" not in message
    assert "compiler" in message  # the reason, from inductor
    assert steps.count == 0
