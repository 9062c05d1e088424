"""Bound the memory an ONNX graph from a user can ask for, before any runtime builds or runs it.

A 250 KB file can hold `ConstantOfShape([2**33])`: the runtime would allocate 32 GB on the first call.
onnx's shape inference (with constants propagated) gives every tensor's shape for one image; a tensor
over MAX_ELEMENTS is refused, and so is one made by an op that takes its size from values in the
graph (ConstantOfShape, Expand, Tile, ...) when inference cannot work that size out. Loops are
refused: how often they run is data too.

Shapes are inferred with the input's batch dimension set to 1 and again to 2: torch's exporters
compute a batch-sized tensor (an upsampled map, a ViT's class tokens expanded to the batch) from the
input's shape, and onnx's symbolic inference names such a dimension afresh ('unk__0'), not as the
input's batch, so it could not be told from a size taken from data. With a number for the batch it
is a number too; a tensor that more than doubles from 1 image to 2 grows faster than the batch and
is refused like an unknown size.

Graphs that would answer differently each run (random ops, Dropout in training mode) are refused
too: a classifier's prediction must not depend on the run.
"""

from __future__ import annotations

from ..errors import ConfigError, first_line

MAX_ELEMENTS = 1 << 28  # per tensor for one image: 1 GiB of float32, ~300x AlexNet's largest activation
# Ops whose output can be larger than all their inputs together, by a size taken from data.
SIZED_BY_DATA = {"ConstantOfShape", "Expand", "Tile", "Range", "Resize", "Upsample", "Pad", "OneHot",
                 "RandomNormal", "RandomUniform", "Col2Im", "CenterCropPad", "MaxUnpool"}
LOOPS = {"Loop", "Scan"}
# Ops of the default domain whose output is drawn at random on every run.
RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


def check_tensor_sizes(model, path, image: tuple[int, int, int] | None = None) -> None:
    """ConfigError naming the first tensor that could exceed MAX_ELEMENTS for a batch of one image.
    model: an onnx.ModelProto loaded without external data (initializers count by their declared dims);
    image: the input's dims after the batch ((channels, height, width), or (height, width, channels) for
    a channels-last graph) it is run with, for an input that leaves them open."""
    loops = sorted({node.op_type for node in model.graph.node} & LOOPS)
    if loops:
        raise ConfigError(f"the graph has a {loops[0]}: a classifier needs none, and its cost cannot be bounded", path)
    for tensor in model.graph.initializer:
        check_size(tensor.name, list(tensor.dims), path)
    light = light_probe(model)  # copied once: a copy with AlexNet's weights cost a second per inference
    one, two = inferred_shapes(light, 1, image, path), inferred_shapes(light, 2, image, path)
    for node in model.graph.node:
        for out in filter(None, node.output):
            dims, doubled = one.get(out), two.get(out)
            known = dims is not None and None not in dims
            if known and doubled is not None and None not in doubled and count(doubled) <= 2 * count(dims):
                grows = node.op_type in SIZED_BY_DATA and count(doubled) != count(dims)
                check_size(out, dims, path, f" ({node.op_type}) takes its size from data (the batch's size) and"
                           if grows else "")
            elif node.op_type in SIZED_BY_DATA:
                raise ConfigError(f"tensor {out[:60]!r} ({node.op_type}) takes its size from data, and that size "
                                  "cannot be bounded before the model runs", path)
            elif known:  # grows faster than the batch, from an op that cannot make a large tensor alone
                check_size(out, dims, path)


