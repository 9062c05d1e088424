"""int8 ONNX for onnxruntime: static quantization of a float ONNX graph (QDQ around every Conv and
Gemm, per-channel symmetric 7-bit int8 weights, uint8 activations), so onnxruntime fuses the pattern into
integer kernels. The scales and zero-points come from MinMax calibration on training batches (PTQ)
or, after QAT, from the fake-quant observers (qat.learned_qparams), passed to onnxruntime as
TensorQuantOverrides."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, ConfigError, first_line


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


def quantize_onnx(fp32_path, int8_path, calibration: list[np.ndarray], meta: dict,
                  learned: list[dict] | None = None, *, replace: bool = True, **variant) -> Path:
    """Write `int8_path` from the float graph at `fp32_path`; BatchNorm is folded by the pre-processing.
    With `learned` (QAT qparams) every QDQ pair QAT had carries its learned scale and zero-point, and the
    logits stay float as in QAT; the calibration then only feeds onnxruntime's required pass.
    `variant` overrides quantize_static's arguments (per_channel, quant_format, op_types_to_quantize):
    the alternatives benchmarks/quant.py measures."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    from ..atomic import scratch_folder
    from ..deploy.export import save_onnx, set_metadata

    with scratch_folder() as tmp:
        prepared, quantized = Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        quant_pre_process(str(fp32_path), str(prepared))
        options = {"WeightSymmetric": True, "ActivationSymmetric": False}
        if learned:
            # No weight-scale adjustment for the int32 bias: the weight scales stay exactly QAT's.
            options.update(TensorQuantOverrides=learned_overrides(onnx.load(str(prepared)), learned),
                           QDQDisableWeightAdjustForInt32Bias=True)
        # 7-bit weights (reduce_range), as QAT's (qat.WEIGHT_RANGE says why): with full 8-bit ones onnxruntime
        # on AVX2 CPUs without VNNI saturated, so `predict` (onnxruntime) and `serve`/`eval` (OpenVINO) gave one
        # file's images different classes (an airbench file: 10 of 25 CIFAR images alike)
        quantize_static(str(prepared), str(quantized), BatchReader("input", calibration),
                        **{"quant_format": QuantFormat.QDQ, "per_channel": True, "activation_type": QuantType.QUInt8,
                           "weight_type": QuantType.QInt8, "calibrate_method": CalibrationMethod.MinMax,
                           "op_types_to_quantize": INT8_OPS, "reduce_range": not learned, "extra_options": options,
                           **variant})
        model = onnx.load(str(quantized))
    if learned:
        clamp_weights(model, learned)
        drop_output_qdq(model)
    scales = ({"scales": "QAT observers", "weight_range": learned[0]["weight"]["range"]} if learned
              else {"scales": "MinMax", "calibration_batches": len(calibration),
                    "weight_range": [-64, 64] if variant.get("reduce_range", True) else [-127, 127]})
    set_metadata(model, {**meta, "int8": {"weights": "int8 per-channel symmetric", "activations": "uint8",
                                          "format": "QDQ", **scales, **{k: str(v) for k, v in variant.items()}}})
    save_onnx(model, int8_path, replace=replace)
    return Path(int8_path)


# Ops whose output is quantized with their input's qparams (torchao and onnxruntime both share them there).
# Relu is here because onnxruntime folds it into the preceding Conv/Gemm's output quantization (zero-point 0).
SAME_QPARAMS_OPS = {"MaxPool", "Relu", "Reshape", "Flatten", "Identity", "Squeeze", "Unsqueeze", "Transpose"}
# What int8 files quantize: the ops with integer kernels that pay, and the ones between them that share
# their qparams. onnxruntime's default would also wrap elementwise arithmetic (the Div/Erf/Add/Mul of
# an exported GELU, a BatchNormalization after a pool) in QDQ pairs that QAT never observed: airbench
# lost 5 points to PTQ that way and ran slower.
INT8_OPS = sorted({"Conv", "Gemm", "MatMul", *SAME_QPARAMS_OPS})


