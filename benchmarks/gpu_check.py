"""GPU check: the CUDA paths convzoo has never run on a GPU, measured in one go (< 5 min on one GPU).

    .venv/bin/python benchmarks/gpu_check.py                      # a machine with CUDA: prints the table
    .venv/bin/python benchmarks/gpu_check.py --device cpu --steps 1 --warmup 0 --batch-size 4   # CPU smoke run

Measures, on the device:
  * ms/step of the alexnet-mindspore preset (batch 32, CIFAR resized to 227 on the device; the seed
    reports 16.8 ms/step) and of alexnet-cifar (batch 128), fp32 / fp16 (GradScaler) / bf16
    autocast, NCHW and channels-last: the trainer's own step (device-side augmentation and
    normalisation, autocast, scaler, SGD), on random uint8 images already on the device
  * LeNet-5 epoch time through the real trainer (convzoo.train) on MNIST when it is found, else the
    same steps on random images
  * ONNX export + onnxruntime on CUDA (CUDAExecutionProvider, when this onnxruntime has it): parity
    and batch latency
  * a 2-process nccl DDP step (torchrun, one GPU each) when two GPUs are visible

Without a CUDA device it prints one line and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from torch import nn

from convzoo.config import build_config
from convzoo.data.catalog import get_spec
from convzoo.data.tensors import InputSpec, step_generator, to_model_input
from convzoo.engine import distributed
from convzoo.engine.runtime import resolve_amp
from convzoo.errors import ConvzooError
from convzoo.models.registry import create_model, get_model_info

SEED_MS = {"alexnet-mindspore": 16.8}  # the seed's published GPU figure, batch 32
AMPS = ("none", "fp16", "bf16")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke run of the code paths")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per configuration (median reported)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN and allocator warm-up)")
    parser.add_argument("--batch-size", type=int, default=0, help="override the presets' batch sizes (0: theirs)")
    parser.add_argument("--data-path", help="MNIST folder for the LeNet-5 epoch (default: $CONVZOO_DATA, the cache)")
    parser.add_argument("--lenet-limit", type=int, default=0, help="LeNet-5 epoch on the first N images (0: all)")
    parser.add_argument("--no-ddp", action="store_true", help="skip the 2-GPU nccl step")
    parser.add_argument("--ddp-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ddp_worker:
        return ddp_worker(args)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'});"
              " nothing measured")
        return 0
    started = time.perf_counter()
    print(describe(device), flush=True)
    print(HEADER, flush=True)  # rows print as they are measured, so a cut-short run still shows its figures
    for preset in ("alexnet-mindspore", "alexnet-cifar"):
        for amp in AMPS:
            for channels_last in (False, True):
                print(format_row(step_row(preset, amp, channels_last, device, args)), flush=True)
        if device.type == "cuda":  # the trainer leaves cudnn.benchmark off; what would it give?
            print(format_row(step_row(preset, "fp16", True, device, args, cudnn_benchmark=True)), flush=True)
    print()
    for check in (lenet_epoch, onnx_row, ddp_row):
        print(check(device, args), flush=True)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def describe(device: torch.device) -> str:
    text = f"torch {torch.__version__}, device {device}"
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        text += (f": {props.name}, {props.total_memory / 2**30:.0f} GiB, compute capability {props.major}.{props.minor},"
                 f" CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
                 f"bf16 {'yes' if torch.cuda.is_bf16_supported() else 'no'}, {torch.cuda.device_count()} GPU(s) visible")
    else:
        text += f", {torch.get_num_threads()} threads (smoke run: CPU figures say nothing about a GPU)"
    return text


def setup(preset: str, device: torch.device, args, channels_last: bool):
    """The preset's model, optimizer and input spec, and a batch of random uint8 images on the device."""
    cfg = build_config(preset, {})
    info, data = get_model_info(cfg.model), get_spec(cfg.dataset)
    spec = InputSpec(data.image_shape[0], info.input_size, info.fit, data.mean, data.std)
    model = create_model(cfg.model, num_classes=10, in_channels=spec.channels).to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    batch = args.batch_size or cfg.batch_size
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch, *data.image_shape), dtype=torch.uint8, generator=g).to(device)
    labels = torch.randint(0, 10, (batch,), generator=g).to(device)
    return cfg, model, optimizer, spec, images, labels


