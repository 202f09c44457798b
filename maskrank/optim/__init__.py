"""Optimizers and learning-rate schedules of the tasks (pure: no Lightning imports).

* :mod:`maskrank.optim.adamw`: AdamW with weight-decay and layer-decay parameter groups;
* :mod:`maskrank.optim.galore`: GaLore AdamW (SCIENCE.md §8), tensor-only state;
* :mod:`maskrank.optim.projection`: how a GaLore refresh finds the gradient's top subspace (exact
  SVD, randomized range finder, warm-started block power iteration);
* :mod:`maskrank.optim.spec`: ``model.init_args.optimizer`` and building the optimizer it names;
* :mod:`maskrank.optim.plan`: the per-parameter decisions, made by name on the unwrapped model;
* :mod:`maskrank.optim.schedule`: linear warmup then cosine decay.
"""

from maskrank.optim.adamw import adamw, param_groups
from maskrank.optim.galore import GaLoreAdamW, state_bytes_formula
from maskrank.optim.plan import OptimizerPlan, ParamPlan, plan_parameters
from maskrank.optim.projection import PROJECTIONS, power_basis, randomized_basis, svd_basis
from maskrank.optim.schedule import warmup_cosine, warmup_cosine_schedule
from maskrank.optim.spec import (
    OPTIMIZERS,
    OptimizerSpec,
    as_optimizer_spec,
    build_optimizer,
    galore_targets,
    plan_optimizer,
)

__all__ = [
    "OPTIMIZERS",
    "PROJECTIONS",
    "GaLoreAdamW",
    "OptimizerPlan",
    "OptimizerSpec",
    "ParamPlan",
    "adamw",
    "as_optimizer_spec",
    "build_optimizer",
    "galore_targets",
    "param_groups",
    "plan_optimizer",
    "plan_parameters",
    "power_basis",
    "randomized_basis",
    "state_bytes_formula",
    "svd_basis",
    "warmup_cosine",
    "warmup_cosine_schedule",
]
