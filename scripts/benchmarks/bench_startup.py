"""How long maskrank's commands take to start, and which imports that time goes to.

    python scripts/benchmarks/bench_startup.py                 # 3 fresh processes per command
    python scripts/benchmarks/bench_startup.py --repeats 5

Each command runs in a fresh process (nothing cached in the interpreter; the OS file cache is warm
after the first run, which is what a user sees from their second command on). Printed per command:
median wall seconds with [min, max] and the median CPU seconds of the child. Then the heaviest
top-level packages of ``import maskrank.cli.sweep`` from ``python -X importtime`` (cumulative
microseconds per package, one run): the floor for every command that parses a training config.
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMANDS: dict[str, list[str]] = {
    "maskrank --help": [sys.executable, "-m", "maskrank", "--help"],
    "maskrank --version": [sys.executable, "-m", "maskrank", "--version"],
    "import maskrank.cli.sweep": [sys.executable, "-c", "import maskrank.cli.sweep"],
    "maskrank sweep configs/sweeps/mask_ratio.yaml --dry-run": [
        sys.executable,
        "-m",
        "maskrank",
        "sweep",
        "configs/sweeps/mask_ratio.yaml",
        "--dry-run",
    ],
}


def time_command(command: list[str]) -> tuple[float, float]:
    """(wall s, CPU s of the child) of one fresh run; exits with the command's stderr on failure."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"bench_startup: `{' '.join(command[1:])}` failed:\n{done.stderr[-2000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu


def heaviest_imports(module: str, top: int) -> list[tuple[str, float]]:
    """The ``top`` top-level packages by cumulative import time (s) while importing ``module``.

    ``-X importtime`` prints ``import time: self | cumulative | name`` per module, indented by
    nesting. A package's row (its name without a dot) holds the cumulative time of everything it
    imported that was not loaded yet, so a package imported inside another counts in both (e.g.
    torch inside pytorch_lightning when Lightning is imported first). ``module``'s own package is
    left out: it contains everything.
    """
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", f"import {module}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    row = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|\s*(\S+)")
    own = module.split(".")[0]
    per_package: dict[str, float] = {}
    for line in done.stderr.splitlines():
        match = row.match(line)
        if match is None:
            continue
        name = match.group(3)
        if "." in name or name == own or name.startswith("_"):
            continue
        per_package[name] = max(per_package.get(name, 0.0), int(match.group(2)) / 1e6)
    return sorted(per_package.items(), key=lambda kv: -kv[1])[:top]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per command")
    parser.add_argument("--top", type=int, default=8, help="packages listed from -X importtime")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("\n| command | wall s, median [min, max] | CPU s, median |")
    print("| --- | --- | --- |")
    for name, command in COMMANDS.items():
        time_command(command)  # warm the OS file cache; not counted
        runs = [time_command(command) for _ in range(args.repeats)]
        walls, cpus = [w for w, _ in runs], [c for _, c in runs]
        print(
            f"| `{name}` | {statistics.median(walls):.2f} [{min(walls):.2f}, {max(walls):.2f}] "
            f"| {statistics.median(cpus):.2f} |"
        )
    print("\n`import maskrank.cli.sweep`, heaviest top-level packages (-X importtime, one run):\n")
    print("| package | cumulative import s |")
    print("| --- | --- |")
    for name, seconds in heaviest_imports("maskrank.cli.sweep", args.top):
        print(f"| {name} | {seconds:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