def train_step(cfg, model, optimizer, scaler, spec, images, labels, step, amp_dtype, channels_last, device,
               criterion, shard=(0, 1)):
    """engine/trainer.py's step: device-side augmentation, autocast, scaled backward, optimizer step."""
    gen = step_generator(cfg.seed, 0, step, device) if cfg.augment != "none" else None
    x = to_model_input(images, spec, augment=cfg.augment, generator=gen, shard=shard, shift_pad=cfg.shift_pad)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        loss = criterion(model(x).float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss


def timed_steps(step, n: int, warmup: int, device: torch.device) -> list[float]:
    for i in range(warmup):
        step(i)
    sync(device)
    times = []
    for i in range(warmup, warmup + n):
        t0 = time.perf_counter()
        loss = step(i)
        loss.item()  # waits for the step, as the trainer's logging does
        sync(device)
        times.append((time.perf_counter() - t0) * 1000)
    return times


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_row(preset: str, amp: str, channels_last: bool, device: torch.device, args,
             cudnn_benchmark: bool = False) -> dict:
    row = {"preset": preset, "amp": amp, "layout": "channels-last" if channels_last else "NCHW",
           "cudnn_benchmark": cudnn_benchmark}
    try:
        amp_dtype = resolve_amp(amp, device)
    except ConvzooError as exc:  # fp16 on CPU: the trainer refuses it too
        return {**row, "skipped": str(exc).split(";")[0]}
    torch.backends.cudnn.benchmark = cudnn_benchmark
    cfg, model, optimizer, spec, images, labels = setup(preset, device, args, channels_last)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = timed_steps(lambda i: train_step(cfg, model, optimizer, scaler, spec, images, labels, i, amp_dtype,
                                             channels_last, device, criterion), args.steps, args.warmup, device)
    ms = statistics.median(times)
    row.update(batch=len(labels), ms_per_step=ms, images_per_s=len(labels) * 1000 / ms)
    if device.type == "cuda":
        row["peak_mem_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    torch.backends.cudnn.benchmark = False
    return row


HEADER = (f"{'preset':<18}{'amp':<6}{'layout':<15}{'batch':>6}{'ms/step':>10}{'img/s':>10}{'peak MiB':>10}  note\n"
          + "-" * 86)


def format_row(r: dict) -> str:
    head = f"{r['preset']:<18}{r['amp']:<6}{r['layout']:<15}"
    if "skipped" in r:
        return f"{head}{'':>36}  skipped: {r['skipped']}"
    notes = ["cudnn.benchmark" if r["cudnn_benchmark"] else ""]
    if r["preset"] in SEED_MS and r["batch"] == 32:
        notes.append(f"seed {SEED_MS[r['preset']]} ms/step = {SEED_MS[r['preset']] / r['ms_per_step']:.2f}x this")
    mem = f"{r['peak_mem_mib']:.0f}" if "peak_mem_mib" in r else "-"
    ips = f"{r['images_per_s']:.0f}" if r["images_per_s"] >= 100 else f"{r['images_per_s']:.2f}"
    return (f"{head}{r['batch']:>6}{r['ms_per_step']:>10.2f}{ips:>10}{mem:>10}  "
            + ", ".join(n for n in notes if n))


def lenet_epoch(device: torch.device, args) -> str:
    """One LeNet-5 epoch through the real trainer on MNIST (data decoded once onto the device)."""
    import convzoo

    flags = dict(model="lenet5", dataset="mnist", epochs=1, batch_size=64, device=str(device), threads=1,
                 print_freq=0, train_limit=args.lenet_limit, data_path=args.data_path)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            result = convzoo.train(output_dir=tmp, quiet=True, **flags)
        except ConvzooError as exc:
            return f"LeNet-5 epoch: skipped, MNIST not found ({str(exc)[:120]})"
    return (f"LeNet-5 epoch (the trainer, batch 64): "
            f"{result['epoch_time_s']:.2f} s, {result['images_per_s']:.0f} img/s, test acc {result['test_acc']:.4f}")


def onnx_row(device: torch.device, args) -> str:
    """Export alexnet-cifar (random weights) to ONNX and run it in onnxruntime on CUDA when it can."""
    import numpy as np
    import onnxruntime as ort

    from convzoo.deploy.export import to_onnx

    provider = "CUDAExecutionProvider" if device.type == "cuda" else "CPUExecutionProvider"
    if provider not in ort.get_available_providers():
        return (f"ONNX on CUDA: skipped, onnxruntime {ort.__version__} has no CUDAExecutionProvider "
                f"(providers: {', '.join(ort.get_available_providers())}; pip install onnxruntime-gpu)")
    model = create_model("alexnet-cifar", num_classes=10, in_channels=3).eval()
    batch = args.batch_size or 128
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    proto = to_onnx(model, x[:2])
    export_s = time.perf_counter() - t0
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "alexnet-cifar.onnx")
        with open(path, "wb") as f:
            f.write(proto.SerializeToString())
        session = ort.InferenceSession(path, providers=[provider])
        name = session.get_inputs()[0].name
        with torch.inference_mode():
            expected = model.to(device)(x.to(device)).float().cpu().numpy()
        got = session.run(None, {name: x.numpy()})[0]
        times = []
        for _ in range(args.warmup + args.steps):
            t1 = time.perf_counter()
            session.run(None, {name: x.numpy()})
            times.append((time.perf_counter() - t1) * 1000)
    ms = statistics.median(times[args.warmup:])
    return (f"ONNX ({session.get_providers()[0]}): export {export_s:.1f} s, max |logit diff| vs torch "
            f"{float(np.abs(expected - got).max()):.2e}, batch {batch}: {ms:.2f} ms ({batch * 1000 / ms:.0f} img/s)")


def ddp_row(device: torch.device, args) -> str:
    """alexnet-cifar, 2 processes x 1 GPU over nccl against 1 GPU, the same global batch."""
    if args.no_ddp:
        return "DDP: skipped (--no-ddp)"
    if device.type == "cuda" and torch.cuda.device_count() < 2:
        return f"DDP (nccl, 2 GPUs): skipped, {torch.cuda.device_count()} GPU visible"
    nproc = 2
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           os.path.abspath(__file__), "--ddp-worker", "--device", device.type, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--batch-size", str(args.batch_size)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return f"DDP: failed (exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:] or ''}"
    r = json.loads(lines[-1])
    return (f"DDP ({r['backend']}, {r['world']} processes, global batch {r['batch']}): {r['ms_per_step']:.2f} ms/step, "
            f"{r['batch'] * 1000 / r['ms_per_step']:.0f} img/s")


def ddp_worker(args) -> int:
    """One torchrun rank: convzoo's own process-group set-up, DDP, and each rank's shard of the batch."""
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(args.device)
    distributed.setup(device)
    device = distributed.local_device(device)
    rank, world = distributed.rank(), distributed.world_size()
    cfg, model, optimizer, spec, images, labels = setup("alexnet-cifar", device, args, channels_last=True)
    per = len(labels) // world
    images, labels = images[rank * per:(rank + 1) * per], labels[rank * per:(rank + 1) * per]
    ddp = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    amp_dtype = torch.float16 if device.type == "cuda" else None
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype is not None)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    # The augmentation draws are per global batch; `images` is already this rank's slice, so shard=(0, 1).
    times = timed_steps(lambda i: train_step(cfg, ddp, optimizer, scaler, spec, images, labels, i, amp_dtype, True,
                                             device, criterion), args.steps, args.warmup, device)
    if rank == 0:
        backend = torch.distributed.get_backend() if world > 1 else "none"
        print(json.dumps({"backend": backend, "world": world, "batch": per * world,
                          "ms_per_step": statistics.median(times)}), flush=True)
    distributed.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
