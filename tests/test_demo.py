"""The README's first command, `make demo`, as a user runs it: train, evaluate, quantize, export and
predict on the real MNIST files, every step's output checked."""

from __future__ import annotations

import json
import subprocess

import pytest

from conftest import MNIST_DIR, ROOT, cli_env, need


@pytest.mark.real_data
@pytest.mark.slow
def test_make_demo(tmp_path):
    need(MNIST_DIR)
    demo = tmp_path / "demo"
    # The preset's recipe in 4 epochs instead of 15 (about 99.1% instead of 99.4%), scored once: a shorter suite.
    proc = subprocess.run(["make", "--no-print-directory", "demo", f"DEMO={demo}",
                           "DEMO_TRAIN=--epochs 4 --eval-every 4", "DEMO_QUANT=--train-limit 6400"], cwd=ROOT,
                          capture_output=True, text=True, timeout=1200, env=cli_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    accuracy = float(proc.stdout.split("'Accuracy': ")[1].split()[0])
    assert accuracy >= 0.99
    report = json.loads((demo / "quant" / "int8-report.json").read_text())
    assert report["int8"]["accuracy"] >= accuracy - 0.005
    assert len(list((demo / "digits").glob("*.png"))) == 5 and (demo / "grid.png").stat().st_size > 10_000
    assert (demo / "model.onnx").is_file() and proc.stdout.count("true ") == 25
