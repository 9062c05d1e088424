"""Bound the memory an ONNX graph from a user can ask for, before any runtime builds or runs it.

A 250 KB file can hold `ConstantOfShape([2**33])`: the runtime would allocate 32 GB on the first call.
onnx's shape inference (with constants propagated) gives every tensor's shape for one image; a tensor
over MAX_ELEMENTS is refused, and so is one made by an op that takes its size from values in the
graph (ConstantOfShape, Expand, Tile, ...) when inference cannot work that size out. Loops are
refused: how often they run is data too.
"""

from __future__ import annotations

from ..errors import ConfigError, first_line

MAX_ELEMENTS = 1 << 28  # per tensor for one image: 1 GiB of float32, ~300x AlexNet's largest activation
# Ops whose output can be larger than all their inputs together, by a size taken from data.
SIZED_BY_DATA = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot",
                 "RandomNormal", "RandomUniform", "Col2Im", "CenterCropPad", "MaxUnpool"}
LOOPS = {"Loop", "Scan"}


def check_tensor_sizes(model, path) -> None:
    """ConfigError naming the first tensor that could exceed MAX_ELEMENTS for a batch of one image.
    model: an onnx.ModelProto loaded without external data (initializers count by their declared dims)."""
    import onnx

    loops = sorted({node.op_type for node in model.graph.node} & LOOPS)
    if loops:
        raise ConfigError(f"the graph has a {loops[0]}: a classifier needs none, and its cost cannot be bounded", path)
    try:
        graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    except Exception as exc:  # onnx raises InferenceError and others for graphs that contradict themselves
        raise ConfigError(f"the graph's shapes do not add up ({first_line(exc)})", path) from None
    batch = {d.dim_param for i in graph.input for d in i.type.tensor_type.shape.dim[:1] if d.dim_param}
    for tensor in graph.initializer:
        check_size(tensor.name, list(tensor.dims), path)
    shapes = {info.name: dims_of(info, batch) for info in [*graph.value_info, *graph.output]}
    for node in graph.node:
        for out in filter(None, node.output):
            dims = shapes.get(out)
            if dims is not None and None not in dims:
                check_size(out, dims, path)
            elif node.op_type in SIZED_BY_DATA:
                raise ConfigError(f"tensor {out[:60]!r} ({node.op_type}) takes its size from data, and that size "
                                  "cannot be bounded before the model runs", path)


def dims_of(info, batch: set[str]) -> list[int | None] | None:
    """A tensor's dims for one image: the inputs' batch dimension is 1, another unknown one None."""
    kind = info.type.tensor_type if info.type.HasField("tensor_type") else None
    if kind is None or not kind.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else 1 if d.dim_param in batch and d.dim_param else None
            for d in kind.shape.dim]


def check_size(name: str, dims: list[int], path) -> None:
    size = 1
    for d in dims:
        size *= max(int(d), 0)
        if size > MAX_ELEMENTS:
            raise ConfigError(f"tensor {name[:60]!r} has shape {list(dims)[:8]}: more than {MAX_ELEMENTS:,} values "
                              "for one image", path)
