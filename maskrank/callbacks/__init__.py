"""Lightning callbacks that observe training and log to TensorBoard; they never change the math."""

from maskrank.callbacks.dropout import DropoutPenaltyMonitor
from maskrank.callbacks.reconstruction import ReconstructionLogger
from maskrank.callbacks.representation import RepresentationRankMonitor
from maskrank.callbacks.weights import WeightSpectrumMonitor

__all__ = [
    "DropoutPenaltyMonitor",
    "ReconstructionLogger",
    "RepresentationRankMonitor",
    "WeightSpectrumMonitor",
]
