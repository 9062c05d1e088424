"""Data-parallel training with torchrun (gloo, 2 CPU processes) against one process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from conftest import MNIST_DIR, run_cli

ARGS = ["--model", "lenet5", "--dataset", "mnist", "--data-path", str(MNIST_DIR), "--train-limit", "1280",
        "--batch-size", "64", "--epochs", "2", "--seed", "3", "--augment", "shift", "--threads", "1",
        "--print-freq", "5", "--quiet"]


def torchrun(nproc: int, *args, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "convzoo", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"})


@pytest.mark.real_data
def test_two_process_ddp_equals_one_process(tmp_path):
    run_cli("train", *ARGS, "--output-dir", tmp_path / "single", check=0)
    proc = torchrun(2, *ARGS, "--output-dir", tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    for name, tensor in single["state_dict"].items():
        assert torch.allclose(tensor, ddp["state_dict"][name], atol=1e-5, rtol=0), name
    # all-reduced metrics agree too, and rank 0 alone wrote the run directory once
    assert abs(single["history"][-1]["train_loss"] - ddp["history"][-1]["train_loss"]) < 1e-4
    log = (tmp_path / "ddp" / "train.log").read_text()
    assert log.count("convzoo train:") == 1 and "world size 2" in log
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir())


@pytest.mark.real_data
def test_world_size_must_divide_batch(tmp_path):
    proc = torchrun(2, *ARGS[:-1], "--batch-size", "63", "--output-dir", tmp_path / "x")
    assert proc.returncode != 0
    assert "--batch-size 63 is not divisible by the world size 2" in proc.stderr


@pytest.mark.real_data
def test_dead_rank_stops_the_job(tmp_path):
    """SIGKILL one worker mid-training: torchrun takes the job down and says which rank died."""
    import signal
    import time

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "convzoo",
           "train", "--model", "lenet5", "--dataset", "mnist", "--data-path", str(MNIST_DIR), "--epochs", "20",
           "--threads", "1", "--print-freq", "20", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    log = tmp_path / "run" / "train.log"
    deadline = time.time() + 120
    while not (log.exists() and "step:" in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.2)
    workers = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    started = time.time()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert time.time() - started < 120, "the surviving rank hung"
    assert "exitcode" in err and ("Signal 9" in err or "SIGKILL" in err), err[-2000:]
