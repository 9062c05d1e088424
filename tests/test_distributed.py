"""Data-parallel training with torchrun and with `--procs` (gloo, 2 CPU processes) against one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import MNIST_DIR, assert_user_error, run_cli

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
    """torchrun's 2 ranks, and convzoo's own `--procs 2`, give one process's weights and metrics."""
    run_cli("train", *ARGS, "--output-dir", tmp_path / "single", check=0)
    proc = torchrun(2, *ARGS, "--output-dir", tmp_path / "ddp")
    assert proc.returncode == 0, proc.stderr[-3000:]
    procs = run_cli("train", *ARGS, "--procs", "2", "--output-dir", tmp_path / "procs", check=0)
    assert procs.stderr.count("convzoo train:") == 0 and "world size 2" in (tmp_path / "procs" / "train.log").read_text()
    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    for run in ("ddp", "procs"):
        ddp = torch.load(tmp_path / run / "last.pt", weights_only=True)
        for name, tensor in single["state_dict"].items():
            assert torch.allclose(tensor, ddp["state_dict"][name], atol=1e-5, rtol=0), (run, name)
        # all-reduced metrics agree too, and rank 0 alone wrote the run directory once
        assert abs(single["history"][-1]["train_loss"] - ddp["history"][-1]["train_loss"]) < 1e-4
        log = (tmp_path / run / "train.log").read_text()
        assert log.count("convzoo train:") == 1 and "world size 2" in log
        assert sorted(p.name for p in (tmp_path / run).iterdir()) == sorted(
            p.name for p in (tmp_path / "single").iterdir())


def test_a_presets_threads_are_shared_out_under_procs():
    """`train --config lenet5-fast --procs 2` (the README's example) gave each of the 2 processes the
    preset's 2 threads: 4 threads on 2 cores, 6x slower than 1 each. --threads given stays as given."""
    from convzoo.config import build_config

    assert build_config("lenet5-fast", {}).threads == 2
    assert build_config("lenet5-fast", {"procs": 2}).threads == 1
    assert build_config("lenet5-fast", {"procs": 2, "threads": 2}).threads == 2


@pytest.mark.real_data
def test_procs_user_errors_are_one_line(tmp_path):
    """Checked before any worker starts (batch split), or found by every worker (data path): one line, once."""
    assert_user_error(run_cli("train", *ARGS, "--procs", "2", "--batch-size", "63", "--output-dir", tmp_path / "a"),
                      "--batch-size 63 is not divisible by --procs 2")
    missing = tmp_path / "no-such-folder"
    assert_user_error(run_cli("train", *[a if a != str(MNIST_DIR) else missing for a in ARGS], "--procs", "2",
                              "--output-dir", tmp_path / "b"), str(missing))
    assert_user_error(run_cli("train", *ARGS, "--procs", "0"), "--procs must be in 1..256")


def kill_second_worker(cmd: list[str], run: Path) -> tuple[subprocess.Popen, list[int], float]:
    """Start `cmd` (a launcher of 2 training workers), SIGKILL its second child once training has
    logged a step; the launcher, the workers' pids and the time of the kill."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONWARNINGS": "ignore"})
    log = run / "train.log"
    deadline = time.time() + 120
    while not (log.exists() and "step:" in log.read_text()):
        assert time.time() < deadline and proc.poll() is None, "training did not start"
        time.sleep(0.2)
    workers = [int(p) for p in open(f"/proc/{proc.pid}/task/{proc.pid}/children").read().split()]
    assert len(workers) == 2
    os.kill(workers[1], signal.SIGKILL)
    return proc, workers, time.time()


@pytest.mark.real_data
def test_procs_dead_worker_stops_the_job(tmp_path):
    """SIGKILL rank 1 of `--procs 2`: the launcher stops rank 0 at once and says which process died."""
    cmd = [sys.executable, "-m", "convzoo", "train", *ARGS[:-3], "--train-limit", "0", "--epochs", "20",
           "--print-freq", "5", "--procs", "2", "--output-dir", str(tmp_path / "run")]
    proc, workers, killed = kill_second_worker(cmd, tmp_path / "run")
    _, err = proc.communicate(timeout=120)
    assert time.time() - killed < 60, "the surviving rank was not stopped"
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    assert "training process 1 of 2 was killed by signal 9; the others were stopped" in err, err[-2000:]
    for pid in workers:
        assert not os.path.exists(f"/proc/{pid}") or "zombie" in open(f"/proc/{pid}/status").read().lower()


@pytest.mark.real_data
def test_world_size_must_divide_batch(tmp_path):
    proc = torchrun(2, *ARGS[:-1], "--batch-size", "63", "--output-dir", tmp_path / "x")
    assert proc.returncode != 0
    assert "--batch-size 63 is not divisible by the world size 2" in proc.stderr


@pytest.mark.real_data
def test_dead_rank_stops_the_job(tmp_path):
    """SIGKILL one worker mid-training: torchrun takes the job down and says which rank died."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "convzoo",
           "train", "--model", "lenet5", "--dataset", "mnist", "--data-path", str(MNIST_DIR), "--epochs", "20",
           "--threads", "1", "--print-freq", "20", "--output-dir", str(tmp_path / "run")]
    proc, _, killed = kill_second_worker(cmd, tmp_path / "run")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert time.time() - killed < 120, "the surviving rank hung"
    assert "exitcode" in err and ("Signal 9" in err or "SIGKILL" in err), err[-2000:]
