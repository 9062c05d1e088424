"""alexnet-cifar and alexnet training speed on this CPU: fp32 vs bf16 autocast, 1 vs 2 threads,
channels-last, each against a per-sample Dataset + DataLoader baseline of the same model, all in
the same run; plus 1 vs 2 DDP processes through the real CLI (torchrun, gloo).

    .venv/bin/python benchmarks/train_cifar.py --steps 5
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

from convzoo.data.tensors import InputSpec, load_dataset, to_model_input
from convzoo.models.registry import create_model, get_model_info

from arguments import at_least, run

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


class PerSampleCIFAR(torch.utils.data.Dataset):
    """The usual per-sample pipeline: random crop with 4-px padding, flip, resize, normalise."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, size: int):
        self.images, self.labels, self.size = images, labels, size
        self.mean, self.std = torch.tensor(MEAN).view(3, 1, 1), torch.tensor(STD).view(3, 1, 1)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        x = torch.from_numpy(self.images[i]).float() / 255
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy, dx = np.random.randint(0, 9, 2)
        x = x[:, dy: dy + 32, dx: dx + 32]
        if np.random.rand() < 0.5:
            x = x.flip(-1)
        if self.size != 32:
            x = torch.nn.functional.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False)[0]
        return (x - self.mean) / self.std, int(self.labels[i])


def timed_steps(model, make_batch, steps, amp, channels_last):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    times = []
    for step in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        x, y = make_batch()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - t)
    return float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=at_least(1), default=5)
    parser.add_argument("--batch-size", type=at_least(1), default=128)
    parser.add_argument("--models", default="alexnet-cifar,alexnet")
    parser.add_argument("--ddp", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data-path", default=os.environ.get("CONVZOO_DATA"))
    args = parser.parse_args()
    train, _, _ = load_dataset("cifar10", args.data_path, quiet=True)
    b = args.batch_size
    print(f"batch {b}, median of {args.steps} steps after 2 warm-up steps; real CIFAR-10 images")
    print(f"{'model':14}{'variant':28}{'threads':>8}{'ms/step':>10}{'img/s':>9}{'vs baseline':>12}")
    for name in args.models.split(","):
        info = get_model_info(name)
        spec = InputSpec(3, info.input_size, info.fit, MEAN, STD)
        loader = iter(torch.utils.data.DataLoader(PerSampleCIFAR(train.images.numpy(), train.labels.numpy(),
                                                                 info.input_size), batch_size=b, shuffle=True))
        gen = torch.Generator().manual_seed(0)

        def on_device():
            index = torch.randint(0, len(train), (b,), generator=gen)
            return to_model_input(train.images[index], spec, augment="shift-flip", generator=gen), train.labels[index]

        for threads in (1, 2):
            torch.set_num_threads(threads)
            torch.manual_seed(0)
            base = timed_steps(create_model(name, 10, 3), lambda: next(loader), args.steps, False, False)
            print(f"{name:14}{'DataLoader baseline, fp32':28}{threads:>8}{base * 1000:>10.1f}{b / base:>9.1f}{1:>11.2f}x")
            for label, amp, cl in (("convzoo fp32", False, False), ("convzoo bf16 autocast", True, False),
                                   ("convzoo fp32 channels-last", False, True)):
                torch.manual_seed(0)
                t = timed_steps(create_model(name, 10, 3), on_device, args.steps, amp, cl)
                print(f"{name:14}{label:28}{threads:>8}{t * 1000:>10.1f}{b / t:>9.1f}{base / t:>11.2f}x")
    if args.ddp:
        ddp_compare(args, b)


def ddp_compare(args, b):
    """1 process x 2 threads vs 2 DDP processes x 1 thread, same global batch, through the real CLI."""
    common = ["--model", "alexnet-cifar", "--dataset", "cifar10", "--train-limit", str(b * (args.steps + 2)),
              "--batch-size", str(b), "--epochs", "1", "--quiet", "--exist-ok"]
    for label, cmd in (("1 process, 2 threads", [sys.executable, "-m", "convzoo", "train", "--threads", "2"]),
                       ("2 DDP processes, 1 thread each", [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                           "--nproc-per-node", "2", "-m", "convzoo", "train",
                                                           "--threads", "1"])):
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run(cmd + common + ["--output-dir", tmp], check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
            import csv

            with open(os.path.join(tmp, "metrics.csv")) as f:
                row = next(csv.DictReader(f))
        print(f"alexnet-cifar  {label:34} {float(row['images_per_s']):8.1f} img/s (whole epoch incl. first steps)")


if __name__ == "__main__":
    run(main)
