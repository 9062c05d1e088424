"""How close a training step comes to what this CPU can compute: images per second of one
training step (random data, Nesterov SGD, channels-last) for each model and batch size, turned
into GFLOP/s (about 3x the forward multiply-adds per trained image, 2 FLOPs each) and shown as a
ratio to a large fp32 matmul timed on the same threads in the same run (the best case for the
CPU's fp32 units). A ratio near 1 means only fewer or cheaper FLOPs can make the epochs faster.

    .venv/bin/python benchmarks/train_step.py --models airbench:512 alexnet-cifar:128,256 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from convzoo.models.registry import create_model, get_model_info

from arguments import above_zero, at_least, run


def matmul_gflops(size: int = 2048, seconds: float = 3.0) -> float:
    a, b = torch.randn(size, size), torch.randn(size, size)
    for _ in range(3):
        a @ b
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        a @ b
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9


def step_rate(name: str, batch: int, seconds: float) -> float:
    torch.manual_seed(0)
    info = get_model_info(name)
    channels, size = info.in_channels, info.input_size
    model = create_model(name, 10, channels).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, channels, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(), step()
    steps, start = 0, time.perf_counter()
    while steps < 3 or time.perf_counter() - start < seconds:
        step()
        steps += 1
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["airbench:512", "alexnet-cifar:128,256", "lenet5:128"],
                    help="NAME:BATCH[,BATCH...]")
    ap.add_argument("--threads", type=at_least(1), default=2)
    ap.add_argument("--seconds", type=above_zero, default=20.0, help="time per model and batch size")
    args = ap.parse_args()
    models = [model_batches(spec, ap) for spec in args.models]  # before the 10 s baseline
    torch.set_num_threads(args.threads)

    peak = matmul_gflops()
    print(f"threads {args.threads}; fp32 matmul 2048^3: {peak:.0f} GFLOP/s (the baseline)")
    print(f"{'model':<16}{'batch':>6}{'img/s':>9}{'GFLOP/s':>9}{'/ matmul':>10}")
    for name, batches in models:
        macs = get_model_info(name).macs  # per image, with 10 classes (checked against the built model by the registry test)
        for batch in batches:
            rate = step_rate(name, batch, args.seconds)
            gflops = rate * 3 * macs * 2 / 1e9
            print(f"{name:<16}{batch:>6}{rate:>9.0f}{gflops:>9.0f}{gflops / peak:>9.2f}x", flush=True)
    print(f"fp32 matmul again: {matmul_gflops():.0f} GFLOP/s (a large change means the machine's speed moved)")


def model_batches(spec: str, parser) -> tuple[str, list[int]]:
    """NAME:BATCH[,BATCH...] -> the registered model's name and its batch sizes (each at least 1)."""
    name, _, batches = spec.partition(":")
    get_model_info(name)  # an unknown name: ConvzooError
    try:
        sizes = [at_least(1)(b) for b in (batches or "128").split(",")]
    except argparse.ArgumentTypeError as exc:
        parser.error(f"--models {spec}: batch size {exc}")
    return name, sizes


if __name__ == "__main__":
    run(main)
