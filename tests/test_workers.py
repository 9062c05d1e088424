"""`convzoo serve --workers 2` on Linux (deploy/workers.py): one listening socket per worker,
connections spread over both, a second server on the port refused, a killed or frozen worker
replaced on its socket, every stop signal (and the parent's death) ending every worker, and a worker
that cannot start its app stopping the server with one line. The real CLI on 127.0.0.1, real sockets."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from convzoo.deploy.workers import listeners

from conftest import assert_user_error, run_cli
from test_deploy import mnist_test, png_bytes, serving

pytestmark = [pytest.mark.real_data,
              pytest.mark.skipif(sys.platform != "linux", reason="one socket per worker is Linux's SO_REUSEPORT")]


def listening(port: int) -> int:
    return listeners(("127.0.0.1", port))


def workers_of(pid: int) -> list[int]:
    """The worker processes of the server `pid` (not multiprocessing's resource tracker)."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
    except FileNotFoundError:
        return True


def wait_for(condition, what: str, seconds: float = 60):
    deadline = time.monotonic() + seconds
    while not (result := condition()):
        assert time.monotonic() < deadline, what
        time.sleep(0.1)
    return result


def predict_on(connection: http.client.HTTPConnection, png: bytes) -> None:
    connection.request("POST", "/v1/predict", body=png, headers={"content-type": "image/png"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    response.read()


def fresh_predictions(port: int, png: bytes, count: int) -> None:
    """`count` requests, each on a new connection (so the kernel spreads them over the sockets)."""
    for _ in range(count):
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        predict_on(connection, png)
        connection.close()


def requests_seen(connection: http.client.HTTPConnection) -> int:
    """convzoo_batch_requests_total of the worker that holds this connection."""
    connection.request("GET", "/metrics")
    text = connection.getresponse().read().decode()
    return int(float(next(line.split()[1] for line in text.splitlines()
                          if line.startswith("convzoo_batch_requests_total "))))


def test_connections_spread_over_one_socket_per_worker_and_the_port_is_ours(mnist_onnx, tmp_path):
    """uvicorn's shared socket let one worker accept a whole burst (50 of 64 connections measured);
    here each worker listens on its own and the kernel spreads the burst over both. Sockets that
    share a port (SO_REUSEPORT) would also let another `convzoo serve` on it silently take half the
    traffic, perhaps with another model: that one is refused."""
    png = png_bytes(mnist_test(1)[0][0][0])
    with serving(mnist_onnx, "--workers", "2", log=tmp_path / "serve.log") as (url, proc):
        port = urlsplit(url).port
        assert listening(port) == 2
        burst = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(64)]
        connections = []
        for sock in burst:  # one request per connection: a worker's count is its number of connections
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            connection.sock = sock
            predict_on(connection, png)
            connections.append(connection)
        seen = [requests_seen(c) for c in connections]
        for c in connections:
            c.close()
        # Each connection reports its worker's count n, and n connections report it: two workers.
        assert round(sum(1 / n for n in seen)) == 2, seen
        # Spread by a hash: a worker gets 12 or fewer of 64 with probability ~1e-7.
        assert 12 < min(seen) and max(seen) < 52, sorted(set(seen))

        for workers in ("2", "1"):
            second = run_cli("serve", "--model", mnist_onnx, "--port", port, "--workers", workers, timeout=60)
            assert_user_error(second, f"127.0.0.1:{port}", "in use")
            assert "convzoo serve:" not in second.stdout
        assert listening(port) == 2


def test_a_killed_or_frozen_worker_is_replaced_on_its_socket(mnist_onnx, tmp_path):
    png = png_bytes(mnist_test(1)[0][0][0])
    log = tmp_path / "serve.log"
    with serving(mnist_onnx, "--workers", "2", log=log) as (url, proc):
        port = urlsplit(url).port
        first = workers_of(proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        # Connections the kernel hashes to the dead worker's socket wait there for its replacement.
        fresh_predictions(port, png, 32)
        second = wait_for(lambda: len(now := workers_of(proc.pid)) == 2 and now, "no replacement")
        assert first[1] in second and first[0] not in second and listening(port) == 2
        assert f"worker {first[0]} died" in log.read_text()

        # A stopped (or deadlocked) process keeps its socket's share of new connections: it must go.
        frozen = second[0]
        os.kill(frozen, signal.SIGSTOP)
        wait_for(lambda: f"worker {frozen} did not answer" in log.read_text(), "the frozen worker stayed", 30)
        wait_for(lambda: len(now := workers_of(proc.pid)) == 2 and frozen not in now, "no replacement")
        fresh_predictions(port, png, 32)
        proc.terminate()
        assert proc.wait(30) == 0
        assert listening(port) == 0 and all(gone(pid) for pid in first + second)


@pytest.mark.parametrize("how", ["ctrl-c", "SIGHUP", "parent SIGKILL"])
def test_every_way_of_stopping_ends_every_worker(mnist_onnx, tmp_path, how):
    """Ctrl-C reaches every process of the terminal's group: one quiet stop, no traceback from the
    workers; SIGHUP (a closed terminal) stops too, and workers never outlive a killed parent."""
    log = tmp_path / "serve.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "convzoo", "serve", "--model", str(mnist_onnx), "--port", "0",
                                 "--workers", "2"], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port = int(wait_for(lambda: re_port(log.read_text()), log.read_text() if log.exists() else "no log"))
        conn = wait_for(lambda: answers(port), "never answered")
        conn.close()
        workers = wait_for(lambda: len(w := workers_of(proc.pid)) == 2 and w, "no workers")
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGHUP if how == "SIGHUP" else signal.SIGKILL)
        code = proc.wait(30)
        wait_for(lambda: all(gone(pid) for pid in workers) and listening(port) == 0, "a worker outlived the stop", 30)
        text = log.read_text()
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
        assert code == (-signal.SIGKILL if how == "parent SIGKILL" else 0), (code, text)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def re_port(text: str) -> str | None:
    import re

    found = re.search(r"http://127\.0\.0\.1:(\d+)/", text)
    return found and found[1]


def answers(port: int):
    try:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/healthz")
        return connection if connection.getresponse().status == 200 else None
    except OSError:
        return None


def test_a_worker_that_cannot_start_stops_the_server_with_one_line(tmp_path):
    """The model checked by the parent can be gone (or broken) by the time a worker loads it: one
    line and exit 2, not a traceback per worker and a restart loop."""
    script = tmp_path / "broken.py"
    script.write_text(textwrap.dedent("""
        import sys
        from convzoo.deploy import workers
        from convzoo.errors import ConfigError

        def broken_app():
            raise ConfigError("model file not found", "gone.onnx")

        if __name__ == "__main__":
            sys.exit(workers.run(broken_app, {}, workers.bind_each("127.0.0.1", 0, 2)))
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert_user_error(proc, "gone.onnx", "model file not found")
    assert proc.stderr.count("\n") == 1, proc.stderr
