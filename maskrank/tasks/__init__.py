"""LightningModules: thin wrappers that pair a model with its loss, optimizer and logged metrics."""

from maskrank.tasks.classification import ImageClassifier
from maskrank.tasks.mixup import MixupSpec
from maskrank.tasks.pretrain import MAEPretraining

__all__ = ["ImageClassifier", "MAEPretraining", "MixupSpec"]
