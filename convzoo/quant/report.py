"""fp32 vs int8 ONNX, each in its runtime ('auto': onnxruntime for fp32, OpenVINO for int8 where it is
installed): accuracy, agreement, size, latency and throughput, one table."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..deploy.runtime import open_runner, pick_runtime, run_batched


def timing(run, x: np.ndarray, *, single_runs: int = 300, batch_runs: int = 20) -> dict:
    """Batch-1 latency and batch-256 throughput of run(x) -> logits (deploy.runtime.open_runner)."""
    one, big = x[:1], np.resize(x, (256,) + x.shape[1:]).astype(np.float32)
    for _ in range(20):
        run(one)
    lat = []
    for _ in range(single_runs):
        t = time.perf_counter()
        run(one)
        lat.append((time.perf_counter() - t) * 1000)
    run(big)
    t = time.perf_counter()
    for _ in range(batch_runs):
        run(big)
    throughput = 256 * batch_runs / (time.perf_counter() - t)
    return {"latency_p50_ms": float(np.percentile(lat, 50)), "latency_p99_ms": float(np.percentile(lat, 99)),
            "throughput_img_s": throughput}


def onnx_params(path) -> int:
    import onnx

    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer if t.data_type in (1, 3) and len(t.dims) > 0
                   and not t.name.endswith(("_scale", "_zero_point"))))


def predictions(run, x: np.ndarray) -> np.ndarray:
    return run_batched(run, x, 1000).argmax(1)


def onnx_accuracy(path, x: np.ndarray, labels: np.ndarray, threads: int = 2, runtime: str = "auto") -> float:
    return float((predictions(open_runner(path, threads, runtime), x) == labels).mean())


def compare(fp32_path, int8_path, x: np.ndarray, labels: np.ndarray, *, threads: int = 2, runtime: str = "auto",
            reference_int8_logits: np.ndarray | None = None) -> dict:
    rows = {}
    preds = {}
    for name, path in (("fp32", fp32_path), ("int8", int8_path)):
        chosen = pick_runtime(runtime, path)
        run = open_runner(path, threads, chosen)
        preds[name] = predictions(run, x)
        rows[name] = {"accuracy": float((preds[name] == labels).mean()), "size_bytes": Path(path).stat().st_size,
                      "params": onnx_params(fp32_path), "runtime": chosen, **timing(run, x)}
    result = {"threads": threads, "fp32": rows["fp32"], "int8": rows["int8"],
              "agreement": float((preds["fp32"] == preds["int8"]).mean()), "test_images": int(len(labels))}
    if reference_int8_logits is not None:
        n = len(reference_int8_logits)
        result["agreement_with_torch_int8"] = float((preds["int8"][:n] == reference_int8_logits.argmax(1)).mean())
    return result


def format_table(r: dict) -> str:
    f, q = r["fp32"], r["int8"]
    lines = [
        f"| metric ({r['threads']} threads) | fp32 ({f['runtime']}) | int8 ({q['runtime']}) | int8 / fp32 |",
        "|---|---|---|---|",
        f"| test accuracy ({r['test_images']:,} images) | {f['accuracy']:.4f} | {q['accuracy']:.4f} | "
        f"{(q['accuracy'] - f['accuracy']) * 100:+.2f} points |",
        *ptq_row(r),
        f"| model size on disk | {f['size_bytes'] / 1024:.1f} KiB | {q['size_bytes'] / 1024:.1f} KiB | "
        f"{q['size_bytes'] / f['size_bytes']:.2f}x |",
        f"| parameters | {f['params']:,} | {q['params']:,} (int8) | |",
        f"| batch-1 latency p50 | {f['latency_p50_ms']:.3f} ms | {q['latency_p50_ms']:.3f} ms | "
        f"{q['latency_p50_ms'] / f['latency_p50_ms']:.2f}x |",
        f"| batch-1 latency p99 | {f['latency_p99_ms']:.3f} ms | {q['latency_p99_ms']:.3f} ms | "
        f"{q['latency_p99_ms'] / f['latency_p99_ms']:.2f}x |",
        f"| batch-256 throughput | {f['throughput_img_s']:,.0f} img/s | {q['throughput_img_s']:,.0f} img/s | "
        f"{q['throughput_img_s'] / f['throughput_img_s']:.2f}x |",
        f"| fp32/int8 agreement | | {r['agreement']:.4f} | |",
    ]
    if "agreement_with_torch_int8" in r:
        lines.append(f"| {q['runtime']} int8 vs PyTorch converted int8 | | {r['agreement_with_torch_int8']:.4f} | |")
    return "\n".join(lines)


def ptq_row(r: dict) -> list[str]:
    """QAT's report also shows what post-training quantization of the same fp32 checkpoint reaches."""
    if "ptq_int8" not in r:
        return []
    f, p = r["fp32"]["accuracy"], r["ptq_int8"]["accuracy"]
    return [f"| test accuracy, PTQ int8 instead (MinMax, no fine-tune) | | {p:.4f} | {(p - f) * 100:+.2f} points |"]
