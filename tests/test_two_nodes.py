"""The multi-node recipe of docs/guides/streaming.md, run on one machine as two nodes.

Two OS processes of the real CLI (``python -m maskrank fit``), each launched as a node would be:
``--trainer.num_nodes 2 --trainer.devices 1 --trainer.strategy ddp`` with ``MASTER_ADDR``,
``MASTER_PORT`` and ``NODE_RANK`` in its environment (gloo on CPU), over shards written by
``maskrank data optimize`` and streamed by ``StreamingDataModule``. Checked: every training image
exactly once per epoch across the two nodes, none on both, in a new order each epoch; and after
both nodes are SIGKILLed mid-epoch and relaunched with ``--ckpt_path last``, the remaining images
once each and the uninterrupted run's final weights, bit for bit. ``NNODES=2`` makes litdata count
two nodes, as it does on GPU machines (see ``_node_env``).
"""

from __future__ import annotations

import signal
import socket
import subprocess
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

from maskrank.data.stream.optimize import optimize_dataset
from testkit.resume import (
    fit_command,
    max_abs_diff,
    read_steps,
    recorded_flags,
    subprocess_env,
    tiny_mae_model,
    wait_for,
    write_config,
)
from testkit.streaming import stream_config, write_image_folder

NODES = 2
BATCH = 8  # per process: 64 images / (8 x 2 nodes) = 4 steps per epoch
STEPS = 8  # 2 epochs
# The flags every node gets, as in the docs' recipe (one process per node on CPU).
NODE_FLAGS = (
    f"--trainer.num_nodes={NODES}",
    "--trainer.devices=1",
    "--trainer.accelerator=cpu",
    "--trainer.strategy=ddp",
    "--threads=1",  # 4 processes share 2 cores here
)


def _free_port() -> int:
    """A port nothing listens on now; the OS hands out distinct ones to parallel tests."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _node_env(node_rank: int, port: int) -> dict[str, str]:
    """What the docs tell a user to set on every node. ``NNODES`` is litdata's: it derives the
    node count from the GPU count and sees one node on CPU; 2 makes it see what GPU nodes show."""
    env = subprocess_env()
    for name in ("LOCAL_RANK", "WORLD_SIZE", "GLOBAL_RANK", "NODE_RANK", "GROUP_RANK"):
        env.pop(name, None)  # nothing inherited from a launcher that ran pytest
    master = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "NODE_RANK": str(node_rank)}
    return {**env, **master, "NNODES": str(NODES)}


def _config(path: Path, runs: Path, root: Path, name: str) -> Path:
    """The tiny MAE on the streamed shards, 2 epochs, ``last.ckpt`` every 3 steps, no validation."""
    checkpoint = {"every_n_train_steps": 3, "monitor": None}
    write_config(path, runs, tiny_mae_model(), name, checkpoint, max_epochs=2, limit_val_batches=0)
    cfg = yaml.safe_load(path.read_text())
    cfg["data"] = stream_config(root, batch_size=BATCH, num_workers=0)
    path.write_text(yaml.safe_dump(cfg))
    return path


class _Nodes:
    """Launches fits as two nodes; every process it started is killed and reaped on exit."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[subprocess.Popen] = []
        self.ports: set[int] = set()  # a port handed out again before its fit bound it

    def launch(
        self, cfg: Path, name: str, *flags: str, pause_at: int | None = None
    ) -> list[subprocess.Popen]:
        """Node ``k`` records its steps and final weights in ``<name><k>.log`` / ``.pt``, the image
        ids it trained on in ``<name>_seen/rank<k>_epoch<e>``, its stderr in ``<name><k>.err``."""
        seen = self.tmp_path / f"{name}_seen"
        seen.mkdir()
        port = _free_port()
        while port in self.ports:
            port = _free_port()
        self.ports.add(port)
        nodes = []
        for k in range(NODES):
            log, final = self.tmp_path / f"{name}{k}.log", self.tmp_path / f"{name}{k}.pt"
            command = fit_command(
                cfg,
                *NODE_FLAGS,
                *flags,
                "--trainer.callbacks+=testkit.streaming.SeenIds",
                f"--trainer.callbacks.folder={seen}",
                *recorded_flags(log, final, pause_at),
            )
            with (self.tmp_path / f"{name}{k}.err").open("w") as err:
                process = subprocess.Popen(command, env=_node_env(k, port), stderr=err)
            self.started.append(process)
            nodes.append(process)
        return nodes

    def wait(self, nodes: list[subprocess.Popen], name: str) -> None:
        for k, process in enumerate(nodes):
            status = process.wait(timeout=300)
            assert status == 0, (self.tmp_path / f"{name}{k}.err").read_text()[-3000:]

    def __enter__(self) -> _Nodes:
        return self

    def __exit__(self, *exc) -> None:
        for process in self.started:
            if process.poll() is None:
                process.kill()
            process.wait()


