"""Quantization-aware training to a real int8 ONNX model, on the real MNIST files."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from convzoo.engine.checkpoint import save_checkpoint
from convzoo.models.registry import create_model

from conftest import MNIST_DIR, assert_user_error, run_cli

# Any DeprecationWarning raised from torch.ao's modules becomes an error in this process.
NO_TORCH_AO = ("import warnings, sys; "
               "warnings.filterwarnings('error', category=DeprecationWarning, module=r'torch\\.ao(\\.|$)'); "
               "from convzoo.cli import main; sys.exit(main(sys.argv[1:]))")


@pytest.fixture(scope="module")
def qat_run(mnist_run):
    out = mnist_run.parent / "quant"
    proc = subprocess.run([sys.executable, "-c", NO_TORCH_AO, "quantize", "--ckpt", str(mnist_run / "best.pt"),
                           "--method", "qat", "--epochs", "1", "--data-path", str(MNIST_DIR), "--output-dir", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, proc


@pytest.mark.real_data
def test_qat_int8_accuracy(qat_run):
    out, proc = qat_run
    report = json.loads((out / "report.json").read_text())
    fp32, int8 = report["fp32"]["accuracy"], report["int8"]["accuracy"]
    assert int8 >= 0.983 and fp32 - int8 <= 0.003, report
    assert report["agreement_with_torch_int8"] >= 0.99, report
    assert report["int8"]["size_bytes"] <= 0.35 * report["fp32"]["size_bytes"]
    assert "| test accuracy" in proc.stdout and "| fp32/int8 agreement" in (out / "report.md").read_text()
    # the QAT checkpoint is a normal convzoo checkpoint
    assert torch.load(out / "qat.pt", weights_only=True)["quantization"]["method"] == "qat"


@pytest.mark.real_data
def test_int8_graph_has_integer_qdq_and_int8_weights(qat_run):
    out, _ = qat_run
    model = onnx.load(str(out / "model-int8.onnx"))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") >= 5 and ops.count("DequantizeLinear") >= 5
    weights = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    int8 = [w for w in weights.values() if w.dtype == np.int8 and w.ndim >= 2]
    assert len(int8) == 5  # two conv and three fully connected layers
    zero_points = [w for n, w in weights.items() if "zero_point" in n and w.dtype == np.uint8]
    assert zero_points, "activations should be uint8"


@pytest.mark.real_data
def test_eval_onnx_int8(qat_run):
    out, _ = qat_run
    proc = run_cli("eval", "--model", out / "model-int8.onnx", "--data-path", MNIST_DIR, check=0)
    accuracy = float(proc.stdout.split("'Accuracy': ")[1].split()[0])
    report = json.loads((out / "report.json").read_text())
    assert accuracy == pytest.approx(report["int8"]["accuracy"], abs=1e-4)


@pytest.mark.real_data
def test_quantize_bad_input(tmp_path, mnist_run):
    plain = tmp_path / "plain.pt"
    torch.save({"weights": torch.zeros(3)}, plain)
    assert_user_error(run_cli("quantize", "--ckpt", plain), "plain.pt", "not a convzoo checkpoint")
    alexnet = tmp_path / "alexnet.pt"
    save_checkpoint(alexnet, {"model": "alexnet", "num_classes": 10, "class_names": list("abcdefghij"),
                              "input": {"channels": 3, "size": 227, "fit": "resize", "mean": [0.5] * 3, "std": [0.5] * 3},
                              "state_dict": create_model("alexnet", 10, 3).state_dict(), "dataset": "cifar10"})
    assert_user_error(run_cli("quantize", "--ckpt", alexnet), "alexnet.pt", "no quantization recipe")
    assert_user_error(run_cli("quantize", "--ckpt", mnist_run / "best.pt", "--calib-batches", "0"),
                      "--calib-batches", "0 is outside 1..")


@pytest.mark.real_data
def test_lenet_quant_conv_bn_qat(tmp_path):
    """The seed's fused conv-BN-ReLU network: BN is folded into the int8 convolutions."""
    run = tmp_path / "run"
    run_cli("train", "--model", "lenet-quant", "--dataset", "mnist", "--data-path", MNIST_DIR, "--train-limit", "6400",
            "--epochs", "2", "--lr", "0.05", "--output-dir", run, "--quiet", check=0)
    run_cli("quantize", "--ckpt", run / "best.pt", "--epochs", "1", "--calib-batches", "8", "--data-path", MNIST_DIR,
            "--output-dir", tmp_path / "q", check=0)
    report = json.loads((tmp_path / "q" / "report.json").read_text())
    assert report["fp32"]["accuracy"] > 0.95 and report["fp32"]["accuracy"] - report["int8"]["accuracy"] < 0.01
    ops = [n.op_type for n in onnx.load(str(tmp_path / "q" / "model-int8.onnx")).graph.node]
    assert "BatchNormalization" not in ops and ops.count("QuantizeLinear") >= 5


@pytest.mark.real_data
def test_onnxruntime_fuses_the_int8_graph_into_integer_kernels(qat_run, tmp_path):
    """The README's claim: onnxruntime turns the QDQ graph into QLinearConv / QGemm integer kernels."""
    import onnxruntime as ort

    out, _ = qat_run
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(str(out / "model-int8.onnx"), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") == 2 and ops.count("QGemm") >= 2, ops


@pytest.mark.real_data
def test_ptq_method_and_export_int8(mnist_run, tmp_path):
    """--method ptq (no fine-tune) and `export --int8` both give int8 files within a point of fp32."""
    out = tmp_path / "ptq"
    run_cli("quantize", "--ckpt", mnist_run / "best.pt", "--method", "ptq", "--calib-batches", "8",
            "--data-path", MNIST_DIR, "--output-dir", out, check=0)
    report = json.loads((out / "report.json").read_text())
    assert report["method"] == "ptq" and not (out / "qat.pt").exists()
    assert report["int8"]["accuracy"] >= report["fp32"]["accuracy"] - 0.01, report
    exported = tmp_path / "exported-int8.onnx"
    run_cli("export", "--ckpt", mnist_run / "best.pt", "--int8", "--output", exported, "--data-path", MNIST_DIR,
            check=0)
    accuracy = float(run_cli("eval", "--model", exported, "--data-path", MNIST_DIR, check=0)
                     .stdout.split("'Accuracy': ")[1].split()[0])
    assert accuracy >= report["fp32"]["accuracy"] - 0.01
