"""Listening sockets for `convzoo serve`, and on Linux its worker processes, one socket each.

uvicorn's supervisor shares one socket among its workers, and the worker that wakes first accepts a
whole burst of connections: with 64 keep-alive clients one worker held 50 (or 41) and the other 14
(or 23), so one core sat partly idle (1,130-1,170 req/s on LeNet-5). With SO_REUSEPORT the kernel
spreads new connections over one socket per worker by a hash of their addresses (30/34: 2,880
req/s, same load, README "Serving"). Elsewhere (macOS, Windows: no such spreading) uvicorn's own
supervisor and shared socket are used.

The parent binds every socket (a busy port is one line before anything starts) and keeps them open,
so a worker that dies or stops answering its health check (a ping every 5 s, as uvicorn's
supervisor does) is replaced on the same socket while new connections wait there. A worker that
cannot start its app stops the server with that one line. SIGINT, SIGTERM, SIGHUP and SIGQUIT stop
every worker gracefully; workers also get SIGTERM if the parent dies, even by SIGKILL.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from ..errors import ConfigError, ConvzooError
from ..orphans import die_with_parent

STOP_SECONDS = 15  # a worker still finishing requests after this is killed
HEALTH_SECONDS = 5  # a running worker must answer a ping within this (uvicorn's default)
START_SECONDS = 120  # ... and a starting one its first ping (imports and model load, on a busy machine)
QUICK_DEATH_SECONDS = 10  # a worker dead sooner is replaced after a 1 s pause, not in a tight loop
STARTUP_FAILURE = 3  # a worker's exit code when its app could not start: restarting would not help
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT)


def balanced() -> bool:
    return sys.platform == "linux" and hasattr(socket, "SO_REUSEPORT")


def shown(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def address_family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def cannot_listen(host: str, port: int, why) -> ConfigError:
    return ConfigError(f"cannot listen on {shown(host)}:{port} ({why})")


def listen(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """A socket bound and listening the way uvicorn binds one; a busy port or unknown host is one line."""
    sock = socket.socket(address_family(host))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, while the workers start
    except OSError as exc:  # also socket.gaierror for a host that does not resolve
        sock.close()
        raise cannot_listen(host, port, exc.strerror or exc) from None
    sock.set_inheritable(True)  # uvicorn's own workers take it by file descriptor
    return sock


def bind_each(host: str, port: int, count: int) -> list[socket.socket]:
    """`count` listening sockets on one port, spread over by the kernel. A probe without SO_REUSEPORT
    binds first, so a port anyone holds (another `convzoo serve` included, whose sockets would
    otherwise silently share its traffic with ours) is refused; it also picks the port for 0."""
    with socket.socket(address_family(host)) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise cannot_listen(host, port, exc.strerror or exc) from None
        port = probe.getsockname()[1]
    sockets = []
    try:
        for _ in range(count):
            sockets.append(listen(host, port, reuse_port=True))
        # Another server probing in the moment between our probe and our binds could have joined.
        if (found := listeners(sockets[0].getsockname(), sockets[0].family)) is not None and found > count:
            raise cannot_listen(host, port, "another server started on it at the same moment")
    except ConfigError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def listeners(address: tuple, family: int = socket.AF_INET) -> int | None:
    """Listening TCP sockets of every process on this address and port (Linux's /proc/net/tcp[6],
    which prints each 32-bit word of an address in host byte order); None where it cannot be read."""
    packed = socket.inet_pton(family, address[0])
    words = "".join(packed[i:i + 4][::-1].hex() for i in range(0, len(packed), 4)).upper()
    try:
        lines = Path("/proc/net/tcp6" if family == socket.AF_INET6 else "/proc/net/tcp").read_text().splitlines()
    except OSError:
        return None
    wanted = f"{words}:{address[1]:04X}"
    return sum(1 for line in lines[1:] if line.split()[1] == wanted and line.split()[3] == "0A")  # 0A: LISTEN


def worker(make_app, options: dict, sock: socket.socket, pings, failures, parent: int) -> None:  # spawned
    """Build the app, then serve it on `sock` until told to stop. Ctrl-C reaches every process of the
    terminal's group: a worker starts with it ignored (Worker starts it so) until uvicorn's own
    handler is in place, and the parent stops it anyway, so no KeyboardInterrupt traceback is printed."""
    die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above: no signal will come
        return
    threading.Thread(target=answer_pings, args=(pings,), daemon=True).start()
    try:
        app = make_app()
    except ConvzooError as exc:  # e.g. the model file was removed after the parent checked it
        failures.put(str(exc))
        sys.exit(STARTUP_FAILURE)
    except Exception:  # a bug: its traceback, and the parent stops
        traceback.print_exc()
        failures.put("a worker could not start (traceback above)")
        sys.exit(STARTUP_FAILURE)
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, **options))
    server.run(sockets=[sock])  # returns after Ctrl-C; SIGTERM ends the process from inside it
    if not server.started:  # the app's startup failed (uvicorn logged why)
        failures.put("a worker could not start (see above)")
        sys.exit(STARTUP_FAILURE)


def answer_pings(connection) -> None:
    try:
        while True:
            connection.recv()
            connection.send(True)
    except (EOFError, OSError):  # the parent is gone
        pass


class Worker:
    """One worker process on its socket, with the pipe its health pings travel on."""

    def __init__(self, context, make_app, options: dict, sock: socket.socket, failures):
        self.pings, child_end = context.Pipe()
        self.process = context.Process(target=worker, args=(make_app, options, sock, child_end, failures,
                                                             os.getpid()), daemon=True)
        self.up = False  # answered a ping since it started
        ignored = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the child starts with Ctrl-C ignored
        try:
            self.process.start()
        finally:
            signal.signal(signal.SIGINT, ignored)
        self.started = time.monotonic()
        child_end.close()
        self.ping()  # answered once its first thread runs: then it is up, and pinged every HEALTH_SECONDS

    def ping(self) -> None:
        try:
            self.pings.send(True)
        except OSError:  # it died: the sentinel says so
            pass

    def healthy(self, deadline: float) -> bool:
        """An up worker answered its last ping by `deadline`; a starting one has START_SECONDS for its first."""
        try:
            if self.up:
                if self.pings.poll(max(0.0, deadline - time.monotonic())):
                    self.pings.recv()
                    return True
                return False
            if self.pings.poll(0):
                self.pings.recv()
                self.up = True
        except (EOFError, OSError):  # it died: the sentinel says so
            return True
        return self.up or time.monotonic() < self.started + START_SECONDS

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()  # SIGTERM: uvicorn finishes the requests in flight, then exits


def run(make_app, options: dict, sockets: list[socket.socket]) -> int:
    """One worker per socket (uvicorn.Config keywords in `options`, the app from make_app()) until a
    stop signal; the exit status: 0, or 2 when a worker could not start its app."""
    # spawn, not fork: a fork of a process that has loaded onnxruntime (the parent checked the model)
    # may inherit its locks mid-use.
    context = multiprocessing.get_context("spawn")
    failures = context.SimpleQueue()
    stopping = []
    previous = {sig: signal.signal(sig, lambda number, frame: stopping.append(number)) for sig in STOP_SIGNALS}
    workers = [Worker(context, make_app, options, sock, failures) for sock in sockets]
    restart_at = {}  # worker index -> when a quickly dead one may start again
    status, next_ping = 0, time.monotonic() + HEALTH_SECONDS
    try:
        while not stopping and not status:
            multiprocessing.connection.wait([w.process.sentinel for w in workers if w.process.is_alive()],
                                            timeout=0.5)
            if time.monotonic() >= next_ping and not stopping:
                for w in workers:
                    if w.up:
                        w.ping()
                deadline = time.monotonic() + HEALTH_SECONDS
                for w in workers:
                    if w.process.is_alive() and not w.healthy(deadline):
                        print(f"warning: serve: worker {w.process.pid} did not answer for {HEALTH_SECONDS} s; "
                              "replacing it", file=sys.stderr, flush=True)
                        w.process.kill()
                        w.process.join()
                next_ping = time.monotonic() + HEALTH_SECONDS
            for k, w in enumerate(workers):
                if stopping or w.process.is_alive():
                    continue
                if w.process.exitcode == STARTUP_FAILURE:
                    message = failures.get() if not failures.empty() else "a worker could not start"
                    print(f"convzoo: error: {message}", file=sys.stderr, flush=True)
                    status = 2
                    break
                now = time.monotonic()
                if k not in restart_at:
                    print(f"warning: serve: worker {w.process.pid} died (exit code {w.process.exitcode}); "
                          "starting another", file=sys.stderr, flush=True)
                    quick = now - w.started < QUICK_DEATH_SECONDS
                    restart_at[k] = now + (1.0 if quick else 0.0)
                if now >= restart_at[k]:
                    del restart_at[k]
                    workers[k] = Worker(context, make_app, options, sockets[k], failures)
    finally:
        for w in workers:
            w.stop()
        deadline = time.monotonic() + STOP_SECONDS
        for w in workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():  # stopped (SIGSTOP) or stuck: it cannot finish
                w.process.kill()
                w.process.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status
