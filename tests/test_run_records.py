"""What a run records about itself: a --logger mlflow whose server does not answer fails at once and
leaves no run folder behind; a resumed run's wall clock and per-step time cover the time before the
interruption; every `train --json` line names its event."""

from __future__ import annotations

import http.server
import json
import re
import resource
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import MNIST_DIR, assert_user_error, need, run_cli
from test_run_guards import sigterm_when

TINY = ["train", "--model", "lenet5", "--dataset", "mnist", "--epochs", "1", "--train-limit", "300", "--test-limit",
        "100", "--threads", "1"]


def files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


def refused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, noted, closed)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RUN_INFO = {"run_id": "r1", "run_uuid": "r1", "experiment_id": "1", "user_id": "u", "status": "RUNNING",
            "start_time": 0, "artifact_uri": "file:///nowhere", "lifecycle_stage": "active", "run_name": "r"}
TRACKING_ANSWERS = {"experiments/create": {"experiment_id": "1"}, "runs/create": {"run": {"info": RUN_INFO,
                                                                                           "data": {}}}}


class FakeTracking:
    """A real HTTP server on 127.0.0.1: every request answers 500, or with `probe_ok` the experiment
    lookup answers as MLflow does for a missing experiment (404 RESOURCE_DOES_NOT_EXIST) and everything
    else (creating it) 500. `batches_until_down`: it answers creating the experiment and the run as
    MLflow's REST API does, takes that many log-batch calls, then goes down (connections refused).
    `on_create`: called before answering the request that creates the experiment (the run folder is
    prepared by then; the probe came before it). `hits` counts requests."""

    def __init__(self, *, probe_ok: bool, batches_until_down: int | None = None, on_create=None):
        self.hits = self.batches = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                owner.hits += 1
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                known = next((v for k, v in TRACKING_ANSWERS.items() if self.path.endswith(k)), None)
                if on_create and self.path.endswith("experiments/create"):
                    on_create()
                if probe_ok and "experiments/get-by-name" in self.path:
                    status, body = 404, {"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no such experiment"}
                elif batches_until_down is not None and known is not None:
                    status, body = 200, known
                elif batches_until_down is not None and self.path.endswith("runs/log-batch"):
                    owner.batches += 1
                    status, body = 200, {}
                    if owner.batches == batches_until_down:  # after this answer
                        threading.Thread(target=owner.close).start()
                else:
                    status, body = 500, {"error_code": "INTERNAL_ERROR", "message": "the database is down"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_PUT = answer

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.uri = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(autouse=True)
def mlflow_defaults(monkeypatch):
    """MLflow's own settings as a user who never set them has them."""
    for name in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_EXPERIMENT_NAME",
                 "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(name, raising=False)


def train_with_mlflow(uri: str, run: Path, *extra) -> tuple[subprocess.CompletedProcess, float]:
    env = {"MLFLOW_TRACKING_URI": uri}
    start = time.monotonic()
    # MLflow's own retries took 260 s before the one line: the timeout fails the old behaviour
    proc = run_cli(*TINY, "--data-path", need(MNIST_DIR), "--output-dir", run, "--logger", "mlflow", *extra,
                   env=env, timeout=120)
    return proc, time.monotonic() - start


@pytest.mark.real_data
def test_mlflow_server_refusing_connections_fails_at_once_without_a_run_folder(tmp_path):
    """An http MLFLOW_TRACKING_URI on a port nothing listens on: 260 s of silence, then a run folder
    with config.yaml, an empty train.log and the lock, which a retry without --logger refused. Now
    one line naming the URI within seconds, before the run folder is created."""
    uri = f"http://127.0.0.1:{refused_port()}"
    run = tmp_path / "runs" / "mlbad"
    proc, took = train_with_mlflow(uri, run)
    assert_user_error(proc, uri, "cannot be reached", "refused")
    assert took < 60, took
    assert not (tmp_path / "runs").exists()


@pytest.mark.real_data
def test_mlflow_server_answering_500_fails_at_once_and_leaves_the_folder_as_it_was(tmp_path):
    """A server that answers every request with HTTP 500 (MLflow retried each 7 times with backoff, for
    minutes): one line naming the URI and the status, no run folder. One that passes the first look
    but fails to create the experiment: MLflow's setup tries once, and the folder it had prepared is
    left as it was, an --exist-ok folder's old run included."""
    server = FakeTracking(probe_ok=False)
    try:
        run = tmp_path / "runs" / "ml500"
        proc, took = train_with_mlflow(server.uri, run)
        assert_user_error(proc, server.uri, "HTTP 500")
        assert took < 60 and server.hits == 1, (took, server.hits)
        assert not (tmp_path / "runs").exists()
    finally:
        server.close()

    server = FakeTracking(probe_ok=True)
    try:
        run = tmp_path / "late"
        proc, took = train_with_mlflow(server.uri, run)
        assert_user_error(proc, server.uri, "failed")
        assert took < 60 and server.hits <= 4, (took, server.hits)
        assert not run.exists()
        run.mkdir()  # an old run's files, which --exist-ok removes only once the run has started
        (run / "config.yaml").write_text("model: lenet5\n")
        (run / "last.pt").write_bytes(b"old checkpoint")
        (run / "train.log").write_text("old log\n")
        before = files(run)
        proc, took = train_with_mlflow(server.uri, run, "--exist-ok")
        assert_user_error(proc, server.uri, "failed")
        assert took < 60
        assert files(run) == before
    finally:
        server.close()


@pytest.mark.real_data
def test_a_failed_start_removes_only_what_it_created_not_a_sibling_run(tmp_path):
    """`train --output-dir exp/a` with exp/ new, failing on its logger while `exp/b` trained beside it:
    the rollback removed exp/ whole (shutil.rmtree of the outermost folder it had created), and run b
    died on 'evals.csv: cannot write'. Now it removes its own folder and then each folder it created
    only while empty: exp/b's files stay. The sibling appears while the failing run's start is between
    creating exp/a and its rollback (the server creates it on the experiment-creation request)."""
    exp = tmp_path / "exp"
    sibling = exp / "b" / "metrics.csv"

    def other_run_appears():
        sibling.parent.mkdir()
        sibling.write_text("epoch\n1\n")

    for target, appears in ((exp / "a", other_run_appears), (tmp_path / "exp2" / "x" / "a", None)):
        server = FakeTracking(probe_ok=True, on_create=appears)
        try:
            proc, _ = train_with_mlflow(server.uri, target)
        finally:
            server.close()
        assert_user_error(proc, server.uri, "failed")
    assert sibling.read_text() == "epoch\n1\n"
    assert sorted(p.name for p in exp.iterdir()) == ["b"]  # its own folder went, lock and all
    # where nothing appeared, every folder it created went (exp2/x/a, exp2/x and exp2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]


@pytest.mark.real_data
def test_a_tracking_server_that_goes_down_mid_run_costs_a_warning_not_the_run(tmp_path):
    """The server took the run's set-up and its first epoch, then went down: MLflow retried each later
    request for about 4 minutes and the error ended the training with a traceback. Now one warning line,
    the logger dropped, and the run trains to its end with every epoch in metrics.csv."""
    server = FakeTracking(probe_ok=True, batches_until_down=2)  # the params, then epoch 1's metrics
    try:
        run = tmp_path / "run"
        proc, _ = train_with_mlflow(server.uri, run, "--epochs", "3")  # its timeout fails the old behaviour
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
        warnings = [line for line in proc.stderr.splitlines() if "MLflow" in line]
        assert len(warnings) == 1 and "Connection refused" in warnings[0] and "training goes on" in warnings[0], \
            proc.stderr
        assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 3 and (run / "best.pt").is_file()
        assert server.batches == 2, server.batches
    finally:
        server.close()


def small_files_only():
    """The kernel's file-size limit (no root needed): a checkpoint (about 500 KB) fails with EFBIG,
    train.log and evals.csv do not."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))


@pytest.mark.real_data
def test_a_save_that_failed_and_a_resume_record_each_evaluation_once(tmp_path):
    """Epoch 3's evaluation went to evals.csv, then its best.pt could not be written (a full disk);
    the resume from last.pt (epoch 2) trained and evaluated epoch 3 again and appended a second
    '3,...,test,0.448' row, while metrics.csv (rewritten from last.pt's history) had it once. Now the
    resume drops the rows past last.pt's position first."""
    run = tmp_path / "run"
    args = [*TINY, "--data-path", need(MNIST_DIR), "--schedule", "constant", "--output-dir", run]
    run_cli(*args, "--epochs", "2", check=0)
    proc = run_cli(*args, "--epochs", "3", "--resume", preexec_fn=small_files_only, fresh=True,
                   env={"PYTHONDONTWRITEBYTECODE": "1"})  # a new interpreter: its imports' writes are limited too
    assert_user_error(proc, ".pt: cannot write: File too large")  # best.pt, or last.pt if no better
    assert [row.split(",")[1] for row in (run / "evals.csv").read_text().splitlines()] == ["epoch", "1", "2", "3"]
    run_cli(*args, "--epochs", "3", "--resume", check=0)
    evals = [row.split(",") for row in (run / "evals.csv").read_text().splitlines()]
    assert [row[1] for row in evals[1:]] == ["1", "2", "3"], evals  # each epoch's evaluation once
    metrics = (run / "metrics.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in metrics[1:]] == ["1", "2", "3"]
    assert [float(row[4]) for row in evals[1:]] == [float(line.split(",")[4]) for line in metrics[1:]]


def log_lines(folder: Path, start: str) -> list[str]:
    return [line for line in (folder / "train.log").read_text().splitlines() if line.startswith(start)]


@pytest.mark.real_data
def test_resume_continues_the_wall_clock_and_per_step_time_and_says_so_in_json(tmp_path):
    """After a SIGTERM and --resume, wall_s (metrics.csv, evals.csv, summary.json) began again at 0
    (epoch 1: epoch_time_s 5.90 beside wall_s 3.08), and "per step time" divided the whole epoch's time
    by the steps run since the resume. last.pt now records the wall clock and the steps its epoch time
    covers; the resume continues both, and its JSON output has a "resumed" event."""
    run = tmp_path / "run"
    args = [*TINY, "--data-path", need(MNIST_DIR), "--batch-size", "100", "--steps-per-epoch", "300",
            "--print-freq", "1", "--output-dir", run]
    code, err = sigterm_when(args, lambda: (run / "train.log").is_file()
                             and "step: [ 100/" in (run / "train.log").read_text(), poll=0.02)
    assert code == 143, err[-2000:]
    from convzoo.engine.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "last.pt")
    stopped = saved["step"]
    assert 100 <= stopped < 300
    assert saved["wall_s"] >= saved["epoch_accumulators"]["time"] > 0
    assert saved["epoch_accumulators"]["steps"] == stopped

    proc = run_cli(*args, "--resume", "--json", check=0)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert all("event" in e for e in events), [e for e in events if "event" not in e]
    resumed = [e for e in events if e["event"] == "resumed"]
    assert len(resumed) == 1 and resumed[0]["epoch"] == 1 and resumed[0]["step"] == stopped
    assert resumed[0]["path"] == str(run / "last.pt")

    rows = (run / "metrics.csv").read_text().splitlines()
    header, row = rows[0].split(","), dict(zip(rows[0].split(","), rows[1].split(",")))
    assert "wall_s" in header
    epoch_time, wall = float(row["epoch_time_s"]), float(row["wall_s"])
    assert wall >= epoch_time > saved["epoch_accumulators"]["time"], (wall, epoch_time)
    evals = (run / "evals.csv").read_text().splitlines()
    assert float(evals[-1].split(",")[0]) >= epoch_time
    line = log_lines(run, "Epoch time:")[-1]
    epoch_ms, step_ms = map(float, re.findall(r"[\d.]+(?=,)", line)[:2])
    assert step_ms * 300 == pytest.approx(epoch_ms, rel=0.01), line  # all 300 steps, not the 300 - stopped run last
    epoch_event = next(e for e in events if e["event"] == "epoch_time")
    assert epoch_event["step_ms"] * 300 == pytest.approx(epoch_event["epoch_time_s"] * 1000, rel=0.01)

    # --restore and --freeze: their JSON lines name their events too
    proc = run_cli(*TINY, "--data-path", MNIST_DIR, "--batch-size", "100", "--restore", run / "best.pt",
                   "--restore-exclude", "fc3.*", "--freeze", "conv1.*", "--output-dir", tmp_path / "reuse", "--json",
                   check=0)
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]
    assert all("event" in e for e in events), [e for e in events if "event" not in e]
    restore = next(e for e in events if e["event"] == "restore")
    assert restore["path"] == str(run / "best.pt") and restore["restore"]["excluded"] == ["fc3.weight", "fc3.bias"]
    frozen = next(e for e in events if e["event"] == "frozen")
    assert frozen["frozen"] == ["conv1.weight", "conv1.bias"]


def test_a_last_pt_from_before_the_wall_clock_resumes_from_its_history():
    """A last.pt written before wall_s and the meter's step count were recorded: the wall clock goes on
    from the last finished epoch's wall_s (0 without one), and the epoch's saved time covers the steps
    up to the resume."""
    from convzoo.engine.trainer import EpochMeter, resumed_wall

    assert resumed_wall({"history": []}) == 0.0
    assert resumed_wall({"history": [{"epoch": 1, "wall_s": 12.5}]}) == 12.5
    assert resumed_wall({"history": [{"epoch": 1, "wall_s": None}]}) == 0.0
    assert resumed_wall({"history": [{"epoch": 1, "wall_s": 12.5}], "wall_s": 20.0}) == 20.0
    old = {"loss_sum": 3.0, "correct": 7, "seen": 10, "time": 2.0}
    meter = EpochMeter.start(old, torch.device("cpu"), lr=0.1, first=40)
    assert meter.steps == 40 and meter.elapsed() >= 2.0
    assert EpochMeter.start({**old, "steps": 25}, torch.device("cpu"), lr=0.1, first=40).steps == 25
    assert EpochMeter.start(None, torch.device("cpu"), lr=0.1).steps == 0


@pytest.mark.parametrize("field, value", [("wall_s", float("nan")), ("wall_s", -1.0), ("wall_s", "12"),
                                          ("steps", 10**6), ("steps", -3)])
def test_a_forged_wall_clock_or_step_count_is_refused(field, value):
    from convzoo.engine.checkpoint import check_clocks
    from convzoo.errors import CheckpointError

    state = {"step": 50, "epoch_accumulators": {"loss_sum": 1.0, "correct": 1, "seen": 2, "time": 1.0}}
    if field == "wall_s":
        state["wall_s"] = value
    else:
        state["epoch_accumulators"]["steps"] = value
    with pytest.raises(CheckpointError, match="cannot resume"):
        check_clocks(state, "last.pt")
