"""How a run shares the machine: CPU threads per process, and settings Lightning would ignore.

On CPU, torch runs every GEMM on ``torch.get_num_threads()`` threads, by default one per core.
Two processes on the same cores then run twice as many threads as there are cores, and OpenMP
threads that wait for work spin, so each process slows down far more than a fair share would.
maskrank gives every process ``cores / local processes`` threads (``--threads`` overrides) and
says once when the machine is already busy.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from pytorch_lightning.loggers import Logger
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["configure_threads", "local_processes", "usable_cores", "warn_ignored_root_dir"]


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def local_processes(trainer_config: dict[str, Any]) -> int:
    """Processes of this run on this machine: Lightning's ``LOCAL_WORLD_SIZE`` in a launched
    process, else the CPU device count a multi-process strategy will start."""
    launched = os.environ.get("LOCAL_WORLD_SIZE")
    if launched:
        return max(1, int(launched))
    if str(trainer_config.get("accelerator", "auto")) not in ("cpu", "auto"):
        return 1  # one process per GPU; its CPU threads barely matter
    if str(trainer_config.get("accelerator", "auto")) == "auto" and torch.cuda.is_available():
        return 1
    devices = trainer_config.get("devices", "auto")
    if isinstance(devices, int):
        return max(1, devices)
    if isinstance(devices, (list, tuple)):
        return max(1, len(devices))
    if isinstance(devices, str) and devices.isdigit():
        return max(1, int(devices))
    return 1


def configure_threads(threads: int | None, trainer_config: dict[str, Any]) -> int:
    """Set torch's intra-op threads for this process; returns the count.

    ``threads`` (``--threads``) wins; otherwise the usable cores divided by the local processes.
    Warns once when the 1-minute load average already exceeds the cores: the run will share them.
    """
    cores = usable_cores()
    count = threads if threads is not None else max(1, cores // local_processes(trainer_config))
    if count < 1:
        count = 1
    torch.set_num_threads(count)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load > cores:
        rank_zero_warn(
            f"the machine is busy (load average {load:.1f} on {cores} cores): this run gets a "
            f"share of the CPU, using {count} thread(s) per process (--threads)"
        )
    return count


def warn_ignored_root_dir(trainer_config: dict[str, Any]) -> None:
    """Say so when ``trainer.default_root_dir`` is set but the logger writes somewhere else."""
    root = trainer_config.get("default_root_dir")
    logger = trainer_config.get("logger")
    loggers = logger if isinstance(logger, (list, tuple)) else [logger]
    first = next((lg for lg in loggers if isinstance(lg, Logger)), None)
    save_dir = getattr(first, "save_dir", None)
    if root is None or first is None or save_dir is None:
        return
    if os.path.abspath(str(root)) != os.path.abspath(str(save_dir)):
        rank_zero_warn(
            f"trainer.default_root_dir {root} is not where this run is written: the logger "
            f"writes it (and its checkpoints) under {save_dir} "
            "(set trainer.logger.init_args.save_dir instead)"
        )
