"""FSDP2 for the tasks: what Lightning's ``ModelParallelStrategy`` asks of ``configure_model``.

``ModelParallelStrategy`` shards nothing itself: the LightningModule's ``configure_model`` must
call ``fully_shard``. maskrank's tasks shard by data parallelism only (FSDP2), with every ViT block
as its own unit and the model around them as the root unit (docs/guides/sharding.md):

* the encoder blocks only, for the MAE: the decoder's last block runs piecewise (its MLP on the
  masked tokens only), outside its ``forward``, so it must stay in its parent's unit;
* the MAE's training and validation entry points are not ``forward``, so they are registered as
  forward methods (``register_fsdp_forward_method``): FSDP gathers the root's weights there.

The optimizer's decisions were made by name before this runs (:mod:`maskrank.optim.plan`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pytorch_lightning as pl
from pytorch_lightning.strategies import ModelParallelStrategy
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import FSDPModule, fully_shard, register_fsdp_forward_method

from maskrank.errors import ConfigError

__all__ = ["data_parallel_mesh", "shard_for_strategy", "shard_model"]


def data_parallel_mesh(trainer: pl.Trainer | None) -> DeviceMesh | None:
    """The data-parallel mesh to shard over, or None when the strategy is not
    ``ModelParallelStrategy`` (every other strategy wraps the model itself, or not at all).

    Raises:
        ConfigError: a tensor-parallel size above 1: maskrank's tasks define no tensor-parallel
            plan, and Lightning's default (``"auto"`` sizes) puts every device of a node in the
            tensor-parallel group, where all processes would see the same batches.
    """
    strategy = trainer.strategy if trainer is not None else None
    if not isinstance(strategy, ModelParallelStrategy):
        return None
    mesh = strategy.device_mesh
    tensor = mesh["tensor_parallel"].size()
    if tensor > 1:
        raise ConfigError(
            f"trainer.strategy ModelParallelStrategy has a tensor-parallel size of {tensor}, but "
            "maskrank's tasks shard by data parallelism only (FSDP2); set "
            "--trainer.strategy.init_args.tensor_parallel_size 1 and data_parallel_size to the "
            "number of processes"
        )
    return mesh["data_parallel"]


def shard_for_strategy(trainer: pl.Trainer | None, shard: Callable[[DeviceMesh], None]) -> None:
    """A task's ``configure_model``: ``shard(mesh)`` under ``ModelParallelStrategy``, else nothing."""
    mesh = data_parallel_mesh(trainer)
    if mesh is not None:
        shard(mesh)


def shard_model(
    blocks: Iterable[nn.Module],
    root: nn.Module,
    mesh: DeviceMesh,
    forward_methods: Sequence[str] = (),
    extra: Iterable[nn.Module] = (),
) -> None:
    """``fully_shard`` each of ``blocks``, then ``root`` (once: a sharded root is left alone),
    registering ``forward_methods`` of ``root``; ``extra`` modules (e.g. a probe head called
    through ``__call__``) become units of their own."""
    if isinstance(root, FSDPModule):
        return
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(root, mesh=mesh)
    for method in forward_methods:
        register_fsdp_forward_method(root, method)
    for module in extra:
        fully_shard(module, mesh=mesh)
