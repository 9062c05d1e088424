"""Data-parallel training with torchrun and with `--procs` (gloo, 2 CPU processes) against one process;
--sync-bn (BatchNorm over the global batch)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import MNIST_DIR, assert_user_error, cli_env, cli_error, need, run_cli

ARGS = ["--model", "lenet5", "--dataset", "mnist", "--data-path", str(MNIST_DIR), "--train-limit", "1280",
        "--batch-size", "64", "--epochs", "2", "--seed", "3", "--augment", "shift", "--threads", "1",
        "--print-freq", "5", "--quiet"]


def torchrun(nproc: int, *args, timeout=600):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "convzoo", "train", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=cli_env({"OMP_NUM_THREADS": "1"}))


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


def test_a_presets_threads_are_shared_out_under_procs(monkeypatch):
    """`train --config lenet5-fast --procs 2` (the README's example) gave each of the 2 processes the
    preset's 2 threads: 4 threads on 2 cores, 6x slower than 1 each. --threads given stays as given.
    $OMP_NUM_THREADS wins over a preset's threads, as over any default (torchrun sets 1 per rank: each of
    2 ranks ran lenet5-fast's 2)."""
    from convzoo.config import build_config

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert build_config("lenet5-fast", {}).threads == 2
    assert build_config("lenet5-fast", {"procs": 2}).threads == 1
    assert build_config("lenet5-fast", {"procs": 2, "threads": 2}).threads == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert build_config("lenet5-fast", {}).threads == 1
    assert build_config("lenet5-fast", {"threads": 2}).threads == 2


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
                            env=cli_env())
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
@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "convzoo: interrupted"),
                                                (signal.SIGTERM, 143, "convzoo: terminated")])
def test_a_signal_while_the_workers_start_is_an_interruption(tmp_path, signum, code, line):
    """The launcher forwards a Ctrl-C or SIGTERM at once: a worker still importing torch printed a
    KeyboardInterrupt traceback and the run was called crashed ("training process 0 of 2 was killed by
    signal 2", exit 2). Sent once both workers exist (they import torch for seconds before they can train)."""
    cmd = [sys.executable, "-m", "convzoo", "train", *ARGS, "--procs", "2", "--output-dir", str(tmp_path / "run")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env())
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    deadline = time.time() + 120
    while len(children.read_text().split()) < 2:
        assert time.time() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.02)
    time.sleep(0.3)  # the launcher is waiting on them, with its forwarding handlers set
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code and "Traceback" not in err and line in err, err[-2000:]
    assert "killed by signal" not in err


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
    """Every rank finds the error; only rank 0 tells it (each rank printed it: 16 copies for 16 ranks)."""
    proc = torchrun(2, *ARGS[:-1], "--batch-size", "63", "--output-dir", tmp_path / "x")
    assert proc.returncode != 0
    assert proc.stderr.count("convzoo: error: --batch-size 63 is not divisible by the world size 2") == 1, proc.stderr


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


# --sync-bn ------------------------------------------------------------------------------------------------

