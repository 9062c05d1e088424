"""One schema for what a model file says about itself: checkpoints (.pt), shipped weights
(.safetensors) and ONNX files all carry the same description (model, classes, input spec,
preprocessing rule). It comes from outside, so it is checked here, types, ranges and required keys,
before anything is built or allocated from it. Torch-free: serving imports it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .data.catalog import DATASETS, find_spec, image_side, preprocess_rule
from .data.formats import MAX_CLASS_NAME_CHARS
from .errors import CheckpointError


def is_onnx(path) -> bool:
    """An ONNX model by its name (model.onnx, MODEL.ONNX): eval, predict and serve run it as it is."""
    return Path(path).suffix.lower() == ".onnx"


META_KEY = "convzoo"  # the ONNX / safetensors metadata entry holding the description
FORMAT_VERSION = 1  # of the description deployment_metadata writes; a reader refuses a newer one
# How an image of another size becomes the model's input (data/tensors.fit in training and eval,
# deploy/preprocess.fit for users' photos): 'pad' centres a smaller image on zeros, 'resize' scales it,
# 'none' takes the data set's images as they are (airbench, alexnet-cifar), so they must have the input's size.
FITS = ("pad", "resize", "none")
PREPROCESS_RULES = ("digit", "fashion", "resize")
MAX_CLASSES = 100_000
MAX_CHANNELS = 4
# Every zoo model takes at most 227x227; a bigger claim is a forged file, and it would size every
# batch buffer (a 12,000-pixel claim once asked for 15.9 GB).
MAX_INPUT_SIZE = 512
MAX_NAME_CHARS = MAX_CLASS_NAME_CHARS  # model and data set names too
# Normalisation: pixels are 0..1 when (x - mean) / std is taken, so real means lie in 0..1 and stds in
# about 0.001..1 (a blank image folder's std is floored at 0.001). The bounds leave room for any real
# convention (even 0..255 pixels' mean 127.5, std 64) while |(x - mean) / std| stays below ~1e10,
# nowhere near float32's 3e38: a forged [1e30] / [1e-30] overflowed to inf with numpy's warnings.
MAX_ABS_MEAN = 1e4
STD_RANGE = (1e-6, 1e6)
MAX_PATH_CHARS = 4096


class MetadataError(CheckpointError):
    """A model file whose self-description is missing, mistyped or out of range."""


def is_int(value) -> bool:
    """An int, not a bool (which Python counts as one)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _int(value, what: str, low: int, high: int, path) -> int:
    if not is_int(value) or not low <= value <= high:
        raise MetadataError(f"{what} must be an integer in {low}..{high}, got {_show(value)}", path)
    return value


def _str(value, what: str, path, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty) or len(value) > MAX_NAME_CHARS:
        raise MetadataError(f"{what} must be a string of 1..{MAX_NAME_CHARS} characters, got {_show(value)}", path)
    return value


def _floats(value, what: str, count: int, path, low: float, high: float) -> list[float]:
    ok = isinstance(value, (list, tuple)) and len(value) == count and all(is_real(v) and low <= v <= high
                                                                         for v in value)
    if not ok:
        raise MetadataError(f"{what} must be a list of {count} numbers in {low:g}..{high:g}, got {_show(value)}", path)
    return [float(v) for v in value]


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_input_spec(spec, path) -> dict:
    """The input spec {channels, size, fit, mean, std} with every field checked."""
    if not isinstance(spec, dict):
        raise MetadataError(f"input spec must be a mapping, got {_show(spec)}", path)
    missing = [k for k in ("channels", "size", "fit", "mean", "std") if k not in spec]
    if missing:
        raise MetadataError(f"input spec is missing {', '.join(missing)}", path)
    channels = _int(spec["channels"], "input channels", 1, MAX_CHANNELS, path)
    size = _int(spec["size"], "input size", 1, MAX_INPUT_SIZE, path)
    if spec["fit"] not in FITS:
        raise MetadataError(f"input fit must be one of {', '.join(FITS)}, got {_show(spec['fit'])}", path)
    return {"channels": channels, "size": size, "fit": spec["fit"],
            "mean": _floats(spec["mean"], "input mean", channels, path, -MAX_ABS_MEAN, MAX_ABS_MEAN),
            "std": _floats(spec["std"], "input std", channels, path, *STD_RANGE)}


