"""Two fits on the same CPU cores: how much slower is each than alone, by OpenMP wait policy.

    python scripts/benchmarks/bench_shared_cpu.py                    # 3-epoch quickstart, both policies
    python scripts/benchmarks/bench_shared_cpu.py --epochs 1 --policies passive

For each policy it times one ``maskrank fit -c configs/quickstart.yaml`` alone and two started
together, and prints wall seconds, CPU seconds and the slowdown of a shared run over the alone
run (a fair share of the cores would be 2.0x for two runs). The four runs of a round (each policy
alone and shared) go in a fresh random order per round (``--seed``, printed; ``benchlib``); the
slowdown is paired per round (the round's shared wall time over its alone one: their median and
every round's value). ``spin`` is libgomp's own default
(threads spin 300,000 rounds before they sleep, ``GOMP_SPINCOUNT=300000``); ``passive`` is
maskrank's default (``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep at once).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import benchlib  # scripts/benchmarks/benchlib.py: a script's own folder is first on sys.path

POLICIES = {"spin": {"GOMP_SPINCOUNT": "300000"}, "passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def _command(epochs: int, out: Path, tag: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "maskrank",
        "fit",
        "-c",
        "configs/quickstart.yaml",
        "--trainer.max_epochs",
        str(epochs),
        "--trainer.enable_progress_bar",
        "false",
        "--trainer.logger.init_args.save_dir",
        str(out),
        "--trainer.logger.init_args.name",
        tag,
    ]


def _run(commands: list[list[str]], env: dict[str, str]) -> tuple[list[float], float]:
    """Start ``commands`` together; the wall seconds of each and their CPU seconds together."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    walls = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"bench_shared_cpu: a fit failed:\n{err.decode()[-2000:]}")
        walls.append(time.perf_counter() - start)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    return walls, cpu


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="bench_shared_cpu.py", description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=3, help="quickstart epochs per fit (3)")
    parser.add_argument(
        "--policies",
        nargs="+",
        default=list(POLICIES),
        choices=list(POLICIES),
        help="OpenMP wait policies to compare (spin passive)",
    )
    parser.add_argument("--rounds", type=int, default=1, help="rounds of every run (1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the run order per round")
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: expected >= 1")
    if args.rounds < 1:
        parser.error(f"--rounds {args.rounds}: expected >= 1")
    cpu: dict[str, list[float]] = {}  # run -> CPU seconds per fit, per round
    print(f"before: {benchlib.load_average()}")
    with tempfile.TemporaryDirectory() as tmp:

        def run(policy: str, shared: bool):
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
            }
            env.update(POLICIES[policy])
            name = f"{policy}/{'shared' if shared else 'alone'}"

            def go() -> list[float]:
                fits = 2 if shared else 1
                tag = f"{policy}_{'shared' if shared else 'alone'}"
                commands = [_command(args.epochs, Path(tmp), f"{tag}_{i}") for i in range(fits)]
                walls, seconds = _run(commands, env)
                cpu.setdefault(name, []).append(seconds / fits)
                return walls

            return name, go

        runs = dict(run(policy, shared) for policy in args.policies for shared in (False, True))
        timings = benchlib.run_rounds(runs, args.rounds, args.seed, benchlib.print_round)
    print(f"after: {benchlib.load_average()}")
    print(benchlib.orders_line(args.seed, timings.orders, what="run") + "\n")
    rows = []
    for policy in args.policies:
        alone, shared = f"{policy}/alone", f"{policy}/shared"
        slowdown = [1 / x for x in timings.paired(shared, alone)]  # shared wall over alone
        rows.append(
            (
                policy,
                f"{statistics.median(timings.all(alone)):.1f}",
                f"{statistics.median(cpu[alone]):.1f}",
                f"{statistics.median(timings.all(shared)):.1f}",
                f"{statistics.median(cpu[shared]):.1f}",
                benchlib.ratio_cell(slowdown),
            )
        )
    headers = (
        "policy",
        "alone s",
        "alone CPU s",
        "shared s",
        "shared CPU s per fit",
        "slowdown, paired (per round)",
    )
    print(benchlib.markdown_table(headers, rows))
    print(
        f"({os.cpu_count()} cores; a fair share for two runs is 2.00x; quickstart, "
        f"{args.epochs} epochs)"
    )


if __name__ == "__main__":
    main()