def learned_overrides(model, learned: list[dict]) -> dict:
    """onnxruntime TensorQuantOverrides mapping each QAT layer's qparams onto the ONNX graph: the i-th
    Conv/Gemm node is the i-th Conv/Linear of the QAT graph (both in execution order); its input tensor,
    and the tensors that carry the same values back through SAME_QPARAMS_OPS, get the input qparams,
    its weight initializer the per-channel weight qparams."""
    graph = model.graph
    layers = compute_nodes(model)
    if [node.op_type for node in layers] != [layer["op"] for layer in learned]:
        raise RuntimeError(f"QAT layers {[layer['op'] for layer in learned]} do not match the ONNX graph's "
                           f"{[node.op_type for node in layers]}")
    producers = producers_of(model)
    weights = {init.name: init for init in graph.initializer}
    overrides: dict[str, list[dict]] = {}
    for node, layer in zip(layers, learned):
        # onnxruntime takes an activation override as 0-d arrays of the QDQ initializers' types.
        entry = [{"scale": np.array(layer["input"]["scale"], np.float32),
                  "zero_point": np.array(layer["input"]["zero_point"], np.uint8)}]
        for name in same_value_chain(node.input[0], producers):
            if overrides.setdefault(name, entry)[0] != entry[0]:
                raise RuntimeError(f"tensor {name!r} gets two different QAT qparams")
        overrides[node.input[1]] = weight_overrides(node, weights[node.input[1]], layer["weight"])
    return overrides


def same_value_chain(name: str, producers: dict) -> list[str]:
    """`name` and the tensors it is a max-pool / ReLU / reshape of, back to the op that computed it."""
    chain = [name]
    while name in producers and producers[name].op_type in SAME_QPARAMS_OPS:
        name = producers[name].input[0]
        chain.append(name)
    return chain


def weight_overrides(node, weight, learned: dict) -> list[dict]:
    """Per output channel; a Gemm without transB keeps its weight as (in, out), so its channels are axis 1."""
    transposed = node.op_type == "Gemm" and not any(a.name == "transB" and a.i for a in node.attribute)
    axis = 1 if transposed else learned["axis"]
    if weight.dims[axis] != len(learned["scale"]):
        raise RuntimeError(f"{weight.name}: {weight.dims[axis]} channels, QAT learned {len(learned['scale'])}")
    return [{"axis": axis, "scale": s, "zero_point": z} for s, z in zip(learned["scale"], learned["zero_point"])]


def clamp_weights(model, learned: list[dict]) -> None:
    """Clamp each int8 weight to its QAT range (onnxruntime rounds to the full int8 range; QAT's 7-bit
    fake quantization clamps a channel's largest weight at 63 where rounding gives 64)."""
    from onnx import numpy_helper

    producers = producers_of(model)
    weights = {init.name: init for init in model.graph.initializer}
    for node, layer in zip(compute_nodes(model), learned):
        dequantize = producers.get(node.input[1])
        if dequantize is None or dequantize.op_type != "DequantizeLinear":
            continue  # a layer left in float (benchmarks/quant.py's mixed variants)
        weight = weights[dequantize.input[0]]
        values = numpy_helper.to_array(weight)
        weight.CopyFrom(numpy_helper.from_array(np.clip(values, *layer["weight"]["range"]).astype(values.dtype),
                                                weight.name))


def compute_nodes(model) -> list:
    return [node for node in model.graph.node if node.op_type in ("Conv", "Gemm")]


def producers_of(model) -> dict:
    """tensor name -> the node computing it."""
    return {out: node for node in model.graph.node for out in node.output}


