"""Lightning callbacks that observe training and log to TensorBoard; they never change the math.

Two reliability callbacks are the exception that proves the rule: :class:`NonFiniteGuard` stops a
fit (or skips its step) before a NaN/inf loss or gradient reaches the weights, and
:class:`RngStateCheckpoint` puts the RNG state of a checkpoint back when a fit resumes.
"""

from maskrank.callbacks.cost import TrainingCost
from maskrank.callbacks.dropout import DropoutPenaltyMonitor
from maskrank.callbacks.galore import GaLoreMonitor
from maskrank.callbacks.knn import OnlineKNN
from maskrank.callbacks.lidar_views import LidarSpec
from maskrank.callbacks.lora import LoRASpectrumMonitor
from maskrank.callbacks.nan_guard import NonFiniteGuard
from maskrank.callbacks.overview import TensorBoardOverview
from maskrank.callbacks.reconstruction import ReconstructionLogger
from maskrank.callbacks.representation import RepresentationRankMonitor
from maskrank.callbacks.rng_state import RngStateCheckpoint
from maskrank.callbacks.weights import WeightSpectrumMonitor

__all__ = [
    "DropoutPenaltyMonitor",
    "GaLoreMonitor",
    "LidarSpec",
    "LoRASpectrumMonitor",
    "NonFiniteGuard",
    "OnlineKNN",
    "ReconstructionLogger",
    "RepresentationRankMonitor",
    "RngStateCheckpoint",
    "TensorBoardOverview",
    "TrainingCost",
    "WeightSpectrumMonitor",
]