def _has_paused(log: Path) -> bool:
    return "paused" in read_steps(log)


def _seen(folder: Path, epoch: int) -> list[list[int]]:
    """The image ids each node trained on in ``epoch``, in order."""
    files = [folder / f"rank{k}_epoch{epoch}" for k in range(NODES)]
    return [[int(v) for v in f.read_text().split()] if f.exists() else [] for f in files]


@pytest.mark.slow
def test_two_nodes_stream_every_image_once_and_resume_after_sigkill_exactly(tmp_path):
    src = write_image_folder(tmp_path / "src", train=64, val=16)
    root = tmp_path / "shards"
    optimize_dataset(str(src), str(root), workers=1, progress=False)
    runs = tmp_path / "runs"
    ref_cfg = _config(tmp_path / "ref.yaml", runs, root, "ref")
    cfg = _config(tmp_path / "cfg.yaml", runs, root, "exp")
    last = runs / "exp" / "version_0" / "checkpoints" / "last.ckpt"

    with _Nodes(tmp_path) as nodes:
        reference = nodes.launch(ref_cfg, "ref")
        # paused after step 7, before its checkpoint: last.ckpt holds step 6, batch 2 of epoch 1
        killed = nodes.launch(cfg, "killed", pause_at=7)
        for k, process in enumerate(killed):
            paused = partial(_has_paused, tmp_path / f"killed{k}.log")
            wait_for(paused, process, f"node {k} at step 7", timeout=300.0)
        step6 = torch.load(last, weights_only=True)
        assert step6["global_step"] == 6
        for process in killed:
            process.send_signal(signal.SIGKILL)
        assert [p.wait(timeout=30) for p in killed] == [-signal.SIGKILL] * NODES
        resumed = nodes.launch(cfg, "resumed", "--ckpt_path", "last")
        nodes.wait(resumed, "resumed")
        nodes.wait(reference, "ref")

    orders = []
    for epoch in range(2):
        ranks = _seen(tmp_path / "ref_seen", epoch)
        assert [len(r) for r in ranks] == [32, 32]  # 4 batches of 8 on each node
        assert not set(ranks[0]) & set(ranks[1])
        assert sorted(ranks[0] + ranks[1]) == list(range(64))
        orders.append(ranks)
    assert orders[0] != orders[1]

    # the resumed nodes train exactly the rest of epoch 1 (steps 7, 8), each what it would have
    for k in range(NODES):
        assert read_steps(tmp_path / f"resumed{k}.log") == [
            "start 6",
            *map(str, range(7, STEPS + 1)),
        ]
    assert _seen(tmp_path / "resumed_seen", 0) == [[], []]
    assert _seen(tmp_path / "resumed_seen", 1) == [r[2 * BATCH :] for r in orders[1]]

    final = [torch.load(tmp_path / f"resumed{k}.pt", weights_only=True) for k in range(NODES)]
    uninterrupted = [torch.load(tmp_path / f"ref{k}.pt", weights_only=True) for k in range(NODES)]
    assert max_abs_diff(final[0], uninterrupted[0]) == 0.0
    assert max_abs_diff(final[1], final[0]) == 0.0  # the nodes stayed in sync
    assert max_abs_diff(uninterrupted[1], uninterrupted[0]) == 0.0
    assert max_abs_diff(final[0], step6["state_dict"]) > 1e-6  # the resumed nodes did train
