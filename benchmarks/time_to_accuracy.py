"""Time to accuracy: each preset trained with `convzoo train --target-acc` against, in the same run,
a pytorch/examples-style baseline (per-sample PIL decoding, DataLoader, SGD with the MindSpore seed's
settings: lr 0.01, momentum 0.9, batch 64) trained to the same target, both evaluated on the test
set every --eval-every-steps steps. Prints wall seconds to the target and the ratio, and plots test
accuracy against wall-clock seconds for all runs.

    .venv/bin/python benchmarks/time_to_accuracy.py --presets lenet5-mnist --target 0.99 --threads 1
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from convzoo.config import load_preset
from convzoo.data.tensors import InputSpec, load_dataset
from convzoo.engine.evaluate import evaluate
from convzoo.models.registry import create_model

sys.path.insert(0, str(Path(__file__).parent))
from train_mnist import PerSampleMNIST  # noqa: E402  (the same per-sample data path as the speed benchmark)


def run_preset(preset: str, target: float, every: int, threads: int, folder: Path, data_path) -> dict:
    out = folder / preset
    command = [sys.executable, "-m", "convzoo", "train", "--config", preset, "--target-acc", str(target),
               "--eval-every-steps", str(every), "--threads", str(threads), "--output-dir", str(out), "--quiet"]
    if data_path:
        command += ["--data-path", data_path]
    subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    curve = [(float(r["wall_s"]), float(r["accuracy"])) for r in csv.DictReader(open(out / "evals.csv"))]
    return {"name": preset, "reached_s": (summary["reached"] or {}).get("wall_s"), "final": curve[-1][1],
            "curve": curve}


def run_baseline(dataset: str, target: float, every: int, threads: int, max_epochs: int, data_path) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train, test, located = load_dataset(dataset, data_path, quiet=True)
    spec = InputSpec(1, 32, "pad", located.spec.mean, located.spec.std)
    model = create_model("lenet5")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loader = torch.utils.data.DataLoader(PerSampleMNIST(train.images.numpy(), train.labels.numpy()), batch_size=64,
                                         shuffle=True, drop_last=True)
    curve, reached, start, step = [], None, time.perf_counter(), 0
    for _ in range(max_epochs):
        for x, y in loader:
            model.train()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
            if step % every == 0:
                curve.append((time.perf_counter() - start, evaluate(model, test, spec).accuracy))
                if curve[-1][1] >= target:
                    reached = curve[-1][0]
                    break
        if reached:
            break
    return {"name": f"baseline ({dataset})", "reached_s": reached, "final": curve[-1][1], "curve": curve}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="lenet5-mnist", help="comma-separated presets")
    parser.add_argument("--target", type=float, default=0.99)
    parser.add_argument("--eval-every-steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--baseline-max-epochs", type=int, default=10)
    parser.add_argument("--plot", default="time-to-accuracy.png")
    parser.add_argument("--data-path", help="the data set's folder (default: convzoo's search, $CONVZOO_DATA first)")
    args = parser.parse_args()
    presets = args.presets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_preset(p, args.target, args.eval_every_steps, args.threads, Path(tmp), args.data_path)
                for p in presets]
    dataset = load_preset(presets[0]).get("dataset", "mnist")
    base = run_baseline(dataset, args.target, args.eval_every_steps, args.threads, args.baseline_max_epochs,
                        args.data_path)
    print(f"target test accuracy {args.target}, threads {args.threads}, test set evaluated every "
          f"{args.eval_every_steps} steps (evaluation time included)")
    print(f"{'run':28}{'s to target':>14}{'final acc':>11}{'baseline / run':>16}")
    for r in runs + [base]:
        seconds = f"{r['reached_s']:.1f}" if r["reached_s"] else f"> {r['curve'][-1][0]:.0f}"
        ratio = (f"{base['reached_s'] / r['reached_s']:.2f}x" if base["reached_s"] and r["reached_s"] else "-")
        print(f"{r['name']:28}{seconds:>14}{r['final']:>11.4f}{ratio:>16}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs + [base]:
        ax.plot(*zip(*r["curve"]), label=r["name"])
    ax.axhline(args.target, color="grey", linestyle=":")
    ax.set(xlabel="wall-clock seconds of training", ylabel="test accuracy", ylim=(max(0.9, args.target - 0.05), 1.0))
    ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