def light_probe(model):
    """A copy of `model` for shape inference: its initializers' names, types and dims, with the values
    only of those shape arithmetic can use (1-D, at most MAX_SLICE_VALUES: the sizes and axes onnx's
    data propagation and shape_value read); the weights' payloads and the metadata are left out."""
    import onnx

    probe = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name not in ("graph", "metadata_props"):
            copy_field(probe, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            copy_field(probe.graph, field, value)
    for tensor in model.graph.initializer:
        light = probe.graph.initializer.add()
        if len(tensor.dims) <= 1 and count(tensor.dims) <= MAX_SLICE_VALUES:
            light.CopyFrom(tensor)
        else:
            light.name, light.data_type = tensor.name, tensor.data_type
            light.dims.extend(tensor.dims)
    return probe


def copy_field(target, field, value) -> None:
    """One field of a protobuf message set on `target` (a message of the same type) from `value`; a
    string (names, doc strings: inference needs none, and a forged one need not be UTF-8) is left out."""
    if hasattr(value, "extend"):  # a repeated field
        getattr(target, field.name).extend(value)
    elif hasattr(value, "CopyFrom"):  # a message
        getattr(target, field.name).CopyFrom(value)
    elif not isinstance(value, (str, bytes)):
        setattr(target, field.name, value)


def inferred_shapes(light, batch: int, image, path) -> dict[str, list[int | None] | None]:
    """Every tensor's dims, inferred on a copy of `light` (light_probe) with the graph inputs' open dims
    set: dim 0 to `batch`, the others to `image` where given (a dim onnx cannot work out is None). A size
    op's size input that onnx does not fold (torch's expand(-1, ...) picks dims with Equal and Where) but
    that is computed from constants and known shapes alone is worked out here, and inference runs again
    with it."""
    import onnx

    probe = onnx.ModelProto()
    probe.CopyFrom(light)
    weights = {t.name for t in probe.graph.initializer}
    for graph_input in probe.graph.input:
        if graph_input.name in weights or not graph_input.type.HasField("tensor_type"):
            continue
        for i, dim in enumerate(graph_input.type.tensor_type.shape.dim):
            fixed = batch if i == 0 else image[i - 1] if image is not None and i <= len(image) else None
            if fixed is not None and not dim.HasField("dim_value"):
                dim.dim_value = fixed
    folded = set()
    for _ in range(MAX_FOLDS + 1):
        try:
            graph = onnx.shape_inference.infer_shapes(probe, data_prop=True).graph
        except Exception as exc:  # onnx raises InferenceError and others for graphs that contradict themselves
            raise ConfigError(f"the graph's shapes do not add up ({first_line(exc)})", path) from None
        shapes = {info.name: dims_of(info) for info in [*graph.value_info, *graph.output]}
        weights = {t.name for t in probe.graph.initializer}
        # The size inputs (a Resize's roi, scales and sizes; the others' second) of ops whose size is unknown.
        pending = [i for node in probe.graph.node if node.op_type in SIZED_BY_DATA
                   and any(shapes.get(o) is None or None in shapes[o] for o in filter(None, node.output))
                   for i in node.input[1:] if i and i not in weights and i not in folded]
        if not pending or len(folded) >= MAX_FOLDS:
            return shapes
        size_input = pending[0]
        folded.add(size_input)
        value = shape_value(probe, shapes, size_input)
        if value is not None:  # the size tensor becomes a constant of the probe, for the next inference
            probe.graph.node.remove(next(n for n in probe.graph.node if size_input in n.output))
            probe.graph.initializer.append(onnx.numpy_helper.from_array(value, size_input))
    return shapes


MAX_FOLDS = 16  # size tensors worked out per graph: a ViT has one (its class tokens' expand)
MAX_SLICE_NODES = 200
MAX_SLICE_VALUES = 1 << 16  # shape arithmetic handles a few numbers: a larger tensor in it is not that


def shape_value(model, shapes: dict, name: str):
    """The value of tensor `name` when it is computed from initializers, constants and the shapes of
    tensors whose dims are known (Shape, Size), through small tensors only; else None."""
    import numpy as np
    from onnx import helper, numpy_helper

    all_nodes = list(model.graph.node)
    producer = {o: i for i, n in enumerate(all_nodes) for o in n.output}  # a valid graph lists them in running order
    weights = {t.name: t for t in model.graph.initializer}
    nodes, inits, seen, todo = [], [], set(), [name]
    while todo:
        tensor = todo.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        if tensor in weights:
            if len(weights[tensor].dims) > 1 or count(weights[tensor].dims) > MAX_SLICE_VALUES:
                return None
            inits.append(weights[tensor])
            continue
        node = all_nodes[producer[tensor]] if tensor in producer else None
        dims = shapes.get(tensor)
        if node is None or len(nodes) >= MAX_SLICE_NODES or node.op_type in LOOPS or node.domain not in ("", "ai.onnx"):
            return None  # a graph input's values, or more than shape arithmetic
        if node.op_type in ("Shape", "Size"):
            source = (list(weights[node.input[0]].dims) if node.input[0] in weights else
                      shapes.get(node.input[0]) or dims_of_input(model, node.input[0]))
            if source is None or None in source:
                return None
            attributes = {a.name: a.i for a in node.attribute}
            start, end = attributes.get("start", 0), attributes.get("end", len(source))
            known = np.array(source[start:end] if node.op_type == "Shape" else count(source), np.int64)
            inits.append(numpy_helper.from_array(known, tensor))
            continue
        if node.op_type != "Constant" and (dims is None or None in dims or count(dims) > MAX_SLICE_VALUES):
            return None
        nodes.append(producer[tensor])
        todo += list(node.input)
    try:
        from onnx.reference import ReferenceEvaluator

        graph = helper.make_graph([all_nodes[i] for i in sorted(set(nodes))], "size", [],
                                  [helper.make_tensor_value_info(name, 0, None)], initializer=inits)
        value = ReferenceEvaluator(helper.make_model(graph, opset_imports=model.opset_import)).run(None, {})[0]
    except Exception:  # noqa: BLE001 - not evaluable here: the size stays unknown
        return None
    value = np.asarray(value)
    return value if value.dtype in (np.int64, np.float32) and value.ndim == 1 and value.size <= 16 else None


def dims_of_input(model, name: str):
    for info in model.graph.input:
        if info.name == name:
            return dims_of(info)
    return None


def dims_of(info) -> list[int | None] | None:
    """A tensor's dims (None for one onnx could not work out), or None when its shape is unknown."""
    kind = info.type.tensor_type if info.type.HasField("tensor_type") else None
    if kind is None or not kind.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else None for d in kind.shape.dim]


