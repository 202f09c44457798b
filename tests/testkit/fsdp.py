"""FSDP on CPU for the tests: the tiny MAE sharded as Lightning's strategies shard it, on gloo.

* :class:`CpuFSDPStrategy`: Lightning's ``FSDPStrategy`` (FSDP1, ``use_orig_params=True``) on
  CPU. Lightning refuses ``FSDPStrategy`` without a GPU (an exact-type check) and hands torch no
  ``device_id`` on CPU, which torch then refuses ("FSDP needs a non-CPU accelerator device");
  this subclass wraps the LightningModule as the root unit with ``device_id=cpu``.
* FSDP2 needs nothing here: the tasks' own ``configure_model`` shards them under
  ``ModelParallelStrategy`` (:mod:`maskrank.tasks.sharding`), and ``task.shard(mesh)`` does the
  same in process.
* :func:`named_groups`: an optimizer's groups by parameter name, for comparing runs.
"""

from __future__ import annotations

import functools
from types import SimpleNamespace

import torch
from pytorch_lightning.strategies import FSDPStrategy
from torch import nn
from torch.distributed.fsdp import (
    FullyShardedDataParallel,
)
from torch.distributed.fsdp.wrap import lambda_auto_wrap_policy

from maskrank.tasks import MAEPretraining


def block_units(task: nn.Module) -> set[nn.Module]:
    """The ViT blocks that get FSDP units of their own: the encoder's (the MAE decoder's last
    block is called piecewise, outside its forward, so it stays in the root unit)."""
    if isinstance(task, MAEPretraining):
        return set(task.mae.encoder.blocks)
    return set(task.model.blocks)


def fsdp1_wrap(task: nn.Module) -> FullyShardedDataParallel:
    """``task`` as Lightning's ``FSDPStrategy`` wraps it, on CPU: root unit plus block units."""
    units = block_units(task)
    policy = functools.partial(lambda_auto_wrap_policy, lambda_fn=lambda m: m in units)
    return FullyShardedDataParallel(
        task, device_id=torch.device("cpu"), use_orig_params=True, auto_wrap_policy=policy
    )


class CpuFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy (FSDP1) with the LightningModule wrapped on CPU."""

    def _setup_model(self, model: nn.Module) -> nn.Module:
        return fsdp1_wrap(model)


def configure(task, strategy) -> torch.optim.Optimizer:
    """``task.configure_optimizers()``'s optimizer as a trainer with ``strategy`` gets it."""
    task._trainer = SimpleNamespace(estimated_stepping_batches=10, strategy=strategy)
    return task.configure_optimizers()["optimizer"]


def named_groups(task: nn.Module, optimizer: torch.optim.Optimizer) -> list[list]:
    """Every group as [parameter names, peak lr, weight_decay, GaLore rank], names without
    FSDP1's wrapper component (lists: the form a JSON round trip keeps). The peak lr is the one
    the schedule scales (``initial_lr``), independent of the run's length."""
    names = {id(p): n.replace("_fsdp_wrapped_module.", "") for n, p in task.named_parameters()}
    return [
        [
            [names[id(p)] for p in g["params"]],
            g.get("initial_lr", g["lr"]),
            g["weight_decay"],
            g.get("rank"),
        ]
        for g in optimizer.param_groups
    ]
