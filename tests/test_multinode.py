"""Multi-node training: two torchrun launchers as two "nodes" meeting at a c10d rendezvous on 127.0.0.1."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
import torch

from conftest import MNIST_DIR, cli_env, need, run_cli

ARGS = ["--model", "lenet5", "--dataset", "mnist", "--train-limit", "640", "--batch-size", "64", "--epochs", "1",
        "--seed", "5", "--augment", "shift", "--threads", "1", "--print-freq", "5", "--quiet", "--output-dir", "run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rank_shards_are_disjoint_and_cover_the_global_batch():
    """The sharding the trainer uses: each rank's slice of a global batch, together exactly one process's batch."""
    from convzoo.data.tensors import Split, batches

    n = 640
    split = Split(torch.zeros(n, 1, 2, 2, dtype=torch.uint8), torch.arange(n), tuple("0123456789"))
    single = [labels for _, _, labels in batches(split, 64, shuffle=True, seed=5, drop_last=True)]
    shards = [[labels for _, _, labels in batches(split, 64, shuffle=True, seed=5, drop_last=True, rank=r,
                                                  world_size=2)] for r in (0, 1)]
    for step, whole in enumerate(single):
        a, b = shards[0][step], shards[1][step]
        assert len(a) == len(b) == 32
        assert not set(a.tolist()) & set(b.tolist())
        assert torch.equal(torch.cat([a, b]), whole)


@pytest.mark.real_data
def test_two_torchrun_nodes_train_like_one_process(tmp_path):
    """Each launcher runs in its own folder (a node's own disk): the rank-0 node alone gets the run
    directory, the job has world size 2, and the weights equal one process's within 1e-5."""
    data = ["--data-path", need(MNIST_DIR)]
    run_cli("train", *ARGS, *data, cwd=tmp_path, check=0)
    single = torch.load(tmp_path / "run" / "last.pt", weights_only=True)

    port = free_port()
    env = cli_env({"OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"})
    nodes = [tmp_path / "node0", tmp_path / "node1"]
    launchers = []
    for folder in nodes:
        folder.mkdir()
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
               "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "convzoo-test",
               "--rdzv-conf", "join_timeout=60", "--max-restarts", "0",
               "-m", "convzoo", "train", *map(str, ARGS + data)]
        launchers.append(subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                          text=True))
    try:
        outputs = [p.communicate(timeout=240) for p in launchers]
    finally:
        for p in launchers:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(launchers, outputs):
        assert p.returncode == 0, err[-3000:]

    # One writer: exactly one node holds the run directory; the other wrote nothing.
    written = [folder for folder in nodes if (folder / "run").exists()]
    assert len(written) == 1, [sorted(p.name for p in f.iterdir()) for f in nodes]
    run = written[0] / "run"
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in (tmp_path / "run").iterdir())
    log = (run / "train.log").read_text()
    assert log.count("convzoo train:") == 1 and "world size 2" in log
    assert "world_size: 2" in (run / "config.yaml").read_text()

    ddp = torch.load(run / "last.pt", weights_only=True)
    for name, tensor in single["state_dict"].items():
        assert torch.allclose(tensor, ddp["state_dict"][name], atol=1e-5, rtol=0), name
    # all-reduced metrics cover the whole global batch, as one process's do
    assert abs(single["history"][-1]["train_loss"] - ddp["history"][-1]["train_loss"]) < 1e-4
    assert single["history"][-1]["train_acc"] == ddp["history"][-1]["train_acc"]
