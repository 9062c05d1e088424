"""Time to accuracy: each preset trained with `convzoo train --target-acc` against, in the same run,
a pytorch/examples-style baseline on the preset's data set (a per-sample Dataset and DataLoader, SGD
with the MindSpore seed's LeNet settings: lr 0.01, momentum 0.9, batch 64; LeNet-5 on MNIST and
Fashion-MNIST, alexnet-cifar with 4-px random crops and flips on CIFAR-10), which is scored on the
test set every --baseline-eval-steps steps; its time to a target is its first evaluation at or above
it. Prints wall seconds to each preset's target, final accuracy and the ratio, and plots test
accuracy against wall-clock seconds (one panel per data set).

    .venv/bin/python benchmarks/time_to_accuracy.py --presets lenet5-fast:0.99,lenet5-mnist:0.994,lenet5-fashion:0.92
    .venv/bin/python benchmarks/time_to_accuracy.py --presets airbench-cifar:0.6:48,alexnet-cifar:0.6:195 \
        --baseline-threads 2 --baseline-max-epochs 2
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
import yaml

from convzoo.data.tensors import InputSpec, load_dataset
from convzoo.engine.evaluate import evaluate
from convzoo.models.registry import create_model

sys.path.insert(0, str(Path(__file__).parent))
from train_cifar import PerSampleCIFAR  # noqa: E402  (the same per-sample data paths as the speed benchmarks)
from train_mnist import PerSampleMNIST  # noqa: E402

EVAL_STEPS = {"mnist": 100, "fashion-mnist": 100, "cifar10": 250}  # baseline steps between evaluations


def run_preset(preset: str, target: float, every: int, threads: int, folder: Path, data_path) -> dict:
    """The preset as it is (its own threads and evaluation policy unless --threads/--eval-every-steps
    are given), stopped at `target`."""
    out = folder / preset
    command = [sys.executable, "-m", "convzoo", "train", "--config", preset, "--target-acc", str(target),
               "--output-dir", str(out), "--quiet"]
    command += ["--eval-every-steps", str(every), "--eval-every", "1"] if every else []  # and every epoch's end
    command += ["--threads", str(threads)] if threads else []
    command += ["--data-path", data_path] if data_path else []
    subprocess.run(command, check=True)
    summary = json.loads((out / "summary.json").read_text())
    config = yaml.safe_load((out / "config.yaml").read_text())
    curve = [(float(r["wall_s"]), float(r["accuracy"])) for r in csv.DictReader(open(out / "evals.csv"))]
    return {"name": preset, "dataset": config["dataset"], "threads": config["threads"], "target": target,
            "reached_s": (summary["reached"] or {}).get("wall_s"), "final": curve[-1][1], "curve": curve}


def first_at(curve, target):
    return next((s for s, acc in curve if acc >= target), None)


def run_baseline(dataset: str, target: float, every: int, threads: int, max_epochs: int, data_path) -> dict:
    """Until `target` (the highest asked of this data set) or `max_epochs`."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    train, test, located = load_dataset(dataset, data_path, quiet=True)
    if dataset == "cifar10":
        spec = InputSpec(3, 32, "resize", located.spec.mean, located.spec.std)
        name, model = "alexnet-cifar", create_model("alexnet-cifar", 10, 3)
        data = PerSampleCIFAR(train.images.numpy(), train.labels.numpy(), 32)
    else:
        spec = InputSpec(1, 32, "pad", located.spec.mean, located.spec.std)
        name, model = "LeNet-5", create_model("lenet5")
        data = PerSampleMNIST(train.images.numpy(), train.labels.numpy(), located.spec.mean[0], located.spec.std[0])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    every = every or EVAL_STEPS[dataset]
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, drop_last=True)
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
    return {"name": f"baseline ({dataset})", "dataset": dataset, "threads": threads, "final": curve[-1][1],
            "curve": curve, "every": every, "model": name}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", default="lenet5-fast:0.99,lenet5-mnist:0.994,lenet5-fashion:0.92",
                        help="comma-separated PRESET:TARGET[:STEPS] (STEPS: evaluate every STEPS steps and every "
                             "epoch's end, over --eval-every-steps)")
    parser.add_argument("--eval-every-steps", type=int, default=0, help="presets (0: each preset's own setting)")
    parser.add_argument("--threads", type=int, default=0, help="presets (0: each preset's own setting)")
    parser.add_argument("--baseline-threads", type=int, default=1)
    parser.add_argument("--baseline-eval-steps", type=int, default=0,
                        help=f"0: per data set, {', '.join(f'{k} {v}' for k, v in EVAL_STEPS.items())}")
    parser.add_argument("--baseline-max-epochs", type=int, default=10)
    parser.add_argument("--plot", default="time-to-accuracy.png")
    parser.add_argument("--data-path", help="the data set's folder (default: convzoo's search, $CONVZOO_DATA first)")
    args = parser.parse_args()
    asked = [(name, float(target), int(steps[0]) if steps else args.eval_every_steps)
             for name, target, *steps in (p.split(":") for p in args.presets.split(","))]
    with tempfile.TemporaryDirectory() as tmp:
        runs = [run_preset(p, t, every, args.threads, Path(tmp), args.data_path) for p, t, every in asked]
    baselines = {}
    unknown = {r["dataset"] for r in runs} - set(EVAL_STEPS)
    if unknown:
        raise SystemExit(f"no baseline for {', '.join(sorted(unknown))}: the baselines are for {', '.join(EVAL_STEPS)}")
    for dataset in dict.fromkeys(r["dataset"] for r in runs):
        highest = max(r["target"] for r in runs if r["dataset"] == dataset)
        baselines[dataset] = run_baseline(dataset, highest, args.baseline_eval_steps, args.baseline_threads,
                                          args.baseline_max_epochs, args.data_path)
    for dataset, base in baselines.items():
        print(f"baseline ({dataset}): {base['model']}, DataLoader, SGD lr 0.01 momentum 0.9 batch 64, "
              f"{args.baseline_threads} thread(s), test set every {base['every']} steps, at most "
              f"{args.baseline_max_epochs} epochs; evaluation time included everywhere")
    print(f"{'preset':18}{'threads':>8}{'target':>8}{'s to target':>13}{'final acc':>11}{'baseline s':>24}"
          f"{'baseline / preset':>19}")
    for r in runs:
        base = baselines[r["dataset"]]
        base_s = first_at(base["curve"], r["target"])
        seconds = f"{r['reached_s']:.1f}" if r["reached_s"] else f"> {r['curve'][-1][0]:.0f}"
        base_text = f"{base_s:.1f}" if base_s else f"> {base['curve'][-1][0]:.0f} ({base['final']:.4f})"
        ratio = f"{base_s / r['reached_s']:.2f}x" if base_s and r["reached_s"] else (
            f"> {base['curve'][-1][0] / r['reached_s']:.2f}x" if r["reached_s"] else "-")
        print(f"{r['name']:18}{r['threads']:>8}{r['target']:>8.3f}{seconds:>13}{r['final']:>11.4f}{base_text:>24}"
              f"{ratio:>19}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(baselines), figsize=(6 * len(baselines), 4), squeeze=False)
    for ax, (dataset, base) in zip(axes[0], baselines.items()):
        for r in [r for r in runs if r["dataset"] == dataset] + [base]:
            ax.plot(*zip(*r["curve"]), marker=".", label=r["name"])
        for r in runs:
            if r["dataset"] == dataset:
                ax.axhline(r["target"], color="grey", linestyle=":")
        low = min(r["target"] for r in runs if r["dataset"] == dataset) - 0.04
        ax.set(title=dataset, xlabel="wall-clock seconds of training", ylabel="test accuracy", ylim=(low, 1.0))
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.plot, dpi=100)
    print(f"plot: {args.plot}")


if __name__ == "__main__":
    main()
