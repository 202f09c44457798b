"""PNG screenshots of TensorBoard's pages for a run directory, taken by headless Chromium.

    python scripts/tools/tensorboard_snapshot.py runs/quickstart/version_0
    python scripts/tools/tensorboard_snapshot.py runs/quickstart --out /tmp/snapshots --pages scalars

Starts ``tensorboard --logdir DIR --host localhost`` on a free port, waits until it answers,
loads each page (``custom_scalars``, ``scalars``, ``projector`` by default:
``http://localhost:PORT/#<page>``) in ``chromium --headless=new`` and saves
``<out>/<page>.png``, then stops TensorBoard. Chromium's ``--virtual-time-budget`` lets the page
run its requests and scripts for that long (virtual time) before the screenshot, so the charts
are drawn. Needs Debian's ``chromium`` (``apt-get install chromium``); not part of CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

PAGES = ("custom_scalars", "scalars", "projector")
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
EVENTS_GLOB = "events.out.tfevents.*"
# A screenshot of a page that drew nothing is a few KB of flat colour; TensorBoard's header alone
# makes more.
MIN_PNG_BYTES = 4096


class SnapshotError(Exception):
    """A one-line reason the snapshot cannot be taken."""


class _Parser(argparse.ArgumentParser):
    """Argument errors as one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def parse_window(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` or ``WIDTH,HEIGHT`` -> (width, height), both at least 200 pixels."""
    parts = text.lower().replace("x", ",").split(",")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--window-size must be WIDTHxHEIGHT (e.g. 1400x1000), got {text!r}"
        ) from None
    if min(width, height) < 200:
        raise argparse.ArgumentTypeError(
            f"--window-size must be at least 200x200 pixels, got {text!r}"
        )
    return width, height


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="tensorboard_snapshot.py",
        description="Screenshot TensorBoard's pages for a run directory with headless Chromium.",
    )
    parser.add_argument("logdir", type=Path, help="a run directory (or a directory of runs)")
    parser.add_argument(
        "--out", type=Path, default=None, help="where the PNGs go (default: <logdir>/snapshots)"
    )
    parser.add_argument(
        "--pages",
        nargs="+",
        choices=PAGES,
        default=list(PAGES),
        help="TensorBoard pages to capture (default: all three)",
    )
    parser.add_argument(
        "--port", type=_positive, default=None, help="TensorBoard's port (default: a free one)"
    )
    parser.add_argument(
        "--window-size",
        type=parse_window,
        default=(1400, 1000),
        help="browser window, WIDTHxHEIGHT (default 1400x1000)",
    )
    parser.add_argument(
        "--budget-ms",
        type=_positive,
        default=15000,
        help="virtual time the page gets to load and draw before the shot (default 15000)",
    )
    parser.add_argument(
        "--startup-timeout",
        type=_positive,
        default=120,
        help="seconds to wait for TensorBoard to answer (default 120)",
    )
    parser.add_argument("--chromium", default=None, help="the browser binary (default: on PATH)")
    parser.add_argument(
        "--tensorboard", default=None, help="the tensorboard binary (default: on PATH)"
    )
    return parser


def find_event_files(logdir: Path) -> list[Path]:
    """Every TensorBoard event file under ``logdir`` (any depth), sorted."""
    if not logdir.is_dir():
        raise SnapshotError(f"logdir {logdir}: no such directory")
    found = sorted(p for p in logdir.rglob(EVENTS_GLOB) if p.is_file())
    if not found:
        raise SnapshotError(
            f"logdir {logdir}: no TensorBoard event files ({EVENTS_GLOB}) under it; "
            "pass a run directory such as runs/quickstart/version_0"
        )
    return found


def find_program(explicit: str | None, names: Sequence[str], hint: str) -> str:
    """The path of ``explicit`` or of the first of ``names`` on PATH; else a SnapshotError."""
    for name in [explicit] if explicit else names:
        path = shutil.which(name)
        if path:
            return path
    wanted = explicit or " / ".join(names)
    raise SnapshotError(f"no {wanted} found on PATH: {hint}")


def free_port() -> int:
    """A TCP port on localhost that nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", 0))
        return int(sock.getsockname()[1])


def tensorboard_command(tensorboard: str, logdir: Path, port: int) -> list[str]:
    """TensorBoard on ``logdir``, serving on localhost only."""
    return [tensorboard, "--logdir", str(logdir), "--port", str(port), "--host", "localhost"]


def page_url(port: int, page: str) -> str:
    if page not in PAGES:
        raise ValueError(f"page must be one of {PAGES}, got {page!r}")
    return f"http://localhost:{port}/#{page}"


def chromium_command(
    chromium: str, url: str, png: Path, window: tuple[int, int], budget_ms: int
) -> list[str]:
    """A headless screenshot of ``url`` into ``png``.

    ``--no-sandbox``: Chromium refuses to run as root with its sandbox (containers);
    ``--user-data-dir`` is passed by :func:`screenshot` so that no profile is shared.
    """
    return [
        chromium,
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--no-first-run",
        f"--window-size={window[0]},{window[1]}",
        f"--virtual-time-budget={budget_ms}",
        f"--screenshot={png}",
        url,
    ]


def wait_until_serving(port: int, process: subprocess.Popen, timeout_s: float) -> None:
    """Poll TensorBoard's run list until it answers 200; a SnapshotError if it exits or times out."""
    url = f"http://localhost:{port}/data/runs"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SnapshotError(f"tensorboard exited with status {process.returncode} at start")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.5)
    raise SnapshotError(f"tensorboard did not answer on port {port} within {timeout_s:.0f} s")


def screenshot(command: list[str], png: Path, timeout_s: float) -> Path:
    """Run ``command`` (from :func:`chromium_command`) with a fresh profile; the PNG it wrote."""
    png.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        full = [command[0], f"--user-data-dir={profile}", *command[1:]]
        try:
            result = subprocess.run(full, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise SnapshotError(f"chromium took over {timeout_s:.0f} s for {command[-1]}") from None
    if not png.is_file():
        tail = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise SnapshotError(f"chromium wrote no screenshot for {command[-1]}: {tail}")
    return png


def stop(process: subprocess.Popen) -> None:
    """Terminate TensorBoard (kill it if it lingers)."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def snapshot(args: argparse.Namespace) -> list[Path]:
    """Every requested page of TensorBoard on ``args.logdir`` as a PNG; returns their paths."""
    find_event_files(args.logdir)
    chromium = find_program(args.chromium, BROWSERS, "apt-get install chromium")
    tensorboard = find_program(args.tensorboard, ("tensorboard",), "pip install tensorboard")
    out = args.out if args.out is not None else args.logdir / "snapshots"
    out.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    log = tempfile.TemporaryFile()
    process = subprocess.Popen(
        tensorboard_command(tensorboard, args.logdir, port),
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    written = []
    try:
        wait_until_serving(port, process, args.startup_timeout)
        # the browser's own start plus the page's virtual time, with room on a busy machine
        timeout_s = 60 + 4 * args.budget_ms / 1000
        for page in args.pages:
            png = out.resolve() / f"{page}.png"
            command = chromium_command(
                chromium, page_url(port, page), png, args.window_size, args.budget_ms
            )
            written.append(screenshot(command, png, timeout_s))
            size = png.stat().st_size
            note = "" if size >= MIN_PNG_BYTES else " (small: the page may be blank)"
            print(f"{page}: {png} ({size / 1024:.0f} KB){note}", flush=True)
    finally:
        stop(process)
        log.close()
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        snapshot(args)
    except SnapshotError as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