def count(dims: list[int]) -> int:
    size = 1
    for d in dims:
        size *= max(int(d), 0)
    return size


def check_size(name: str, dims: list[int], path, source: str = "") -> None:
    """ConfigError when a tensor of `dims` holds more than MAX_ELEMENTS values; `source` says where its
    size comes from, after its name. Stops multiplying at the limit: a forged shape can list many dims."""
    size = 1
    for d in dims:
        size *= max(int(d), 0)
        if size > MAX_ELEMENTS:
            raise ConfigError(f"tensor {name[:60]!r}{source} has shape {list(dims)[:8]}: more than {MAX_ELEMENTS:,} "
                              "values for one image", path)


def check_deterministic(model, path) -> None:
    """ConfigError naming the first op that makes the graph's answer change from run to run."""
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type in RANDOM_OPS:
            raise ConfigError(f"the graph has a {node.op_type} op (node {node.name[:60]!r}): its output is drawn at "
                              "random, so predictions would change from run to run", path)
        if node.op_type == "Dropout" and dropout_training(node, model.graph):
            raise ConfigError(f"the graph has a Dropout in training mode (node {node.name[:60]!r}): it drops values "
                              "at random, so predictions would change from run to run; export the model in eval "
                              "mode", path)


def dropout_training(node, graph) -> bool:
    """Does this Dropout drop at random: its training_mode input (opset 12 on) is true or not a constant,
    or its is_test attribute (opset 1..6) is 0."""
    from onnx import numpy_helper

    attributes = {a.name: a for a in node.attribute}
    if "is_test" in attributes:
        return attributes["is_test"].i == 0
    if len(node.input) < 3 or not node.input[2]:
        return False
    mode = node.input[2]
    for tensor in graph.initializer:
        if tensor.name == mode:
            return bool(numpy_helper.to_array(tensor).any())
    for const in graph.node:
        if const.op_type == "Constant" and mode in const.output:
            return constant_true(const)
    return True  # computed while running: it may be true


def constant_true(node) -> bool:
    """Is any value of a Constant node true: its value (a tensor), value_int(s) or value_float(s)? One
    it cannot tell (a sparse tensor, a string) counts as true."""
    import numpy as np
    from onnx import helper, numpy_helper

    for attribute in node.attribute:
        if attribute.name in ("value", "value_int", "value_ints", "value_float", "value_floats"):
            value = helper.get_attribute_value(attribute)
            return bool(numpy_helper.to_array(value).any() if attribute.name == "value" else np.any(value))
    return True
