"""Two fits on the same CPU cores: how much slower is each than alone, by OpenMP wait policy.

    python scripts/bench_shared_cpu.py                    # 3-epoch quickstart, both policies
    python scripts/bench_shared_cpu.py --epochs 1 --policies passive

For each policy it times one ``maskrank fit -c configs/quickstart.yaml`` alone, then two started
together, and prints wall seconds, CPU seconds and the slowdown of a shared run over the alone
run (a fair share of the cores would be 2.0x for two runs). ``spin`` is libgomp's own default
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


def _run(commands: list[list[str]], env: dict[str, str]) -> list[tuple[float, float]]:
    """Start ``commands`` together; (wall s, CPU s) of each."""
    start = time.perf_counter()
    procs = [
        subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for c in commands
    ]
    results = []
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"bench_shared_cpu: a fit failed:\n{err.decode()[-2000:]}")
        results.append(time.perf_counter() - start)
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return [(wall, usage.ru_utime + usage.ru_stime) for wall in results]


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
    args = parser.parse_args(argv)
    if args.epochs < 1:
        parser.error(f"--epochs {args.epochs}: expected >= 1")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for policy in args.policies:
            env = {
                k: v
                for k, v in os.environ.items()
                if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
            }
            env.update(POLICIES[policy])
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu0 = before.ru_utime + before.ru_stime
            ((alone, cpu1),) = _run([_command(args.epochs, Path(tmp), f"{policy}_alone")], env)
            pair = _run([_command(args.epochs, Path(tmp), f"{policy}_{i}") for i in range(2)], env)
            shared = statistics.median(wall for wall, _ in pair)
            cpu_pair = pair[-1][1] - cpu1
            rows.append((policy, alone, cpu1 - cpu0, shared, cpu_pair / 2, shared / alone))
    print(
        f"{'policy':<8} {'alone s':>8} {'alone CPU s':>11} {'shared s':>9} {'shared CPU s':>12} {'slowdown':>9}"
    )
    for policy, alone, cpu_alone, shared, cpu_shared, ratio in rows:
        print(
            f"{policy:<8} {alone:>8.1f} {cpu_alone:>11.1f} {shared:>9.1f} {cpu_shared:>12.1f} {ratio:>8.2f}x"
        )
    print(
        f"({os.cpu_count()} cores; a fair share for two runs is 2.00x; quickstart, {args.epochs} epochs)"
    )


if __name__ == "__main__":
    main()
