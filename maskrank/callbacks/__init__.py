"""Lightning callbacks that observe training and log to TensorBoard; they never change the math."""

from maskrank.callbacks.reconstruction import ReconstructionLogger

__all__ = ["ReconstructionLogger"]
