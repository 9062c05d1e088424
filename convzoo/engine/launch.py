"""Where a training run runs: in this process, or with `--procs N` in N data-parallel processes that
convzoo starts on this machine itself, as `torchrun --standalone --nproc-per-node N` would, so one
command (and a preset) can use them.

The ranks take disjoint shards of every global batch (engine/trainer.py), so a run computes what a
single process would, up to float summation order (whose rounding differences grow over a long
run), except in BatchNorm layers, which normalise with each rank's shard unless --sync-bn. On 2 CPU
cores, LeNet-5 trained slower as two 1-thread processes than as one 2-thread process (README,
Results: a gloo all-reduce per step).

The workers run in their own session: a Ctrl-C reaches this launcher once and is forwarded once
(the trainer's first-Ctrl-C checkpoint), and if the launcher dies they get SIGTERM (Linux).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

from torch.distributed import TCPStore

from ..config import TrainConfig
from ..errors import ConvzooError, Terminated
from ..orphans import die_with_parent
from . import distributed
from .runtime import default_threads
from .trainer import train as train_here

SPEC_ENV = "CONVZOO_LAUNCH_SPEC"  # the worker's config and options, as JSON


def train(cfg: TrainConfig, *, resume: bool = False, exist_ok: bool = False, json_lines: bool = False,
          quiet: bool = False) -> dict:
    """`convzoo train` and convzoo.train(): in this process, or in cfg.procs workers started here
    (not under torchrun, which started the processes itself). Returns the run's summary."""
    if cfg.procs > 1 and not distributed.launched_by_torchrun():
        return run_local(cfg, resume=resume, exist_ok=exist_ok, json_lines=json_lines, quiet=quiet)
    return train_here(cfg, resume=resume, exist_ok=exist_ok, json_lines=json_lines, quiet=quiet)


def run_local(cfg: TrainConfig, *, resume: bool, exist_ok: bool, json_lines: bool, quiet: bool) -> dict:
    """Train with cfg.procs worker processes; returns rank 0's run summary (summary.json)."""
    procs = cfg.procs
    distributed.check_batch(cfg.batch_size, procs, "--procs")  # before any worker starts
    # Each worker gets its share of the cores unless told otherwise: oversubscribed torch threads
    # collapse (README, Threads).
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = cfg.threads or default_threads(max(1, cores // procs))
    errors = tempfile.TemporaryDirectory(prefix="convzoo-launch-")
    spec = {"config": {**cfg.to_dict(), "threads": threads}, "errors": errors.name,
            "options": {"resume": resume, "exist_ok": exist_ok, "json_lines": json_lines, "quiet": quiet}}
    # The rendezvous store is this launcher's, on a port it holds from the start (as torchrun's agent's):
    # a free port picked here and bound later by rank 0 could be taken in between.
    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    env = {**os.environ, SPEC_ENV: json.dumps(spec), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(store.port),
           "TORCHELASTIC_USE_AGENT_STORE": "True", "WORLD_SIZE": str(procs), "LOCAL_WORLD_SIZE": str(procs),
           "OMP_NUM_THREADS": str(threads)}
    workers, logs = [], []
    for rank in range(procs):
        # Rank 0 talks to the terminal; the others' output is shown only if they fail alone.
        log = None if rank == 0 else tempfile.TemporaryFile()
        logs.append(log)
        workers.append(subprocess.Popen([sys.executable, "-m", "convzoo.engine.worker"],
                                        env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                                        stdout=log, stderr=log, start_new_session=True,
                                        preexec_fn=die_with_parent))
    with errors:
        codes, first, forwarded = wait_all(workers)
        found = Path(errors.name)
        reported = sorted(found.glob("rank*.txt"))
        message = reported[0].read_text() if reported else None  # a user error: every rank finds the same
        if first is not None and not message:
            trace = found / f"rank{first}.traceback"
            if trace.is_file():
                sys.stderr.write(trace.read_text())
            elif first and logs[first] is not None:  # what it printed (rank 0's went to the terminal)
                logs[first].seek(0)
                sys.stderr.write(logs[first].read().decode(errors="replace")[-4000:])
        for log in logs:
            if log is not None:
                log.close()
    if message:
        raise ConvzooError(message)
    if 143 in codes and all(c in (0, 130, 143) for c in codes):  # the ranks saved last.pt after a SIGTERM
        raise Terminated
    if 130 in codes:
        raise KeyboardInterrupt
    if forwarded and all(c in (0, -signal.SIGINT, -signal.SIGTERM) for c in codes):
        # a rank the forwarded signal ended before Python could handle it (its interpreter starting)
        raise Terminated if forwarded[0] == signal.SIGTERM else KeyboardInterrupt
    if first is not None:
        code = codes[first]
        how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
        raise ConvzooError(f"training process {first} of {procs} {how}; the others were stopped")
    return json.loads((Path(cfg.run_dir()) / "summary.json").read_text())


def wait_all(workers: list[subprocess.Popen]) -> tuple[list[int], int | None, list[int]]:
    """Every worker's exit code, the rank that failed first (None: none did) and the signals forwarded.
    When one fails the others are stopped (a dead peer would leave them waiting in a collective until
    its timeout); Ctrl-C and SIGTERM are forwarded to them."""
    forwarded, first = [], None

    def forward(signum, frame):
        forwarded.append(signum)
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    main_thread = threading.current_thread() is threading.main_thread()  # only it may set handlers
    previous = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)} if main_thread else {}
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [rank for rank, c in enumerate(codes) if c not in (None, 0)]
            if first is None and failed:  # seen together: a rank killed by a signal is the cause, its peers
                first = min(failed, key=lambda rank: (codes[rank] > 0, rank))  # fail on the broken link
            if all(c is not None for c in codes):
                return codes, first, forwarded
            if first is not None and not forwarded:  # after a Ctrl-C each rank saves and stops by itself
                for w in workers:
                    if w.poll() is None:
                        w.terminate()
                deadline = time.monotonic() + 30
                for w in workers:
                    try:
                        w.wait(max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:
                        w.kill()
                        w.wait()
                return [w.returncode for w in workers], first, forwarded
            time.sleep(0.05)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def worker_main() -> int:
    """One rank: the config from SPEC_ENV, errors as the CLI prints them."""
    spec = json.loads(os.environ[SPEC_ENV])
    try:
        train_here(TrainConfig(**spec["config"]), **spec["options"])
    except ConvzooError as exc:  # the launcher raises it, once, in the process the user started
        Path(spec["errors"], f"rank{os.environ.get('RANK', 0)}.txt").write_text(str(exc))
        return 2
    except KeyboardInterrupt as exc:  # 130, or 143 after a SIGTERM (Terminated)
        return 128 + int(getattr(exc, "signum", 2))
    except Exception:  # a bug, or a peer's death seen as a broken link: the launcher decides what to show
        Path(spec["errors"], f"rank{os.environ.get('RANK', 0)}.traceback").write_text(traceback.format_exc())
        return 1
    return 0

