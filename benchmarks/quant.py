"""fp32 vs int8 ONNX on this CPU, every inference path convzoo offers side by side in one run:
onnxruntime (with session options) and OpenVINO (with its performance hints) on the fp32 file and
on int8 files made by PTQ five ways (QDQ per-channel as `convzoo quantize` makes it, per-tensor,
7-bit weights, only the Gemms quantized, the QOperator format), plus any int8 file you pass (`--int8`, e.g. the
QAT model from `convzoo quantize`). Batch-1 latency, batch-256 throughput, file size and accuracy
on the real test set; ratios are to the fastest fp32 path. The paths are timed in rounds of short
blocks, one path after another, and medians kept, because other jobs share the cores.

    .venv/bin/python benchmarks/quant.py --ckpt lenet5:mnist --threads 2
    .venv/bin/python benchmarks/quant.py --ckpt lenet5:mnist --int8 runs/demo/quant/model-int8.onnx
    .venv/bin/python benchmarks/quant.py --model alexnet-cifar --threads 2      # untrained weights: speed only
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from convzoo.data.catalog import get_spec
from convzoo.data.tensors import InputSpec, load_dataset, to_model_input
from convzoo.deploy.export import export_onnx
from convzoo.deploy.runtime import open_runner, openvino_installed, pick_runtime, run_batched
from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint
from convzoo.metadata import deployment_metadata
from convzoo.models.pretrained import resolve
from convzoo.models.registry import create_model, get_model_info
from convzoo.quant.ptq import calibration_batches, quantize_onnx

from arguments import at_least, run

# int8 files: name -> quantize_onnx options (onnxruntime quantize_static arguments).
INT8_FILES = {
    "int8 QDQ per-channel": {},  # convzoo's: 7-bit weights (quant/ptq.py)
    "int8 QDQ per-tensor": {"per_channel": False},
    # full 8-bit weights (convzoo's files before 2026-11-30): onnxruntime's u8 x s8 kernels on CPUs without
    # VNNI add product pairs in int16, which these can saturate (its documented reduce_range caveat).
    "int8 QDQ 8-bit weights": {"reduce_range": False},
    "int8 mixed (Gemms only)": {"op_types_to_quantize": ["Gemm"]},
    "int8 QOperator": {"quant_format": "QOperator"},
}
# Inference paths: (runtime, options, the files it runs; None: all, but OpenVINO cannot read the
# QOperator format's com.microsoft ops). The first of each runtime is its convzoo default.
PATHS = [
    ("onnxruntime", {}, None),
    ("onnxruntime", {"spinning": False}, ("fp32", "int8 QDQ per-channel", "int8 mixed (Gemms only)")),
    ("onnxruntime", {"level": "extended"}, ("fp32", "int8 QDQ per-channel")),
    ("openvino", {"hint": "THROUGHPUT"}, None),
    ("openvino", {"hint": "LATENCY"}, ("fp32", "int8 QDQ per-channel")),
]


def random_checkpoint(model_name: str, dataset: str, folder: Path) -> Path:
    spec, info = get_spec(dataset), get_model_info(model_name)
    torch.manual_seed(0)
    model = create_model(model_name, spec.num_classes, spec.image_shape[0])
    path = folder / "random.pt"
    save_checkpoint(path, {"model": model_name, "num_classes": spec.num_classes, "class_names": list(spec.classes),
                           "dataset": spec.name, "state_dict": model.state_dict(),
                           "input": InputSpec(spec.image_shape[0], info.input_size, info.fit, spec.mean,
                                              spec.std).to_dict()})
    return path


def make_files(ckpt_path: Path, ckpt: dict, train, folder: Path, calib_batches: int, extra_int8) -> dict:
    """name -> ONNX file: the fp32 export, the INT8_FILES variants and the files given with --int8."""
    files = {"fp32": folder / "fp32.onnx"}
    export_onnx(ckpt_path, files["fp32"])
    calib = calibration_batches(train, InputSpec.from_dict(ckpt["input"]), calib_batches)
    for i, (name, options) in enumerate(INT8_FILES.items()):
        files[name] = quantize_onnx(files["fp32"], folder / f"int8-{i}.onnx", calib, deployment_metadata(ckpt),
                                    **quant_options(options))
    for path in extra_int8:
        files[f"int8 {Path(path).name}"] = Path(path)
    return files


def quant_options(options: dict) -> dict:
    from onnxruntime.quantization import QuantFormat

    return {k: QuantFormat.from_string(v) if k == "quant_format" else v for k, v in options.items()}


def paths(files: dict) -> list[tuple[str, str, dict]]:
    """(file name, runtime, options) for every path measured."""
    return [(name, runtime, options) for runtime, options, names in PATHS for name in files
            if (names is None or name in names) and (runtime != "openvino" or openvino_installed() and
                                                     "QOperator" not in name)]


def label(runtime: str, options: dict) -> str:
    return runtime + "".join(f", {k}={v}" for k, v in options.items())


def measure(files: dict, x: np.ndarray, labels: np.ndarray, threads: int, rounds: int) -> list[dict]:
    rows = []
    for name, runtime, options in paths(files):
        run = open_runner(files[name], threads, runtime, **options)
        accuracy = float((run_batched(run, x, 1000).argmax(1) == labels).mean())
        rows.append({"file": name, "path": label(runtime, options), "run": run, "accuracy": accuracy,
                     "size": files[name].stat().st_size})
    one, big = x[:1], np.resize(x, (256,) + x.shape[1:]).astype(np.float32)
    for row in rows:  # warm-up: first calls allocate and compile
        for _ in range(5):
            row["run"](one)
            row["run"](big)
    # Rounds of short blocks, one block per path in turn, and medians: a burst of other work on the
    # shared cores lands on every path alike. Blocks, not single calls: onnxruntime's idle threads keep
    # spinning for a while after a call, so one call per path in turn measured each path against the
    # previous path's spinning threads (fp32 onnxruntime read 9k img/s that way, 50-60k alone).
    single = {id(row): [] for row in rows}
    batch = {id(row): [] for row in rows}
    for _ in range(rounds):
        for row in rows:
            for _ in range(3):  # the previous path's threads settle
                row["run"](big)
            single[id(row)] += [call_seconds(row["run"], one) for _ in range(30)]
            batch[id(row)] += [call_seconds(row["run"], big) for _ in range(3)]
    for row in rows:
        row["p50"], row["p99"] = (float(np.percentile(single[id(row)], q)) * 1000 for q in (50, 99))
        row["throughput"] = 256 / float(np.median(batch[id(row)]))
    return rows


def call_seconds(run, x: np.ndarray) -> float:
    start = time.perf_counter()
    run(x)
    return time.perf_counter() - start


def table(rows: list[dict], threads: int) -> str:
    fp32 = [r for r in rows if r["file"] == "fp32"]
    best_thr, best_p50 = max(r["throughput"] for r in fp32), min(r["p50"] for r in fp32)
    size, acc = fp32[0]["size"], fp32[0]["accuracy"]
    lines = [f"| file | runtime ({threads} threads) | size | accuracy | batch-1 p50 | batch-1 p99 | batch-256 "
             "| vs fastest fp32 (256 / 1) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        thr, p50 = r["throughput"], r["p50"]
        lines.append(f"| {r['file']} | {r['path']} | {r['size'] / 1024:.0f} KiB ({r['size'] / size:.2f}x) | "
                     f"{r['accuracy']:.4f} ({(r['accuracy'] - acc) * 100:+.2f}) | {p50:.3f} ms | "
                     f"{r['p99']:.3f} ms | {thr:,.0f} img/s | {thr / best_thr:.2f}x / {p50 / best_p50:.2f}x |")
    return "\n".join(lines)


def verdict(rows: list[dict], runtime: str) -> str:
    """The goal for convzoo's default int8 path (its file in its default runtime) against the fastest fp32 path."""
    fp32 = [r for r in rows if r["file"] == "fp32"]
    path = label(*next((name, options) for name, options, _ in PATHS if name == runtime))
    default = next(r for r in rows if r["file"] == "int8 QDQ per-channel" and r["path"] == path)
    checks = {"batch-256 >= 1.2x": default["throughput"] / max(r["throughput"] for r in fp32) >= 1.2,
              "batch-1 p50 <= fp32": default["p50"] <= min(r["p50"] for r in fp32),
              "accuracy within 0.2 points": fp32[0]["accuracy"] - default["accuracy"] <= 0.002,
              "size <= 30%": default["size"] <= 0.30 * fp32[0]["size"]}
    return f"default int8 path (int8 QDQ per-channel, {path}): " + ", ".join(
        f"{name}: {'met' if ok else 'NOT met'}" for name, ok in checks.items())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", help="a trained convzoo checkpoint or a shipped name (lenet5:mnist)")
    parser.add_argument("--model", default="lenet5", help="without --ckpt: random weights of this model")
    parser.add_argument("--int8", action="append", default=[], help="also measure this int8 ONNX file")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--rounds", type=at_least(1), default=5,
                        help="timing rounds: 30 batch-1 and 3 batch-256 calls of every path each")
    parser.add_argument("--calib-batches", type=at_least(1), default=32)
    parser.add_argument("--test-images", type=at_least(1), default=10000)
    parser.add_argument("--data-path", default=os.environ.get("CONVZOO_DATA"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = args.dataset or ("cifar10" if args.model.startswith("alexnet") else "mnist")
        ckpt_path = resolve(args.ckpt) if args.ckpt else random_checkpoint(args.model, dataset, tmp)
        ckpt = load_checkpoint(ckpt_path)
        spec = InputSpec.from_dict(ckpt["input"])
        train, test, _ = load_dataset(ckpt["dataset"], args.data_path, quiet=True)
        files = make_files(ckpt_path, ckpt, train, tmp, args.calib_batches, args.int8)
        n = min(args.test_images, len(test))
        x = torch.cat([to_model_input(test.images[i: min(i + 1000, n)], spec) for i in range(0, n, 1000)]).numpy()
        rows = measure(files, x, test.labels[:n].numpy(), args.threads, args.rounds)
        default = pick_runtime("auto", files["int8 QDQ per-channel"])
    print(f"{ckpt['model']} ({'trained: ' + str(args.ckpt) if args.ckpt else 'random weights: speed only'}), "
          f"{n:,} test images; int8 by PTQ (MinMax, {args.calib_batches} calibration batches of 64); "
          f"{args.threads} threads; medians of {args.rounds * 30} batch-1 and {args.rounds * 3} batch-256 calls per path, "
          f"in rounds of blocks; convzoo's default for an int8 file: "
          f"{default}")
    print(table(rows, args.threads))
    print(verdict(rows, default))


if __name__ == "__main__":
    run(main)
