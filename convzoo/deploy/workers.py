"""`convzoo serve --workers N` on Linux: N uvicorn worker processes, each with its own listening socket.

uvicorn's supervisor shares one socket among its workers, and the worker that wakes first accepts a
whole burst of connections: with 64 keep-alive clients one worker held 50 (or 41) and the other 14
(or 23), so one core sat partly idle (1,130-1,170 req/s on LeNet-5). With SO_REUSEPORT the kernel
spreads new connections over one socket per worker by a hash of their addresses (30/34: 2,880
req/s, same load, README "Serving"). Elsewhere (macOS, Windows: no such spreading) uvicorn's own
supervisor and shared socket are used.

The parent binds every socket (a busy port is one line before anything starts), keeps them open and
restarts a worker that dies on the same socket, so connections queue there meanwhile instead of
being refused; SIGINT/SIGTERM stop every worker gracefully.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import signal
import socket
import sys
import time

from ..errors import ConfigError

STOP_SECONDS = 15  # a worker still finishing requests after this is killed
RESTARTS = 5  # deaths within RESTART_PERIOD after which the server stops instead of restarting
RESTART_PERIOD = 60
STARTUP_FAILURE = 3  # uvicorn's exit code for a worker whose app failed to start: restarting will not help


def balanced() -> bool:
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def bind_each(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port, spread over by the kernel. A probe without SO_REUSEPORT
    binds first, so a port anyone holds (another `convzoo serve` included, whose sockets would
    otherwise silently share its traffic with ours) is refused; it also picks the port for 0."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:  # also socket.gaierror for a host that does not resolve
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
        port = probe.getsockname()[1]
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(2048)  # connections queue from now on, while the workers start
    except OSError as exc:  # taken in the moment since the probe: rare, still one line
        for sock in sockets:
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc})") from None
    return sockets


def worker(options: dict, sock: socket.socket) -> None:  # runs in a spawned process
    import uvicorn

    uvicorn.Server(uvicorn.Config(**options)).run(sockets=[sock])


def run(options: dict, sockets: list[socket.socket]) -> int:
    """Run one worker per socket (uvicorn.Config keywords in `options`) until SIGINT/SIGTERM; the
    exit status: 0, or 1 when workers kept dying or one could not start its app."""
    # spawn, not fork: a fork of a process that has loaded onnxruntime (the parent checked the model)
    # may inherit its locks mid-use.
    context = multiprocessing.get_context("spawn")
    stopping = []
    previous = {sig: signal.signal(sig, lambda number, frame: stopping.append(number))
                for sig in (signal.SIGINT, signal.SIGTERM)}

    def start(sock):
        process = context.Process(target=worker, args=(options, sock), daemon=True)
        process.start()
        return process

    processes = [start(sock) for sock in sockets]
    deaths: list[float] = []
    status = 0
    try:
        while not stopping:
            multiprocessing.connection.wait([p.sentinel for p in processes], timeout=0.5)
            for k, process in enumerate(processes):
                if process.is_alive() or stopping:
                    continue
                now = time.monotonic()
                deaths = [t for t in deaths if now - t < RESTART_PERIOD] + [now]
                if process.exitcode == STARTUP_FAILURE or len(deaths) > RESTARTS:
                    why = ("could not start" if process.exitcode == STARTUP_FAILURE
                           else f"died {len(deaths)} times in {RESTART_PERIOD} s")
                    print(f"error: serve: a worker {why} (exit code {process.exitcode}); stopping",
                          file=sys.stderr, flush=True)
                    stopping.append(None)
                    status = 1
                    break
                print(f"warning: serve: worker {process.pid} died (exit code {process.exitcode}); starting another",
                      file=sys.stderr, flush=True)
                processes[k] = start(sockets[k])
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits
        deadline = time.monotonic() + STOP_SECONDS
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
