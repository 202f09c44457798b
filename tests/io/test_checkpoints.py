"""No file a user names can run code: every torch.load is weights_only, and a checkpoint whose
pickle would execute something is refused, with one line naming it, without executing it."""

from __future__ import annotations

import ast
import pathlib
import pickle
from pathlib import Path

import pytest
import torch

import maskrank
from maskrank.cli import main
from maskrank.errors import CorruptFileError
from maskrank.io.checkpoints import load_checkpoint
from testkit.resume import write_config
from testkit.tiny import TINY_VIT

PACKAGE = Path(maskrank.__file__).parent
# torch notes that a plain pickle uses a newer protocol than its own files; irrelevant here
pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")


class _TouchOnLoad:
    """Unpickling this calls ``Path(marker).touch()``: stands in for ``os.system``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _torch_load_calls() -> list[tuple[str, int, bool]]:
    """(file, line, has weights_only=True) for every ``torch.load(...)`` call in the package."""
    calls = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "torch"
            ):
                safe = any(
                    k.arg == "weights_only"
                    and isinstance(k.value, ast.Constant)
                    and k.value.value is True
                    for k in node.keywords
                )
                calls.append((str(path.relative_to(PACKAGE)), node.lineno, safe))
    return calls


def test_every_torch_load_in_the_package_is_weights_only():
    calls = _torch_load_calls()
    assert calls, "found no torch.load at all: the scan is broken"
    assert [c for c in calls if not c[2]] == []
    # plain pickle only through the restricted unpickler of the dataset readers
    users = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if "pickle.load(" in p.read_text() or "pickle.loads(" in p.read_text()
    )
    assert users == []


@pytest.fixture(params=["zip", "plain-pickle"])
def evil_checkpoint(request, tmp_path) -> tuple[Path, Path]:
    """A checkpoint-looking file whose unpickling would create ``marker``."""
    marker, path = tmp_path / "pwned", tmp_path / "evil.ckpt"
    payload = {"state_dict": {"w": torch.zeros(2)}, "extra": _TouchOnLoad(marker)}
    if request.param == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    return path, marker


def test_the_payload_really_runs_when_loaded_unsafely(evil_checkpoint):
    # the control: without weights_only this file executes code
    path, marker = evil_checkpoint
    with open(path, "rb") as handle:
        if path.read_bytes()[:2] == b"PK":
            torch.load(handle, weights_only=False)
        else:
            pickle.load(handle)
    assert marker.exists()


def test_load_checkpoint_refuses_a_code_carrying_file_without_running_it(evil_checkpoint):
    path, marker = evil_checkpoint
    with pytest.raises(CorruptFileError) as err:
        load_checkpoint(path, flag="--ckpt_path")
    assert str(path) in str(err.value) and "--ckpt_path" in str(err.value)
    assert "could run code" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("flag", ["--ckpt_path", "--model.init_args.encoder_ckpt"])
def test_the_cli_refuses_it_in_one_line(evil_checkpoint, tmp_path, capsys, flag):
    path, marker = evil_checkpoint
    model = {"class_path": "maskrank.tasks.ImageClassifier", "init_args": {"vit": TINY_VIT}}
    cfg = write_config(tmp_path / "cfg.yaml", tmp_path / "runs", model)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "-c", str(cfg), flag, str(path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("maskrank: error: checkpoint")
    assert str(path) in err[0] and flag.lstrip("-") in err[0]
    assert not marker.exists()
