"""The table of ``maskrank`` commands: name -> what it does and the function that runs it.

Data only, so that ``maskrank --help`` and ``--version`` answer without importing torch or
Lightning (several seconds): a command's module is imported when that command runs.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "commands_help"]


@dataclass(frozen=True)
class Command:
    """One ``maskrank`` command.

    Attributes:
        summary: one line for ``maskrank --help``.
        target: ``module:function`` that runs it; the function takes the arguments after the
            command name (with the name first when ``with_name``, as LightningCLI wants it).
        with_name: pass the command name along (LightningCLI's subcommands).
    """

    summary: str
    target: str
    with_name: bool = False

    def load(self) -> Callable[[list[str]], object]:
        module, _, function = self.target.partition(":")
        return getattr(importlib.import_module(module), function)


_LIGHTNING = "maskrank.cli.lightning:lightning_command"

COMMANDS: dict[str, Command] = {
    "fit": Command("train a model (-c CONFIG.yaml; --ckpt_path last resumes)", _LIGHTNING, True),
    "validate": Command("evaluate a checkpoint on the validation split", _LIGHTNING, True),
    "test": Command("evaluate a checkpoint on the test split", _LIGHTNING, True),
    "predict": Command("write a checkpoint's predictions or features to disk", _LIGHTNING, True),
    "sweep": Command(
        "run an ablation grid from a sweep file (resumable)", "maskrank.cli.sweep:sweep_command"
    ),
    "report": Command(
        "tables and plots of a sweep or run directory", "maskrank.cli.sweep:report_command"
    ),
    "lora-rank": Command(
        "per-module LoRA ranks from a fine-tune's update", "maskrank.cli.adapt:lora_rank_command"
    ),
    "data": Command(
        "data optimize: a dataset as streaming shards (litdata)",
        "maskrank.cli.data:data_command",
    ),
    "export": Command(
        "a classifier as timm weights (+ peft adapter)", "maskrank.cli.adapt:export_command"
    ),
}


def commands_help() -> str:
    """The command list of ``maskrank --help``, one line per command."""
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {cmd.summary}" for name, cmd in COMMANDS.items()]
    return "commands:\n" + "\n".join(lines) + "\n\n`maskrank COMMAND --help` documents each one."
