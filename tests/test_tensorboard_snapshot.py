"""scripts/tools/tensorboard_snapshot.py without a browser: its arguments, errors and command lines."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from testkit.scripts import load_script

snap = load_script("tools/tensorboard_snapshot.py")


def _run_dir(root: Path) -> Path:
    run = root / "runs" / "quickstart" / "version_0"
    run.mkdir(parents=True)
    (run / "events.out.tfevents.1.host.0").write_bytes(b"")
    return run


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["--window-size", "1400"], "--window-size"),
        (["--window-size", "100x1000"], "--window-size"),
        (["--port", "0"], "--port"),
        (["--budget-ms", "soon"], "--budget-ms"),
        (["--pages", "images"], "--pages"),
    ],
)
def test_bad_arguments_are_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_:
        snap.main([str(tmp_path), *argv])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tensorboard_snapshot.py: error:")
    assert flag in err[0]


def test_window_size_reads_both_spellings():
    assert snap.parse_window("1400x1000") == (1400, 1000)
    assert snap.parse_window("800,600") == (800, 600)


def test_event_files_are_found_at_any_depth(tmp_path):
    run = _run_dir(tmp_path)
    assert snap.find_event_files(tmp_path / "runs") == [run / "events.out.tfevents.1.host.0"]
    (run / "checkpoints").mkdir()
    with pytest.raises(snap.SnapshotError, match="no TensorBoard event files"):
        snap.find_event_files(run / "checkpoints")
    with pytest.raises(snap.SnapshotError, match="no such directory"):
        snap.find_event_files(tmp_path / "missing")


def test_no_event_files_or_no_browser_is_one_line_before_anything_starts(
    tmp_path, capsys, monkeypatch
):
    (tmp_path / "empty").mkdir()
    assert snap.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no TensorBoard event files" in err[0]

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # nothing to run on PATH
    run = _run_dir(tmp_path)
    assert snap.main([str(run), "--out", str(tmp_path / "shots")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "apt-get install chromium" in err[0]
    assert not (tmp_path / "shots").exists()  # refused before writing anything


def test_tensorboard_serves_localhost_only(tmp_path):
    command = snap.tensorboard_command("tensorboard", tmp_path, 6123)
    assert command == [
        "tensorboard",
        "--logdir",
        str(tmp_path),
        "--port",
        "6123",
        "--host",
        "localhost",
    ]
    assert "--bind_all" not in command


def test_chromium_command_takes_a_headless_screenshot_of_the_page(tmp_path):
    png = tmp_path / "scalars.png"
    url = snap.page_url(6123, "custom_scalars")
    assert url == "http://localhost:6123/#custom_scalars"
    command = snap.chromium_command("/usr/bin/chromium", url, png, (1400, 1000), 15000)
    assert command[0] == "/usr/bin/chromium" and command[-1] == url
    assert {
        "--headless=new",
        f"--screenshot={png}",
        "--window-size=1400,1000",
        "--virtual-time-budget=15000",
    } <= set(command)
    with pytest.raises(ValueError, match="page"):
        snap.page_url(6123, "images")


def test_free_port_can_be_bound():
    port = snap.free_port()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("localhost", port))
