"""Training throughput: convzoo's on-device batches vs a pytorch/examples-style DataLoader baseline.

Both train the same LeNet-5 on the same 22,699 real MNIST images with the same batch size,
optimizer and thread count, in the same process, one after the other; the baseline decodes
each sample with PIL and normalises it per sample (as torchvision's MNIST + ToTensor + Normalize
do), then a DataLoader collates. Prints img/s, ms/step, epoch time, test accuracy and the ratio.

    .venv/bin/python benchmarks/train_mnist.py --threads 1 --epochs 1
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

from convzoo.config import TrainConfig
from convzoo.data.tensors import InputSpec, batches, load_dataset, to_model_input
from convzoo.engine.evaluate import evaluate
from convzoo.models.registry import create_model

from arguments import at_least, run


class PerSampleMNIST(torch.utils.data.Dataset):
    """pytorch/examples' data path: a PIL image per sample, ToTensor, pad to 32, Normalize."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, mean: float = 0.1307, std: float = 0.3081):
        self.images, self.labels, self.mean, self.std = images, labels, mean, std

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        image = Image.fromarray(self.images[i, 0], mode=None)
        x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None]
        x = torch.nn.functional.pad(x, (2, 2, 2, 2))
        return (x - self.mean) / self.std, int(self.labels[i])


def baseline_epoch(model, optimizer, loader) -> tuple[float, int]:
    model.train()
    steps, t = 0, time.perf_counter()
    for x, y in loader:
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
    return time.perf_counter() - t, steps


def convzoo_epoch(model, optimizer, train, spec, batch_size, epoch) -> tuple[float, int]:
    model.train()
    steps, t = 0, time.perf_counter()
    for _, images, labels in batches(train, batch_size, shuffle=True, seed=0, epoch=epoch, drop_last=True):
        loss = torch.nn.functional.cross_entropy(model(to_model_input(images, spec)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        steps += 1
    return time.perf_counter() - t, steps


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=at_least(1), default=1)
    parser.add_argument("--epochs", type=at_least(1), default=1)
    parser.add_argument("--batch-size", type=at_least(1), default=64)
    parser.add_argument("--workers", type=at_least(0), default=0, help="DataLoader workers for the baseline")
    parser.add_argument("--data-path", default=os.environ.get("CONVZOO_DATA"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    train, test, _ = load_dataset("mnist", args.data_path, quiet=True)
    spec = InputSpec(1, 32, "pad", (0.1307,), (0.3081,))
    cfg = TrainConfig()
    results = {}
    for name in ("baseline", "convzoo"):
        torch.manual_seed(0)
        model = create_model("lenet5")
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        loader = torch.utils.data.DataLoader(PerSampleMNIST(train.images.numpy(), train.labels.numpy()),
                                             batch_size=args.batch_size, shuffle=True, drop_last=True,
                                             num_workers=args.workers)
        seconds, steps = 0.0, 0
        for epoch in range(args.epochs):
            s, n = (baseline_epoch(model, optimizer, loader) if name == "baseline"
                    else convzoo_epoch(model, optimizer, train, spec, args.batch_size, epoch))
            seconds, steps = seconds + s, steps + n
        accuracy = evaluate(model, test, spec).accuracy
        results[name] = dict(img_s=steps * args.batch_size / seconds, ms_step=seconds / steps * 1000,
                             epoch_s=seconds / args.epochs, accuracy=accuracy)
    print(f"LeNet-5 on {len(train):,} MNIST images, batch {args.batch_size}, SGD, {args.epochs} epoch(s), "
          f"threads {args.threads}, baseline DataLoader workers {args.workers}")
    print(f"{'':10}{'img/s':>10}{'ms/step':>10}{'epoch s':>10}{'test acc':>10}")
    for name, r in results.items():
        print(f"{name:10}{r['img_s']:>10.0f}{r['ms_step']:>10.2f}{r['epoch_s']:>10.2f}{r['accuracy']:>10.4f}")
    print(f"ratio convzoo / baseline img/s: {results['convzoo']['img_s'] / results['baseline']['img_s']:.2f}x")


if __name__ == "__main__":
    run(main)