def check_model_meta(meta, path, *, need_num_classes: bool = True, need_dataset: bool = True) -> dict:
    """Validate a model description; returns a clean copy (model, dataset, class_names, num_classes,
    input, preprocess). Raises MetadataError naming the file and the first problem. need_dataset False:
    a description the user gave for a model made elsewhere (deploy/foreign.py), which has none."""
    if not isinstance(meta, dict):
        raise MetadataError(f"model metadata must be a mapping, got {type(meta).__name__}", path)
    required = ("model", "class_names", "input") + (("num_classes",) if need_num_classes else ())
    missing = [k for k in required if k not in meta]
    if missing:
        raise MetadataError(f"model metadata is missing {', '.join(missing)}", path)
    names = meta["class_names"]
    if not isinstance(names, (list, tuple)) or not 1 <= len(names) <= MAX_CLASSES:
        raise MetadataError(f"class_names must be a list of 1..{MAX_CLASSES} names, got {_show(names)}", path)
    names = [_str(n, "each class name", path) for n in names]
    seen = set()
    for name in names:  # a prediction must say which class it is
        if name in seen:
            raise MetadataError(f"class_names repeats {_show(name)}: each class needs its own name", path)
        seen.add(name)
    num_classes = _int(meta["num_classes"], "num_classes", 1, MAX_CLASSES, path) if need_num_classes else len(names)
    if num_classes != len(names):
        raise MetadataError(f"num_classes is {num_classes} but there are {len(names)} class names", path)
    if "format_version" in meta:  # written since convzoo's first ONNX exports
        check_version(meta["format_version"], FORMAT_VERSION, "metadata format_version", path)
    dataset = check_dataset(meta, path if need_dataset else None)
    rule = meta.get("preprocess", preprocess_rule(dataset))
    if rule not in PREPROCESS_RULES:
        raise MetadataError(f"preprocess must be one of {', '.join(PREPROCESS_RULES)}, got {_show(rule)}", path)
    if dataset and rule != preprocess_rule(dataset):  # predict would read photos unlike the images eval reads
        raise MetadataError(f"preprocess is {_show(rule)} but a model of {dataset} reads images by the "
                            f"{preprocess_rule(dataset)!r} rule", path)
    checked = {"model": _str(meta["model"], "model name", path), "dataset": dataset, "class_names": names,
               "num_classes": num_classes, "input": check_input_spec(meta["input"], path), "preprocess": rule}
    if meta.get("data") is not None:
        checked["data"] = check_folder_rule(meta["data"], path)
    if dataset and checked["input"]["fit"] == "none" and image_side(checked) != checked["input"]["size"]:
        raise MetadataError(f"input fit 'none' takes the data set's images as they are, but {dataset}'s are "
                            f"{image_side(checked)}x{image_side(checked)} and the input is "
                            f"{checked['input']['size']}x{checked['input']['size']}", path)
    return checked


def check_version(version, newest: int, what: str, path) -> None:
    """A format version (a checkpoint's, a description's): a positive integer, at most `newest`, the one
    this convzoo writes; a newer one may hold fields this convzoo would misread."""
    if not is_int(version) or version < 1:
        raise MetadataError(f"{what} must be a positive integer, got {_show(version)}", path)
    if version > newest:
        raise MetadataError(f"{what} {version} was written by a newer convzoo (this one reads up to {newest}); "
                            "upgrade convzoo", path)


def check_dataset(meta: dict, path) -> str:
    """The data set a model was trained on, by its catalog name: it decides how photos are read
    (preprocess_rule), what eval reads and the size 'fit' starts from. A description read from a
    file (path given) must name one; the trainer's own check of class names (path None) has none yet."""
    if "dataset" not in meta:
        if path is None:
            return ""
        raise MetadataError(f"model metadata is missing dataset (one of {', '.join(DATASETS)})", path)
    dataset = meta["dataset"]
    spec = find_spec(dataset)
    if spec is None:
        raise MetadataError(f"dataset must be one of {', '.join(DATASETS)}, got {_show(dataset)}", path)
    return spec.name


