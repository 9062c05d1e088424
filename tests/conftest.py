"""Shared fixtures: where the real data lives, the real CLI in a subprocess, a real HTTP server."""

from __future__ import annotations

import http.server
import os
import pickle
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

import cli_process

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CONVZOO_SHARED_DATA", ROOT.parent / "shared" / "data"))
MNIST_DIR = SHARED_DATA / "mnist"
CIFAR_DIR = SHARED_DATA / "cifar10"
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


# Under xdist every worker shares the cores: a run that does not say --threads takes 1 thread
# ($OMP_NUM_THREADS, which convzoo reads as the default). Measured here beside one busy process, the
# AlexNet test's training took 184.6 s on 2 threads and 144.4 s on 1 (the 2-thread run also shared the
# cores with a short test run for about 50 s).
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# Files in order of their measured time, longest first (`make test` passes --no-loadscope-reorder so
# xdist keeps this order; its default would sort files by their number of tests): whole files go to
# the workers, so a long file started last would run on alone while the other worker idles.
LONGEST_FIRST = ["test_train.py", "test_quant.py", "test_server.py", "test_distributed.py", "test_run_guards.py",
                 "test_folder.py", "test_photos.py", "test_demo.py", "test_cifar.py", "test_predict_flags.py",
                 "test_cli.py", "test_deploy.py", "test_run_records.py", "test_reuse.py", "test_write_races.py",
                 "test_train_settings.py", "test_fuzz_models.py", "test_ecosystem.py", "test_fast_training.py",
                 "test_images_decode.py", "test_hostile_onnx.py", "test_models.py", "test_fetch.py",
                 "test_fashion_deploy.py", "test_workers.py", "test_fuzz_data.py", "test_runtime.py",
                 "test_foreign_onnx.py"]


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


def need(path: Path) -> Path:
    if not path.exists():
        pytest.fail(f"real data missing: {path} (CI must provide ../shared/data and dataset-fashion-mnist)")
    return path


@pytest.fixture(scope="session", autouse=True)
def fork_server():
    """run_cli's fork server, started before any test sets an environment variable or changes folder:
    what torch and the other preloaded modules read or write as they are imported (TMPDIR, HOME,
    OMP_NUM_THREADS) comes from this session's environment, not from the first test to call run_cli."""
    cli_process.start_server()


@pytest.fixture(scope="session")
def shipped_exports(tmp_path_factory) -> Path | None:
    """A cache folder holding convzoo's own cached ONNX exports of the shipped weights, made once per
    test session (by whichever xdist worker asks first): an export takes 2.5-7 s, and about a hundred
    tests predict or serve with `lenet5:mnist` or `lenet5:fashion-mnist`."""
    from convzoo.deploy.predict import cached_onnx
    from convzoo.models.pretrained import pretrained_path

    folder, lock = shared_across_workers(tmp_path_factory, "shipped-exports")
    with lock:
        if not (folder / "made").is_file():
            shutil.rmtree(folder, ignore_errors=True)
            try:
                with pytest.MonkeyPatch.context() as patch:
                    patch.setenv("CONVZOO_CACHE", str(folder))
                    for name in ("lenet5:mnist", "lenet5:fashion-mnist"):
                        cached_onnx(pretrained_path(name))
            except Exception:  # noqa: BLE001 - the tests that export say why; the others run without the copies
                shutil.rmtree(folder, ignore_errors=True)
                return None
            (folder / "made").touch()
    return folder / "onnx"


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch, shipped_exports):
    """No test reads or writes the user's real cache; $CONVZOO_DATA is unset unless a test sets it.
    Each test's cache starts with copies of the shipped weights' exports (as a user's cache holds them
    after the first prediction); the export itself is tested where the cache is a test's own."""
    cache = tmp_path_factory.mktemp("cache")
    if shipped_exports is not None:
        shutil.copytree(shipped_exports, cache / "onnx")
    monkeypatch.setenv("CONVZOO_CACHE", str(cache))
    monkeypatch.delenv("CONVZOO_DATA", raising=False)


# Variables a fork of a running interpreter can still honour (cli_process.py); any other PYTHON* setting
# is read only as an interpreter starts, so its call gets a fresh one.
FORKABLE_PYTHON_VARIABLES = {"PYTHONDONTWRITEBYTECODE"}


def cli_env(env: dict | None = None, base_env=None) -> dict:
    """A convzoo command's environment: `base_env` (default this process's) with warnings off and `env`."""
    return {**(os.environ if base_env is None else base_env), "PYTHONWARNINGS": "ignore", **(env or {})}


def run_cli(*args, cwd=None, env=None, timeout=600, check=None, fresh=False, base_env=None, preexec_fn=None,
            stdout=None) -> subprocess.CompletedProcess:
    """The real `convzoo` command line in its own process: forked from a server that has torch imported
    (cli_process.py: 2.5-4 s less per call), or in a fresh interpreter when `fresh` is true or `env` sets
    a PYTHON* variable that only a new interpreter would read. The environment: cli_env(env, base_env);
    `preexec_fn` runs in the child before convzoo; `stdout`: a path to write stdout to instead of
    capturing it."""
    args = [str(a) for a in args]
    full_env = cli_env(env, base_env)
    if fresh or any(name.startswith("PYTHON") and name not in FORKABLE_PYTHON_VARIABLES for name in env or {}):
        with open(stdout or os.devnull, "w") as sink:
            proc = subprocess.run([sys.executable, "-m", "convzoo", *args], stdout=sink if stdout else subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, cwd=cwd, env=full_env, timeout=timeout,
                                  preexec_fn=preexec_fn)
        proc.stdout = proc.stdout or ""
    else:
        code, out, err = cli_process.run(args, cwd, full_env, timeout, preexec_fn=preexec_fn, stdout=stdout)
        proc = subprocess.CompletedProcess([sys.executable, "-m", "convzoo", *args], code, out, err)
    if check is not None:
        assert proc.returncode == check, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def start_cli(*args, cwd=None, env=None) -> cli_process.Started:
    """`convzoo ARGS` started in the background (forked as run_cli forks it), for tests that signal,
    kill or race it: a subprocess.Popen-like handle."""
    return cli_process.Started([str(a) for a in args], cwd, cli_env(env))


