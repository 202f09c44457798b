"""Check that a dataset's classes fit the model's classification head."""

from __future__ import annotations

import pytorch_lightning as pl

from maskrank.errors import ConfigError

__all__ = ["check_model_classes"]


def check_model_classes(trainer: pl.Trainer | None, num_classes: int, dataset: str) -> None:
    """Raise a one-line ConfigError when the attached model's ``num_classes`` differs.

    Models without a ``num_classes`` hyperparameter (MAE pretraining) are not checked. The CLI
    links ``model.init_args.num_classes`` to the datamodule, so this fires for models built
    elsewhere (Python, a hand-written config without the link).
    """
    module = trainer.lightning_module if trainer is not None else None
    head = getattr(module, "hparams", {}).get("num_classes") if module is not None else None
    if head is not None and int(head) != int(num_classes):
        raise ConfigError(
            f"{dataset} has {num_classes} classes but the model's head has {head} "
            f"(model.init_args.num_classes); use a model with {num_classes} classes"
        )
