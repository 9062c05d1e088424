"""`python -m convzoo ARGS` in a new process forked from a server process that imported torch once.

A fresh interpreter spends 2.5-4 s of CPU importing torch before convzoo parses a flag, and as much
again on what an export or a training imports after it; the suite starts some hundreds of them. Each
call here still gets its own process (its own globals, locks, signal handlers, threads, exit code,
stdout and stderr), with the environment and working folder asked for, and runs convzoo's real
`__main__` as `python -m` would: only the PRELOAD imports below (none of convzoo's own) are done
already. What needs a truly new interpreter (an environment that changes how Python or its imports
start: PYTHONPATH, PYTHONWARNINGS other than "ignore") gets one: see conftest's `run_cli`. What a fork
cannot show, a use of a preloaded module that convzoo never imports itself, the fresh interpreters of
`make demo` (test_demo.py), of `convzoo serve` (test_deploy.serving) and of the import-blocking tests do.
"""

from __future__ import annotations

import atexit
import io
import multiprocessing
import multiprocessing.forkserver
import os
import runpy
import subprocess
import sys
import tempfile
import warnings

# Imported once in the server; every forked child starts with them loaded. Beyond torch: what a short
# `train` or `export` imports on its way (measured: a 640-image train 4.5 -> 2.7 s, an export of the
# shipped LeNet-5 7.5 -> 4.2-5.0 s, against torch and numpy alone). Not onnxruntime: convzoo sets its
# telemetry switch before importing it.
PRELOAD = ["numpy", "torch", "torch._dynamo", "torch.distributed", "sympy", "networkx", "onnx", "onnxscript",
           "torch.onnx._internal.exporter._core", "matplotlib.pyplot", "PIL.Image", "yaml"]


def _context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return context


def start_server() -> None:
    """Start this process's fork server now: its imports run once, in the environment and folder of
    this moment (conftest calls it before any test changes either)."""
    _context()
    multiprocessing.forkserver.ensure_running()


def _run_convzoo(args: list[str], cwd: str | None, env: dict[str, str], out_path: str, err_path: str,
                 preexec_fn) -> None:
    """In the forked child: become `python -m convzoo ARGS` with stdout/stderr to the two paths."""
    os.environ.clear()
    os.environ.update(env)
    tempfile.tempdir = None  # found again from $TMPDIR, as a new interpreter would
    sys.dont_write_bytecode = bool(env.get("PYTHONDONTWRITEBYTECODE"))
    if cwd is not None:
        os.chdir(cwd)
    sys.path.insert(0, os.getcwd())  # as `python -m` puts it first
    # multiprocessing made this child a "ForkServerProcess" whose default start method is forkserver:
    # a new interpreter is the main process, with the platform's default (fork on Linux).
    multiprocessing.set_start_method(None, force=True)
    multiprocessing.process._parent_process = None
    multiprocessing.current_process().name = "MainProcess"
    for fd, path in ((1, out_path), (2, err_path)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(target, fd)
        os.close(target)
    # As the server's interpreter set them up at its start (the same locale and environment as a new
    # one): block-buffered stdout, line-buffered stderr.
    first = sys.__stdout__
    sys.stdout = sys.__stdout__ = io.TextIOWrapper(open(1, "wb", closefd=False), encoding=first.encoding,
                                                   errors=first.errors)
    sys.stderr = sys.__stderr__ = io.TextIOWrapper(open(2, "wb", closefd=False), encoding=first.encoding,
                                                   errors="backslashreplace", line_buffering=True)
    if preexec_fn is not None:  # after the redirection, so what it prints is captured
        preexec_fn()
    sys.stdin = open(os.devnull)
    warnings.simplefilter("ignore")  # run_cli's PYTHONWARNINGS=ignore, which the server's start did not see
    sys.argv = [sys.executable, *args]
    code = 0
    try:
        runpy.run_module("convzoo", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        code = stop.code
    finally:
        atexit._run_exitfuncs()  # multiprocessing ends its children with os._exit, which skips them
    try:  # as the interpreter's shutdown does, with what it prints and its exit status when that fails
        sys.stdout.flush()
    except OSError as e:
        sys.stderr.write(f"Exception ignored in: {sys.stdout!r}\n{type(e).__name__}: {e}\n")
        code = 120
        sys.stdout = open(os.devnull, "w")  # multiprocessing flushes again on the way out
    sys.stderr.flush()
    sys.exit(code)


class Started:
    """`python -m convzoo ARGS` started in the background, forked from the server, with the parts of
    subprocess.Popen's interface the tests use (pid, poll, wait, send_signal, kill, terminate,
    communicate, returncode); stdout and stderr go to files in a folder of its own, stdout to the path
    `stdout` instead where one is given (communicate then returns "" for it). `preexec_fn` is called in
    the child once its output is redirected (a module-level function: it is sent to the server by name)."""

    def __init__(self, args: list[str], cwd, env: dict[str, str], *, preexec_fn=None, stdout: str | None = None):
        self._folder = tempfile.TemporaryDirectory(prefix="convzoo-cli-")
        self._out, self._err = (os.path.join(self._folder.name, name) for name in ("stdout", "stderr"))
        for path in (self._out, self._err):  # there to read even if the child dies before it opens them
            open(path, "wb").close()
        self._own_stdout = stdout is None
        self._child = _context().Process(target=_run_convzoo, args=(args, None if cwd is None else str(cwd), env,
                                                                    stdout or self._out, self._err, preexec_fn))
        self._child.start()
        self.pid = self._child.pid
        self.args = args

    def __del__(self):
        self._folder.cleanup()

    @property
    def returncode(self) -> int | None:
        return self._child.exitcode

    def poll(self) -> int | None:
        return self._child.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._child.join(timeout)
        if self._child.exitcode is None:
            raise subprocess.TimeoutExpired(["convzoo", *self.args], timeout)
        return self._child.exitcode

    def send_signal(self, sig: int) -> None:
        if self._child.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self._child.kill()

    def terminate(self) -> None:
        self._child.terminate()

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        """(stdout, stderr) once the command has ended."""
        self.wait(timeout)
        with open(self._out, newline=None) as out, open(self._err, newline=None) as err:
            return out.read() if self._own_stdout else "", err.read()


def run(args: list[str], cwd, env: dict[str, str], timeout: float, *, preexec_fn=None,
        stdout: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `python -m convzoo ARGS` run to its end, as subprocess.run: past
    `timeout` s the child is killed and subprocess.TimeoutExpired raised."""
    started = Started(args, cwd, env, preexec_fn=preexec_fn, stdout=stdout)
    try:
        out, err = started.communicate(timeout)
    except subprocess.TimeoutExpired:
        started.kill()
        started.wait()
        raise
    return started.returncode, out, err