def sync_bn_worker(rank: int, world: int, folder: str, momentum) -> None:
    """One of 2 gloo ranks: a SyncBatchNorm2d on this rank's half of a batch against BatchNorm2d on all of it."""
    import torch.distributed as dist
    from torch import nn

    from convzoo.engine.distributed import sync_batchnorm

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world)
    torch.manual_seed(0)  # the same batch, weights and output gradient on both ranks
    x, upstream = torch.randn(8, 4, 5, 5) * 3 + 2, torch.randn(8, 4, 5, 5)
    plain = nn.BatchNorm2d(4, momentum=momentum)
    nn.init.uniform_(plain.weight, 0.5, 1.5), nn.init.normal_(plain.bias)
    model = nn.Sequential(nn.BatchNorm2d(4, momentum=momentum))
    model.load_state_dict({f"0.{k}": v for k, v in plain.state_dict().items()})
    assert sync_batchnorm(model) == 1 and type(model[0]).__name__ == "SyncBatchNorm2d"
    shard, whole = x.chunk(world)[rank].clone().requires_grad_(), x.clone().requires_grad_()
    for _ in range(3):  # the running statistics' updates compound
        y, y_plain = model(shard), plain(whole)
    (y * upstream.chunk(world)[rank]).sum().backward()
    (y_plain * upstream).sum().backward()
    weight_grad = model[0].weight.grad.clone()
    dist.all_reduce(weight_grad)  # DDP's sum of the ranks' gradients (before its mean)
    model.eval(), plain.eval()
    torch.save({"y": (y, y_plain.chunk(world)[rank]), "x_grad": (shard.grad, whole.grad.chunk(world)[rank]),
                "weight_grad": (weight_grad, plain.weight.grad), "eval": (model(x), plain(x)),
                "state": ({k[2:]: v for k, v in model.state_dict().items()}, plain.state_dict())},
               f"{folder}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.parametrize("momentum", [0.1, None])
def test_sync_batchnorm_is_batchnorm_over_the_global_batch(tmp_path, momentum):
    """2 gloo ranks, each with half the batch: the outputs, the input and weight gradients (through the
    one all-reduce), the running statistics (momentum 0.1, or None: the cumulative average) and
    num_batches_tracked are BatchNorm2d's on the whole batch, within float rounding (measured: outputs
    7e-7, gradients 4e-6, running_var 3e-6 of values near 9); the state_dict keys are BatchNorm2d's."""
    import torch.multiprocessing as mp

    mp.spawn(sync_bn_worker, args=(2, str(tmp_path), momentum), nprocs=2)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for what in ("y", "x_grad", "weight_grad", "eval"):
            mine, plain = got[what]
            assert torch.allclose(mine, plain, rtol=1e-5, atol=2e-5), (rank, what, (mine - plain).abs().max())
        mine, plain = got["state"]
        assert list(mine) == list(plain)
        for name in plain:
            assert torch.allclose(mine[name].double(), plain[name].double(), rtol=1e-5, atol=1e-6), (rank, name)
        assert int(mine["num_batches_tracked"]) == 3


def test_sync_bn_for_one_process_is_refused(capsys, monkeypatch):
    """Given for one process, --sync-bn would change nothing (its BatchNorm sees the whole batch): one
    line. Carried by a resumed run's (or a preset's) settings onto one process it is kept; under torchrun
    the world size is torchrun's, whatever --procs says."""
    from convzoo.config import build_config

    for env in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(env, raising=False)
    cli_error(capsys, "train", "--model", "airbench", "--dataset", "cifar10", "--sync-bn",
              fragments=["--sync-bn applies to data-parallel training", "already normalises over the whole batch"])
    cli_error(capsys, "train", "--model", "airbench", "--dataset", "cifar10", "--sync-bn", "--procs", "1",
              fragments=["--sync-bn applies to data-parallel training"])
    assert build_config(None, {"model": "airbench", "sync_bn": True, "procs": 2}).sync_bn
    resumed = build_config(None, {"procs": 1}, base={"model": "airbench", "sync_bn": True, "procs": 2})
    assert resumed.sync_bn and resumed.procs == 1
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert build_config(None, {"model": "airbench", "sync_bn": True}).sync_bn


def test_resume_holds_sync_bn_to_the_run():
    """--sync-bn changes what BatchNorm normalises with: a run resumed with it added (or dropped) would no
    longer be the run its history describes."""
    from convzoo.config import TrainConfig
    from convzoo.engine.trainer import check_resumable
    from convzoo.errors import CheckpointError

    old = TrainConfig(model="airbench", epochs=2, procs=2)
    state = {"config": old.to_dict(), "epoch": 1}
    check_resumable(state, TrainConfig(model="airbench", epochs=2, procs=2), "last.pt")
    with pytest.raises(CheckpointError, match="--sync-bn True differs from the run's False"):
        check_resumable(state, TrainConfig(model="airbench", epochs=2, procs=2, sync_bn=True), "last.pt")


@pytest.mark.real_data
def test_sync_bn_on_a_model_without_batchnorm_is_refused(tmp_path):
    """Found by every worker once the model is built; said once, before the run folder is written."""
    assert_user_error(run_cli("train", *ARGS[:ARGS.index("--train-limit")], "--train-limit", "256", "--procs", "2",
                              "--sync-bn", "--quiet", "--output-dir", tmp_path / "run"),
                      "--sync-bn: model lenet5 has no BatchNorm layers")
    assert not (tmp_path / "run").exists()


BN_ARGS = ["--model", "lenet-quant", "--dataset", "mnist", "--augment", "none", "--epochs", "1", "--train-limit", "256",
           "--test-limit", "100", "--batch-size", "128", "--threads", "1", "--deterministic", "--quiet"]


@pytest.fixture(scope="module")
def bn_runs(tmp_path_factory):
    """lenet-quant (conv-BN-ReLU blocks) for 2 steps of batch 128: in one process, in 2 with --sync-bn,
    and in 2 without it."""
    root = tmp_path_factory.mktemp("bn")
    data = ["--data-path", need(MNIST_DIR)]
    run_cli("train", *BN_ARGS, *data, "--output-dir", root / "one", check=0)
    run_cli("train", *BN_ARGS, *data, "--procs", "2", "--sync-bn", "--output-dir", root / "sync", check=0)
    run_cli("train", *BN_ARGS, *data, "--procs", "2", "--output-dir", root / "local", check=0)
    return root


def weight_differences(a: Path, b: Path) -> dict[str, float]:
    one, other = (torch.load(p / "last.pt", weights_only=True)["state_dict"] for p in (a, b))
    assert list(one) == list(other)
    return {k: float((one[k].double() - other[k].double()).abs().max()) for k in one if one[k].is_floating_point()}


@pytest.mark.real_data
@pytest.mark.slow
def test_sync_bn_trains_a_batchnorm_model_like_one_process(bn_runs):
    """--procs 2 --sync-bn gives one process's weights and BatchNorm running statistics (measured: 4.8e-7
    largest weight difference, 6e-8 running_var, after these 2 steps of 128; airbench on CIFAR-10: 3.7e-8 and
    4.8e-7); without it each rank normalises with its own 64 images and they differ (measured: running_var
    1.3e-3 apart, weights 4.7e-5; airbench: 0.12 and 1.2e-4)."""
    synced = weight_differences(bn_runs / "one", bn_runs / "sync")
    assert max(synced.values()) < 1e-5, synced
    local = weight_differences(bn_runs / "one", bn_runs / "local")
    assert max(v for k, v in local.items() if "running_var" in k) > 1e-4, local
    assert max(v for k, v in local.items() if "running" not in k) > 1e-6, local
    assert "world size 2 (BatchNorm synchronised)" in (bn_runs / "sync" / "train.log").read_text()
    assert "BatchNorm synchronised" not in (bn_runs / "local" / "train.log").read_text()


@pytest.mark.real_data
@pytest.mark.slow
def test_a_sync_bn_checkpoint_is_a_plain_models(bn_runs):
    """Its weights load strictly into the registry's lenet-quant (BatchNorm2d), which eval, export and
    quantize build from a checkpoint; its own scoring (eval mode: plain BatchNorm) is the one-process
    run's."""
    from convzoo.models.registry import create_model

    ckpt = torch.load(bn_runs / "sync" / "last.pt", weights_only=True)
    model = create_model("lenet-quant", num_classes=10, in_channels=1)
    model.load_state_dict(ckpt["state_dict"], strict=True)
    assert list(ckpt["state_dict"]) == list(model.state_dict())
    one = torch.load(bn_runs / "one" / "last.pt", weights_only=True)["history"][-1]["test_acc"]
    assert ckpt["history"][-1]["test_acc"] == pytest.approx(one, abs=1e-9)
