"""fp32 ONNX vs int8 ONNX in onnxruntime on this CPU, measured in the same run: batch-1 latency
(p50/p99), batch-256 throughput, file size, accuracy and agreement on the real test set.

    .venv/bin/python benchmarks/quant.py --ckpt runs/demo/best.pt --threads 2
    .venv/bin/python benchmarks/quant.py --model alexnet-cifar --threads 2      # untrained weights: speed only
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from convzoo.data.catalog import get_spec
from convzoo.data.tensors import InputSpec, load_dataset, to_model_input
from convzoo.deploy.export import export_onnx
from convzoo.metadata import deployment_metadata
from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint
from convzoo.models.registry import create_model, get_model_info
from convzoo.quant.ptq import calibration_batches, quantize_onnx
from convzoo.quant.report import compare, format_table


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ckpt", help="a trained convzoo checkpoint")
    parser.add_argument("--model", default="lenet5", help="without --ckpt: random weights of this model")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calib-batches", type=int, default=16)
    parser.add_argument("--test-images", type=int, default=10000)
    parser.add_argument("--data-path", default=os.environ.get("CONVZOO_DATA"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        dataset = args.dataset or ("cifar10" if args.model.startswith("alexnet") else "mnist")
        ckpt_path = Path(args.ckpt) if args.ckpt else random_checkpoint(args.model, dataset, tmp)
        ckpt = load_checkpoint(ckpt_path)
        spec = InputSpec.from_dict(ckpt["input"])
        train, test, _ = load_dataset(ckpt["dataset"], args.data_path, quiet=True)
        export_onnx(ckpt_path, tmp / "fp32.onnx")
        quantize_onnx(tmp / "fp32.onnx", tmp / "int8.onnx", calibration_batches(train, spec, args.calib_batches),
                      deployment_metadata(ckpt))
        n = args.test_images
        x = torch.cat([to_model_input(test.images[i: i + 1000], spec) for i in range(0, n, 1000)]).numpy()
        result = compare(tmp / "fp32.onnx", tmp / "int8.onnx", x, test.labels[:n].numpy(), threads=args.threads)
    print(f"{ckpt['model']} ({'trained: ' + str(ckpt_path) if args.ckpt else 'random weights: speed only'}), "
          f"int8 by PTQ (onnxruntime static quantization, {args.calib_batches} calibration batches of 64, no "
          f"fine-tune; `convzoo quantize` adds QAT), onnxruntime CPUExecutionProvider, threads {args.threads}")
    print(format_table(result))


if __name__ == "__main__":
    main()
