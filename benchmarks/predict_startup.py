"""Wall time of `convzoo predict` on one image, from the second call on (issue 15, item 5): a shipped
name, a checkpoint file and an ONNX file, each started as a user starts it (a fresh interpreter), in
alternating rounds so the machine's other load falls on all alike. Baselines measured in the same
run: a bare interpreter, and one that only imports numpy, onnxruntime and Pillow (the floor for any
Python predictor of an ONNX file). Medians and minima of `--runs` rounds.

    .venv/bin/python benchmarks/predict_startup.py --image shots/seven.png
    .venv/bin/python benchmarks/predict_startup.py --image x.png --models lenet5:mnist runs/demo/best.pt runs/demo/model.onnx
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FLOOR = "import numpy, onnxruntime, PIL.Image"


def timed(command: list[str], env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=env, check=True, capture_output=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True, help="one image file to predict")
    parser.add_argument("--models", nargs="+", default=["lenet5:mnist"], help="names, checkpoints or .onnx files")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    if not 1 <= args.runs <= 1000 or not Path(args.image).is_file():
        raise SystemExit("--runs 1..1000 and an existing --image, please")

    with tempfile.TemporaryDirectory() as cache:
        # A fresh cache (so the first call exports, as a user's first call does); .pyc files written,
        # as on a user's machine.
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"} | {"CONVZOO_CACHE": cache}
        commands = {"python -c pass": [sys.executable, "-c", "pass"],
                    f"python -c '{FLOOR}'": [sys.executable, "-c", FLOOR]}
        commands |= {f"convzoo predict --model {m}": [sys.executable, "-m", "convzoo", "predict", "--model", m,
                                                      args.image, "--threads", "1"] for m in args.models}
        first = {name: timed(cmd, env) for name, cmd in commands.items()}  # exports, writes .pyc files
        times = {name: [] for name in commands}
        for _ in range(args.runs):
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env))
    floor = statistics.median(times[f"python -c '{FLOOR}'"])
    print(f"predict one image ({args.image}), {args.runs} alternating rounds after a first call each; "
          f"onnxruntime threads 1")
    print(f"{'command':60s} {'first':>7s} {'median':>7s} {'min':>7s}  vs import floor")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:60s} {first[name]:6.3f}s {median:6.3f}s {min(values):6.3f}s  {median / floor:5.2f}x")


if __name__ == "__main__":
    main()
