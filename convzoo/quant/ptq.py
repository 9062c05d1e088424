"""int8 ONNX for onnxruntime: static quantization of a float ONNX graph (QDQ around every Conv and
Gemm, per-channel symmetric int8 weights, uint8 activations), calibrated on training batches, so
onnxruntime fuses the pattern into integer kernels."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import ConfigError


class BatchReader:
    """onnxruntime CalibrationDataReader over a list of input arrays."""

    def __init__(self, input_name: str, arrays: list[np.ndarray]):
        self.input_name, self.arrays = input_name, list(arrays)
        self.position = 0

    def get_next(self):
        if self.position >= len(self.arrays):
            return None
        self.position += 1
        return {self.input_name: self.arrays[self.position - 1]}

    def rewind(self):
        self.position = 0


def quantize_onnx(fp32_path, int8_path, calibration: list[np.ndarray], meta: dict, **variant) -> Path:
    """Write `int8_path` from the float graph at `fp32_path`; BatchNorm is folded by the pre-processing.
    `variant` overrides quantize_static's arguments (per_channel, quant_format, op_types_to_quantize):
    the alternatives benchmarks/quant.py measures."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    from ..deploy.export import save_onnx, set_metadata

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        quant_pre_process(str(fp32_path), str(prepared))
        quantize_static(str(prepared), str(quantized), BatchReader("input", calibration),
                        **{"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
                           "weight_type": QuantType.QInt8, "calibrate_method": CalibrationMethod.MinMax,
                           "extra_options": {"WeightSymmetric": True, "ActivationSymmetric": False}, **variant})
        model = onnx.load(str(quantized))
    set_metadata(model, {**meta, "int8": {"weights": "int8 per-channel symmetric", "activations": "uint8",
                                          "format": "QDQ", "calibration_batches": len(calibration),
                                          **{k: str(v) for k, v in variant.items()}}})
    save_onnx(model, int8_path)
    return Path(int8_path)


def calibration_batches(train, spec, count: int, batch_size: int = 64, seed: int = 0) -> list[np.ndarray]:
    """`count` shuffled training batches, preprocessed exactly as in training (no augmentation)."""
    from ..data.tensors import batches, to_model_input

    if count < 1:
        raise ConfigError(f"--calib-batches must be >= 1, got {count}")
    out = []
    for step, images, _ in batches(train, batch_size, shuffle=True, seed=seed, epoch=10_000):
        if step >= count:
            break
        out.append(to_model_input(images, spec).numpy())
    return out


def export_int8_from_checkpoint(ckpt_path, out_path, *, data_path=None, calib_batches: int = 32) -> dict:
    """Post-training quantization of a float checkpoint straight to an int8 ONNX file."""
    from ..data.tensors import InputSpec, load_model_data
    from ..deploy.export import export_onnx
    from ..metadata import deployment_metadata
    from ..engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    check_quantizable(ckpt["model"], ckpt_path)
    train, _ = load_model_data(ckpt, ckpt_path, data_path=data_path)
    calib = calibration_batches(train, InputSpec.from_dict(ckpt["input"]), calib_batches)
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp, "fp32.onnx")
        export_onnx(ckpt_path, fp32)
        quantize_onnx(fp32, out_path, calib, deployment_metadata(ckpt))
    return {"path": str(out_path), "calibration_batches": calib_batches}


def check_quantizable(model_name: str, path=None) -> None:
    from ..models.registry import MODELS, get_model_info

    if not get_model_info(model_name).quantizable:  # an unregistered name is a ConfigError too
        supported = sorted(name for name, info in MODELS.items() if info.quantizable)
        raise ConfigError(f"model {model_name!r} has no quantization recipe (supported: {', '.join(supported)})", path)