def drop_output_qdq(model) -> None:
    """QAT leaves the logits float (no observer): remove the Quantize/Dequantize pair onnxruntime puts on
    each graph output, so the last Gemm writes float logits (onnxruntime fuses it into QGemm all the same)."""
    graph = model.graph
    producers = producers_of(model)
    for output in graph.output:
        dq = producers.get(output.name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is None or q.op_type != "QuantizeLinear":
            continue
        source = producers[q.input[0]]
        source.output[list(source.output).index(q.input[0])] = output.name
        graph.node.remove(q)
        graph.node.remove(dq)
        unused = set(q.input[1:]) - {name for node in graph.node for name in node.input}
        for init in [init for init in graph.initializer if init.name in unused]:
            graph.initializer.remove(init)


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


def checked_learned(quantization, path) -> list[dict] | None:
    """A checkpoint's QAT qparams (qat.learned_qparams' layout), checked before anything is built from
    them: a list of Conv/Gemm layers, each with a positive finite input scale and uint8 zero-point,
    and per-channel positive finite weight scales, int8 zero-points, an axis and an int8 range."""
    if quantization is None:
        return None
    if not isinstance(quantization, dict):
        raise CheckpointError(f"'quantization' must be a mapping, got {type(quantization).__name__}", path)
    learned = quantization.get("learned")
    if learned is None:
        return None
    positive = lambda v: isinstance(v, float) and math.isfinite(v) and v > 0  # noqa: E731
    whole = lambda v, low, high: isinstance(v, int) and not isinstance(v, bool) and low <= v <= high  # noqa: E731

    def layer_ok(layer) -> bool:
        if not (isinstance(layer, dict) and layer.get("op") in ("Conv", "Gemm")
                and isinstance(layer.get("input"), dict) and isinstance(layer.get("weight"), dict)):
            return False
        inp, w = layer["input"], layer["weight"]
        scales, points, limits = w.get("scale"), w.get("zero_point"), w.get("range")
        return (positive(inp.get("scale")) and whole(inp.get("zero_point"), 0, 255)
                and isinstance(scales, list) and isinstance(points, list) and 1 <= len(scales) == len(points) <= 65536
                and all(positive(v) for v in scales) and all(whole(v, -128, 127) for v in points)
                and whole(w.get("axis"), 0, 1) and isinstance(limits, list) and len(limits) == 2
                and all(whole(v, -128, 127) for v in limits) and limits[0] < limits[1])

    if not (isinstance(learned, list) and 1 <= len(learned) <= 256 and all(layer_ok(layer) for layer in learned)):
        raise CheckpointError("its QAT qparams ('quantization.learned') are malformed", path)
    return learned


def export_int8_from_checkpoint(ckpt_path, out_path, *, data_path=None, calib_batches: int = 32,
                                exist_ok: bool = True) -> dict:
    """A float checkpoint straight to an int8 ONNX file: post-training quantization, or for a QAT checkpoint
    (quantize's qat.pt) the qparams its observers learned. Without `exist_ok`, a file that appears at
    `out_path` meanwhile is kept."""
    from ..atomic import check_target, scratch_folder
    from ..data.tensors import InputSpec, load_model_data
    from ..deploy.export import export_onnx
    from ..metadata import deployment_metadata
    from ..engine.checkpoint import load_checkpoint

    check_target(out_path, inputs=[ckpt_path], suffixes=(".onnx",))
    ckpt = load_checkpoint(ckpt_path)
    check_quantizable(ckpt["model"], ckpt_path)
    train, _ = load_model_data(ckpt, ckpt_path, command="export --int8", data_path=data_path)
    calib = calibration_batches(train, InputSpec.from_dict(ckpt["input"]), calib_batches)
    learned = checked_learned(ckpt.get("quantization"), ckpt_path)
    with scratch_folder() as tmp:
        fp32 = tmp / "fp32.onnx"
        export_onnx(ckpt_path, fp32, ckpt=ckpt)
        try:
            quantize_onnx(fp32, out_path, calib, deployment_metadata(ckpt), learned=learned, replace=exist_ok)
        except RuntimeError as exc:  # the file's qparams do not fit its own model's graph
            raise CheckpointError(f"its QAT qparams do not fit the model: {first_line(exc)}", ckpt_path) from None
    return {"path": str(out_path), "calibration_batches": len(calib), "calibration_images": sum(map(len, calib)),
            "scales": "QAT" if learned else "MinMax"}


def check_quantizable(model_name: str, path=None) -> None:
    from ..models.registry import MODELS, get_model_info

    if not get_model_info(model_name).quantizable:  # an unregistered name is a ConfigError too
        supported = sorted(name for name, info in MODELS.items() if info.quantizable)
        raise ConfigError(f"model {model_name!r} has no quantization recipe (supported: {', '.join(supported)})", path)
