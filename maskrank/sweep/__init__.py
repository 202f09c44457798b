"""Sweeps: config-driven ablations, one fit per cell, resumable, with a results table.

- :mod:`~maskrank.sweep.spec` and :mod:`~maskrank.sweep.load`: the sweep file format, checked;
- :mod:`~maskrank.sweep.layout`: the one owner of the sweep directory's paths and marker files;
- :mod:`~maskrank.sweep.plan`: each cell's fits, command lines and up-front checks;
- :mod:`~maskrank.sweep.runner`: running the unfinished fits and writing the outputs;
- :mod:`~maskrank.sweep.results`: tables, HParams sessions, Spearman correlations;
- :mod:`~maskrank.sweep.report`: ``maskrank report``'s tables and plots;
- :mod:`~maskrank.sweep.finals`: each run's final values (``summary.json``, else its event files);
- :mod:`~maskrank.sweep.overview_figures`: the overview's charts with one line per cell.

The package needs the command line's parser and fit as functions
(:class:`~maskrank.sweep.runner.CommandLine`); :mod:`maskrank.cli.sweep` hands them in.
"""
