"""Run many hostile inputs through the real entry point, `convzoo.cli.main`, in ONE subprocess under
an address-space limit: starting an interpreter that imports torch per case would take ~2 s each.
Each case gets its exit code and its stderr; anything that escapes main() is recorded with its
traceback, so a test can assert "exit 0 or a one-line error, never a crash" for every case."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import cli_env

RUNNER = r"""
import contextlib, io, json, resource, sys, traceback
limit = int(sys.argv[3])
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from convzoo import cli
results = []
for argv in json.load(open(sys.argv[1])):
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            rc = cli.main(argv)
    except SystemExit as exc:
        rc = exc.code if isinstance(exc.code, int) else 2
    except BaseException:  # MemoryError under the limit included: every escape is a finding
        rc, err = "crash", io.StringIO(err.getvalue() + traceback.format_exc())
    results.append({"argv": argv, "rc": rc, "stderr": err.getvalue()[-3000:]})
json.dump(results, open(sys.argv[2], "w"))
"""


def run_cases(cases: list[list[str]], workdir: Path, *, limit_bytes: int = 3 << 30, timeout: float = 600) -> list[dict]:
    """[{argv, rc, stderr}] for every case, run in order in one interpreter limited to `limit_bytes`."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "cases.json").write_text(json.dumps([[str(a) for a in argv] for argv in cases]))
    env = cli_env()
    proc = subprocess.run([sys.executable, "-c", RUNNER, workdir / "cases.json", workdir / "results.json",
                           str(limit_bytes)], capture_output=True, text=True, timeout=timeout, cwd=workdir, env=env)
    assert proc.returncode == 0, f"fuzz runner died (exit {proc.returncode}): {proc.stderr[-3000:]}"
    return json.loads((workdir / "results.json").read_text())


def problems(results: list[dict], label) -> list[str]:
    """The cases that crashed, exited with a code other than 0/2, or printed more than one error line."""
    bad = []
    for i, r in enumerate(results):
        errors = [line for line in r["stderr"].splitlines() if line.startswith("convzoo: error:")]
        if r["rc"] not in (0, 2) or "Traceback" in r["stderr"] or (r["rc"] == 2 and len(errors) != 1):
            bad.append(f"{label(i)}: exit {r['rc']}: {' '.join(r['argv'])}\n{r['stderr'][-1500:]}")
    return bad
