"""A `--procs` worker's entry point (engine/launch.run_local starts `python -m convzoo.engine.worker`).

The launcher forwards a Ctrl-C or SIGTERM to its workers at once; one that arrives while a worker is
still importing torch (seconds; minutes for 64 workers) printed a KeyboardInterrupt traceback from
inside the import, and the launcher called the run crashed ("killed by signal 2", exit 2). Here the
handlers are set before any heavy import, and an interruption before training ends the worker with
the launcher's codes (130, 143), as one during training does."""

from __future__ import annotations

import signal
import sys

from ..errors import Terminated


def early_signal(signum, frame):
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def main() -> int:
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, early_signal)
    try:
        from .launch import worker_main  # torch
    except KeyboardInterrupt as exc:
        return 128 + int(getattr(exc, "signum", signal.SIGINT))
    return worker_main()


if __name__ == "__main__":
    sys.exit(main())
