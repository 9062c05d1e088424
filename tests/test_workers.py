"""`convzoo serve --workers 2` on Linux: one listening socket per worker, connections spread over
both, a second server on the same port refused, a killed worker replaced on its socket, and the
parent's SIGTERM stopping everything. The real CLI on 127.0.0.1, real sockets."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from conftest import assert_user_error, run_cli
from test_deploy import mnist_test, png_bytes, serving

pytestmark = [pytest.mark.real_data,
              pytest.mark.skipif(sys.platform != "linux", reason="one socket per worker is Linux's SO_REUSEPORT")]


def listening(port: int) -> int:
    """Listening TCP sockets on `port`, from the kernel's table (every process's)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            count += fields[1].endswith(f":{port:04X}") and fields[3] == "0A"  # 0A: LISTEN
    return count


def workers_of(pid: int) -> list[int]:
    """The worker processes of the server `pid` (not multiprocessing's resource tracker)."""
    children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return [c for c in children if b"spawn_main" in Path(f"/proc/{c}/cmdline").read_bytes()]


def predict_on(connection: http.client.HTTPConnection, png: bytes) -> None:
    connection.request("POST", "/v1/predict", body=png, headers={"content-type": "image/png"})
    response = connection.getresponse()
    assert response.status == 200, response.read()
    response.read()


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


def test_a_killed_worker_is_replaced_on_its_socket(mnist_onnx, tmp_path):
    png = png_bytes(mnist_test(1)[0][0][0])
    log = tmp_path / "serve.log"
    with serving(mnist_onnx, "--workers", "2", log=log) as (url, proc):
        port = urlsplit(url).port
        first = workers_of(proc.pid)
        assert len(first) == 2
        os.kill(first[0], signal.SIGKILL)
        # Connections the kernel hashes to the dead worker's socket wait there for its replacement.
        for _ in range(32):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            predict_on(connection, png)
            connection.close()
        deadline = time.monotonic() + 60
        while len(now := workers_of(proc.pid)) < 2:
            assert time.monotonic() < deadline, now
            time.sleep(0.1)
        assert first[1] in now and first[0] not in now and listening(port) == 2
        assert f"worker {first[0]} died" in log.read_text()
        proc.terminate()
        assert proc.wait(30) == 0
        assert listening(port) == 0
        for pid in now:
            assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