def check_folder_rule(rule, path) -> dict:
    """How an image folder was read (catalog.FolderRule, and the folder in a checkpoint), checked."""
    if not isinstance(rule, dict):
        raise MetadataError(f"data must be a mapping, got {_show(rule)}", path)
    missing = [k for k in ("image_size", "channels", "test_split", "seed") if k not in rule]
    if missing:
        raise MetadataError(f"data is missing {', '.join(missing)}", path)
    split = rule["test_split"]
    if isinstance(split, bool) or not isinstance(split, (int, float)) or not 0 < split < 1:
        raise MetadataError(f"data test_split must be a number in (0, 1), got {_show(split)}", path)
    checked = {"image_size": _int(rule["image_size"], "data image_size", 1, MAX_INPUT_SIZE, path),
               "channels": _int(rule["channels"], "data channels", 1, MAX_CHANNELS, path),
               "test_split": float(split), "seed": _int(rule["seed"], "data seed", 0, 2**63 - 1, path)}
    if "path" in rule:
        folder = rule["path"]
        if not isinstance(folder, str) or not 0 < len(folder) <= MAX_PATH_CHARS:
            raise MetadataError(f"data path must be a string of 1..{MAX_PATH_CHARS} characters, got {_show(folder)}",
                                path)
        checked["path"] = folder
    if "split" in rule:  # the test split's fingerprint (data.formats.split_fingerprint); newer models only
        split = rule["split"]
        if not (isinstance(split, dict) and type(split.get("test_files")) is int and split["test_files"] >= 0
                and isinstance(split.get("test_sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", split["test_sha256"])):
            raise MetadataError(f"data split must be {{test_files: count, test_sha256: 64 hex digits}}, got "
                                f"{_show(split)}", path)
        checked["split"] = {"test_files": split["test_files"], "test_sha256": split["test_sha256"]}
    return checked


def deployment_metadata(meta: dict) -> dict:
    """What predict and serve need besides the graph, as written into ONNX and .pt2 files (with an
    image folder's reading rule and path, for `predict --from-test` and `eval --model`)."""
    out = {"model": meta["model"], "dataset": meta.get("dataset", ""), "class_names": list(meta["class_names"]),
           "input": dict(meta["input"]), "preprocess": preprocess_rule(meta.get("dataset", "")),
           "format_version": FORMAT_VERSION}
    if meta.get("data"):
        out["data"] = dict(meta["data"])
    return out


def parse_json_meta(text, path, *, need_num_classes: bool = True) -> dict:
    """The JSON description stored in an ONNX or safetensors file, parsed and checked."""
    try:
        meta = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise MetadataError(f"the {META_KEY!r} metadata entry is not valid JSON", path) from None
    return check_model_meta(meta, path, need_num_classes=need_num_classes)


def read_onnx_metadata(onnx_model, path) -> dict:
    """An onnx.ModelProto's convzoo description, checked against the graph's one input."""
    entries = [p.value for p in onnx_model.metadata_props if p.key == META_KEY]
    if not entries:
        raise MetadataError("ONNX file has no convzoo metadata (a model made elsewhere: predict, eval and serve run "
                            "it with --classes, --mean and --std; convzoo's own models: `convzoo export`)", path)
    meta = parse_json_meta(entries[0], path, need_num_classes=False)
    check_graph_io(onnx_model.graph, meta, path)
    return meta


def image_input(graph, path):
    """The graph's one input that is not a weight (older exporters list initializers as inputs too)."""
    initializers = {t.name for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise MetadataError(f"ONNX graph must have exactly one input, it has {len(inputs)}", path)
    return inputs[0]


ELEMENT_TYPES = {2: "uint8", 3: "int8", 6: "int32", 7: "int64", 10: "float16", 11: "float64", 16: "bfloat16"}


def check_graph_io(graph, meta: dict, path) -> None:
    """Exactly one float image input (N, C, H, W) whose fixed dims match the spec, one output."""
    image = image_input(graph, path)
    if len(graph.output) != 1:
        raise MetadataError(f"ONNX graph must have exactly one output (the logits), it has {len(graph.output)}", path)
    out_dims = [d.dim_value if d.HasField("dim_value") else None for d in graph.output[0].type.tensor_type.shape.dim]
    if len(out_dims) == 2 and out_dims[-1] is not None and out_dims[-1] != len(meta["class_names"]):
        raise MetadataError(f"ONNX output has {out_dims[-1]} logits but the metadata names "
                            f"{len(meta['class_names'])} classes", path)
    tensor = image.type.tensor_type
    dtype = meta["input"].get("dtype", "float32")  # a model made elsewhere may take float16 or uint8 (foreign.py)
    kind = {1: "float32"}.get(tensor.elem_type) or ELEMENT_TYPES.get(tensor.elem_type, f"element type {tensor.elem_type}")
    if kind != dtype:
        raise MetadataError(f"ONNX input {image.name!r} is {kind}, not {dtype}: convzoo feeds {dtype} images", path)
    dims = [d.dim_value if d.HasField("dim_value") else None for d in tensor.shape.dim]
    spec = meta["input"]
    want = [None, spec["channels"], spec["size"], spec["size"]]
    if spec.get("layout") == "nhwc":  # a model made elsewhere (deploy/foreign.py): channels last
        want = want[:1] + want[2:] + want[1:2]
    if len(dims) != 4 or any(d is not None and w is not None and d != w for d, w in zip(dims[1:], want[1:])):
        shown = ", ".join("N" if w is None else str(w) for w in want)
        raise MetadataError(f"ONNX input shape {['?' if d is None else d for d in dims]} does not match the "
                            f"metadata's input spec ({shown})", path)