def assert_user_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, a single `convzoo: error:` line on stderr naming the problem, no traceback."""
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("convzoo: error:")]
    assert len(errors) == 1, proc.stderr
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), f"{fragment!r} not in {errors[0]!r}"
    return errors[0]


def cli_error(capsys, *args, fragments=()) -> str:
    """`convzoo ARGS` in this process (torch is imported already: no interpreter start per case): exit 2
    and exactly one `convzoo: error:` line holding every fragment."""
    from convzoo.cli import main

    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
    assert all(f.lower() in errors[0].lower() for f in fragments), err
    return errors[0]


class FileServer:
    """A real HTTP server on 127.0.0.1 serving `files` (url path -> bytes); `drop` paths send half
    of the body then close the connection; `endless` paths repeat their body until the client hangs
    up, with no Content-Length; `announce` (path -> n) sends Content-Length n whatever the body;
    `hits` counts requests per path."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop: set[str] = set()
        self.endless: set[str] = set()
        self.announce: dict[str, int] = {}
        self.hits: dict[str, int] = {}
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                body = server.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                if self.path in server.endless:
                    self.send_header("Connection", "close")
                    self.end_headers()
                    try:
                        while True:
                            self.wfile.write(body)
                    except OSError:  # the client stopped reading and closed
                        return
                self.send_header("Content-Length", str(server.announce.get(self.path, len(body))))
                self.end_headers()
                if self.path in server.drop:
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def file_server():
    server = FileServer()
    yield server
    server.close()


def shared_across_workers(tmp_path_factory, name: str) -> tuple[Path, FileLock]:
    """A folder that all xdist workers of this test session share, and the lock that guards making it:
    what one worker builds there (under the lock), the others reuse instead of building it again."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the session's folder, above each worker's own
    return root / name, FileLock(str(root / f"{name}.lock"))


@pytest.fixture(scope="session")
def mnist_run(tmp_path_factory):
    """LeNet-5 trained once per test session (by whichever xdist worker asks first) on all 22,699 real
    MNIST training images (4 epochs, scored after the last; channels-last is the faster layout here).
    Tests read it and write only beside it (mnist_onnx: model.onnx, under the same lock)."""
    folder, lock = shared_across_workers(tmp_path_factory, "mnist")
    out = folder / "run"
    with lock:
        if not (folder / "trained").is_file():  # written once the run has finished well
            shutil.rmtree(out, ignore_errors=True)  # a run a failed worker left half-way is not reused
            run_cli("train", "--model", "lenet5", "--dataset", "mnist", "--data-path", need(MNIST_DIR), "--epochs",
                    "4", "--schedule", "onecycle", "--lr", "0.05", "--weight-decay", "5e-4", "--channels-last",
                    "--eval-every", "4", "--output-dir", out, "--quiet", check=0)
            (folder / "trained").touch()
    return out


@pytest.fixture(scope="session")
def airbench_run(tmp_path_factory):
    """The airbench-cifar preset (at batch 128) trained once per test session on 1,024 real CIFAR-10
    training images for 2 epochs (16 steps), scored with flip TTA on the first 1,000 test images
    (measured: 0.269). The recipe's test reads it; the CIFAR int8 test quantizes it (no trained CIFAR
    weights are shipped: 7.5 MiB)."""
    folder, lock = shared_across_workers(tmp_path_factory, "airbench")
    out = folder / "run"
    with lock:
        if not (folder / "trained").is_file():
            shutil.rmtree(out, ignore_errors=True)
            run_cli("train", "--config", "airbench-cifar", "--data-path", need(CIFAR_DIR), "--train-limit", "1024",
                    "--batch-size", "128", "--epochs", "2", "--tta", "flip", "--test-limit", "1000", "--output-dir",
                    out, "--quiet", check=0)
            (folder / "trained").touch()
    return out


@pytest.fixture(scope="session")
def mnist_onnx(mnist_run, tmp_path_factory):
    _, lock = shared_across_workers(tmp_path_factory, "mnist")
    out = mnist_run / "model.onnx"
    with lock:
        if not out.is_file():
            run_cli("export", "--ckpt", mnist_run / "best.pt", "--output", out, check=0)
    return out


def cifar_pickle(images: np.ndarray, labels, **extra) -> bytes:
    """A batch in the layout of cifar-10-batches-py (the official Python pickles torchvision reads)."""
    batch = {"batch_label": "testing batch 1 of 1", "labels": list(map(int, labels)),
             "data": images.reshape(len(images), -1), "filenames": [f"img_{i}.png" for i in range(len(images))]}
    return pickle.dumps({**batch, **extra}, protocol=2)


class RunsCode:
    """Pickles to a call of os.mkdir(marker): what a malicious pickle would do on load."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)
