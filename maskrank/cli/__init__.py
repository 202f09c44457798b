"""The ``maskrank`` command line: a table of commands (:mod:`~maskrank.cli.commands`), one
dispatcher and error wrapper (:mod:`~maskrank.cli.main`), LightningCLI for fit/validate/test/predict
(:mod:`~maskrank.cli.lightning`), sweeps and reports (:mod:`~maskrank.cli.sweep`), and the
adaptation tools lora-rank and export (:mod:`~maskrank.cli.adapt`)."""

from maskrank.cli.main import main

__all__ = ["main"]
