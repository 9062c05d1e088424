"""Accuracy of a CIFAR-10 checkpoint on the shared test set's byte-exact records (0-1016 of
test_batch.bin, see the data's PROVENANCE.txt) and on the JPEG-derived rest, with the run's TTA.

    .venv/bin/python benchmarks/cifar_exact_subset.py runs/airbench-cifar-full/best.pt --data-path ../shared/data/cifar10
"""

from __future__ import annotations

import argparse

import torch

from convzoo.data.tensors import InputSpec, load_model_data
from convzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from convzoo.engine.evaluate import evaluate

from arguments import at_least, run

EXACT = 1017  # byte-exact test records (PROVENANCE.txt)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--data-path")
    parser.add_argument("--threads", type=at_least(1), default=2)
    parser.add_argument("--tta", help="default: the run's own")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint)
    _, test = load_model_data(ckpt, args.checkpoint, data_path=args.data_path)
    tta = args.tta or ckpt.get("config", {}).get("tta", "none")
    spec = InputSpec.from_dict(ckpt["input"])
    print(f"threads {args.threads}, TTA {tta}")
    for name, part in (("byte-exact records 0-1016", slice(0, EXACT)), ("JPEG-derived records 1017-9999",
                                                                          slice(EXACT, None)), ("all", slice(None))):
        split = test.subset(part)
        print(f"{name:32} {evaluate(model, split, spec, tta=tta).accuracy:.4f}  ({len(split)} images)")


if __name__ == "__main__":
    run(main)
