"""ONNX image classifiers made elsewhere (timm, torchvision, Ultralytics -cls, Keras through tf2onnx),
which carry no convzoo description: one is built from what the user says (class names, mean and std,
input size, centre crop) and what the file says (its input's layout and size; Ultralytics' own metadata:
class names, image size, and its known preprocessing). Checked like any description (metadata.py)
before a runtime builds anything. Torch-free: serving imports it.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path

from ..errors import ConfigError
from ..metadata import (MAX_CHANNELS, MAX_CLASSES, MAX_INPUT_SIZE, MAX_NAME_CHARS, META_KEY, MetadataError,
                        check_graph_io, check_model_meta, image_input)

HINTS = ("classes", "mean", "std", "input_size", "crop", "preprocess")  # what a user may say about such a file
MAX_CLASSES_FILE = 16 << 20  # a class-name file larger than this is not one (ImageNet-21k's is ~1 MB)
MAX_ULTRALYTICS_NAMES = 4 << 20  # characters of Ultralytics' `names` entry read at most (21k names: ~0.7 MB)
# One `index: 'name'` pair of Ultralytics' names entry (Python's repr of a dict of ints to strings): read pair by
# pair, so a hostile entry costs linear time and no more memory than its text (ast.literal_eval of a 16 MB
# nested list took minutes and gigabytes).
NAME_PAIR = re.compile(r"""\s*(\d{1,9})\s*:\s*('(?:[^'\\\n]|\\.){0,1000}'|"(?:[^"\\\n]|\\.){0,1000}")\s*(,|$)""")
# Ultralytics' classify_transforms: pixels in 0..1, no normalisation, the shorter side resized to the
# input, then the centre square (crop fraction 1.0).
ULTRALYTICS_INPUT = {"mean": 0.0, "std": 1.0, "crop": 1.0}


def has_convzoo_metadata(onnx_model) -> bool:
    return any(p.key == META_KEY for p in onnx_model.metadata_props)


def describe(onnx_model, path, hints: dict | None) -> dict:
    """A checked convzoo description for an ONNX file without one. hints: the user's `classes` (a list of
    names), `mean`, `std` (one number, or one per channel, for pixels in 0..1), `input_size`, `crop`, and
    `preprocess` ('resize', or 'digit' / 'fashion' to read photos as MNIST's / Fashion-MNIST's images were made)."""
    hints = {k: v for k, v in (hints or {}).items() if v is not None}
    if hints.get("crop") is not None and hints.get("preprocess", "resize") != "resize":
        raise ConfigError(f"--crop goes with --preprocess resize; {hints['preprocess']} crops to the strokes", path)
    layout, channels, size = input_layout(onnx_model.graph, path, hints.get("mean"))
    found = ultralytics_hints(onnx_model, path)
    if found.get("input_size") and size and found["input_size"] != size:
        raise MetadataError(f"its Ultralytics metadata says imgsz {found['input_size']} but the graph's input is "
                            f"{size}x{size}", path)
    hints = {**found, **hints}  # the user's word first
    if hints.get("input_size") and size and hints["input_size"] != size:
        raise ConfigError(f"--input-size {hints['input_size']} does not match the graph's fixed input "
                          f"{size}x{size}", path)
    size = size or hints.get("input_size")
    if isinstance(hints.get("classes"), dict):  # the API's {index: name}
        hints["classes"] = indexed_names(hints["classes"], "classes", path)
    missing = [flag for flag, ok in (("--classes", "classes" in hints), ("--mean", "mean" in hints),
                                     ("--std", "std" in hints)) if not ok]
    if missing:
        raise MetadataError(f"ONNX file has no convzoo metadata; describe it with {', '.join(missing)} (the class "
                            "names, and the mean and std its training normalised pixels in 0..1 with; see the "
                            "README's 'Models made elsewhere'), or export it with `convzoo export`", path)
    if not size:
        raise MetadataError("the graph leaves its input's side open: give it with --input-size", path)
    if isinstance(hints["classes"], (list, tuple)):
        hints["classes"] = unique_names(list(hints["classes"]))
        if len(hints["classes"]) < 2:  # a sigmoid score's one output: softmax would make every answer 1.0
            raise MetadataError("a classifier needs an output per class, at least 2; a model with one output "
                                "(a sigmoid score) is not one convzoo can run", path)
    rule = hints.get("preprocess", "resize")
    if rule in ("digit", "fashion") and channels != 1:
        raise ConfigError(f"--preprocess {rule} reads grey images; the model takes {channels} channels", path)
    # A digit or garment is made 28x28 and centred on black, as in MNIST; a larger input gets it padded (LeNet-5's 32)
    spec = {"channels": channels, "size": size, "fit": "pad" if rule in ("digit", "fashion") else "resize",
            "mean": per_channel(hints["mean"], channels), "std": per_channel(hints["std"], channels)}
    meta = check_model_meta({"model": Path(path).stem[:200] or "model", "class_names": hints["classes"],
                             "input": spec, "preprocess": rule}, path, need_num_classes=False, need_dataset=False)
    meta["input"]["layout"] = layout
    if rule == "resize":  # a digit or garment is cropped to its strokes instead
        meta["input"]["crop"] = check_crop(hints.get("crop", 1.0), path)
    check_graph_io(onnx_model.graph, meta, path)
    return meta


def input_layout(graph, path, mean=None) -> tuple[str, int, int | None]:
    """('nchw' or 'nhwc', channels, side or None when open) of the graph's one image input: channels are
    the 1 or 3 long axis beside the square (or open) pair of spatial axes. An input with every axis open
    (Hugging Face exports' pixel_values) is (N, C, H, W) with a channel per value of `mean`."""
    dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
            for d in image_input(graph, path).type.tensor_type.shape.dim]
    shown = ["?" if d is None else d for d in dims]
    if len(dims) != 4:
        raise MetadataError(f"ONNX input shape {shown} is not an image batch (N, C, H, W) or (N, H, W, C)", path)
    if dims[1:] == [None, None, None]:
        if isinstance(mean, (list, tuple)) and len(mean) in (1, 3):
            return "nchw", len(mean), None
        raise MetadataError(f"ONNX input shape {shown} leaves the channels open: give --mean with one value per "
                            "channel (3 for RGB)", path)
    for layout, c, (h, w) in (("nchw", dims[1], dims[2:]), ("nhwc", dims[3], dims[1:3])):
        if c in (1, 3) and (h is None or h > MAX_CHANNELS) and (w is None or w > MAX_CHANNELS):
            if h != w and None not in (h, w):
                raise MetadataError(f"ONNX input shape {shown} is not square: convzoo runs square inputs only",
                                    path)
            side = h or w
            if side is not None and side > MAX_INPUT_SIZE:
                raise MetadataError(f"ONNX input side {side} is larger than {MAX_INPUT_SIZE}", path)
            return layout, c, side
    raise MetadataError(f"ONNX input shape {shown} has no grey (1) or RGB (3) channel axis beside its height "
                        "and width", path)


def ultralytics_hints(onnx_model, path) -> dict:
    """Class names, image size and preprocessing from an Ultralytics export's own metadata (its `names` is
    Python's repr of {index: name}); {} for other files. A detection or segmentation export is refused."""
    props = {p.key: p.value for p in onnx_model.metadata_props}
    if "names" not in props or "Ultralytics" not in props.get("author", "") + props.get("description", ""):
        return {}
    task = props.get("task", "classify")
    if task != "classify":
        raise MetadataError(f"an Ultralytics {task[:40]!r} model: convzoo runs image classifiers (task 'classify')",
                            path)
    text = props["names"]
    if len(text) > MAX_ULTRALYTICS_NAMES:
        raise MetadataError(f"its Ultralytics names entry is longer than {MAX_ULTRALYTICS_NAMES:,} characters", path)
    found = {**ULTRALYTICS_INPUT, "classes": indexed_names(ultralytics_names(text, path), "its Ultralytics names "
                                                                                           "entry", path)}
    if "imgsz" in props:
        found["input_size"] = ultralytics_size(props["imgsz"], path)
    return found


def ultralytics_names(text: str, path) -> dict:
    """{index: name} from Ultralytics' repr of a dict, pair by pair (NAME_PAIR); each name's quoted text is
    read by ast.literal_eval (a short literal: no code runs)."""
    inner = text.strip()
    if not (inner.startswith("{") and inner.endswith("}")):
        raise MetadataError("its Ultralytics names entry is not a {index: name} mapping", path)
    inner, names, at = inner[1:-1].strip(), {}, 0
    while at < len(inner):
        pair = NAME_PAIR.match(inner, at)
        if pair is None or pair.end() == at:
            raise MetadataError("its Ultralytics names entry is not a {index: name} mapping", path)
        try:
            name = ast.literal_eval(pair[2])
        except (ValueError, SyntaxError):
            raise MetadataError("its Ultralytics names entry is not a {index: name} mapping", path) from None
        if pair[1] in names or len(names) >= MAX_CLASSES:
            raise MetadataError(f"its Ultralytics names entry repeats index {pair[1]} or has more than "
                                f"{MAX_CLASSES:,} classes", path)
        names[pair[1]] = name
        at = pair.end()
    return names


def ultralytics_size(text: str, path) -> int:
    try:
        size = ast.literal_eval(text[:100])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        size = None
    sides = set(size) if isinstance(size, (list, tuple)) else {size}
    if len(sides) != 1 or not all(type(s) is int and 1 <= s <= MAX_INPUT_SIZE for s in sides):
        raise MetadataError(f"its Ultralytics imgsz {text[:40]!r} is not one square side in 1..{MAX_INPUT_SIZE}", path)
    return sides.pop()


def indexed_names(names, what: str, path) -> list:
    """{0: 'cat', 1: 'dog'} (keys as numbers or digit strings, each index once, 0..N-1) or a list -> names.
    The names themselves are checked with the rest of the description."""
    if isinstance(names, (list, tuple)):
        return list(names)
    if not isinstance(names, dict) or not 1 <= len(names) <= MAX_CLASSES:
        raise MetadataError(f"{what} must be a list or an {{index: name}} mapping of 1..{MAX_CLASSES:,} classes", path)
    try:
        indices = {int(k): v for k, v in names.items() if type(k) is int or (isinstance(k, str) and k.isdigit())}
    except ValueError:  # a digit string too long for int()
        indices = {}
    if sorted(indices) != list(range(len(names))):
        raise MetadataError(f"{what} must number its classes 0..{len(names) - 1}, each once", path)
    return [name[-1] if isinstance(name, list) and name else name for name in (indices[i] for i in range(len(names)))]


def check_crop(crop, path) -> float:
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0.05 <= crop <= 1:
        raise ConfigError(f"--crop must be a fraction in 0.05..1 (the centre part of the image kept, as timm's "
                          f"crop_pct), got {crop!r}", path)
    return float(crop)


def per_channel(value, channels: int) -> list:
    """One number for every channel, or a list (checked against the channel count with the description)."""
    return [value] * channels if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def unique_names(names: list) -> list:
    """Names as given, a repeated one numbered by its index ('crane (134)', 'crane (517)': ImageNet's own
    label files name two classes 'crane' and two 'maillot'), so every answer says which class it is."""
    counts = {}
    for name in names:
        counts[name] = counts.get(name, 0) + 1
    out = [f"{name} ({i})" if counts[name] > 1 else name for i, name in enumerate(names)]
    taken = set()
    for i, name in enumerate(out):  # a numbered name that another class already bears ('a (2)'): its index again
        while name in taken:
            name = f"{name} ({i})"
        taken.add(name)
        out[i] = name
    return out


def read_classes(text: str) -> list[str]:
    """--classes: a count N (names '0'..'N-1'), names separated by commas, or a file: one name per line
    (.txt), or JSON: a list, an {index: name} mapping, or a Hugging Face config.json's id2label."""
    text = text.strip()
    if text.isascii() and text.isdigit() and len(text) < 10:  # '²' is a digit to isdigit, not to int
        count = int(text)
        if not 1 <= count <= MAX_CLASSES:
            raise ConfigError(f"--classes {count}: a model has 1..{MAX_CLASSES:,} classes")
        return [str(i) for i in range(count)]
    path = Path(text)
    try:
        is_file = path.is_file()
    except OSError:  # a long list of names is no file name (ENAMETOOLONG), nor is one in a closed folder
        is_file = False
    if not is_file:
        if "," in text:
            return [name.strip() for name in text.split(",")]
        raise ConfigError(f"--classes {text[:80]!r} is neither a count, names separated by commas nor a file")
    if path.stat().st_size > MAX_CLASSES_FILE:
        raise ConfigError(f"larger than {MAX_CLASSES_FILE >> 20} MiB: not a list of class names", path)
    try:
        content = path.read_text(encoding="utf-8-sig")  # -sig: Windows editors' byte-order mark is not a name
    except UnicodeDecodeError:
        raise ConfigError("class names must be UTF-8 text", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read class names ({exc.strerror or exc})", path) from None
    if path.suffix.lower() != ".json":  # lines end at \n (\r\n too), not at str.splitlines' U+2028 or U+0085
        return checked_names([line.strip() for line in content.split("\n") if line.strip()], path)
    try:
        data = json.loads(content)
    except (ValueError, RecursionError):
        raise ConfigError("not valid JSON", path) from None
    if isinstance(data, dict) and "id2label" in data:  # a Hugging Face model's config.json
        data = data["id2label"]
    if isinstance(data, dict) and isinstance(data.get("label_names"), list):  # a timm hub config.json
        data = data["label_names"]
    return checked_names(indexed_names(data, "the class names", path), path)


def checked_names(names: list, path) -> list[str]:
    """Class names read from a file, checked there, so a problem names the file, not the model."""
    if not 1 <= len(names) <= MAX_CLASSES:
        raise ConfigError(f"holds {len(names):,} class names; a model has 1..{MAX_CLASSES:,}", path)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS:
            raise ConfigError(f"class {i}'s name must be text of 1..{MAX_NAME_CHARS} characters, got "
                              f"{str(name)[:40]!r}", path)
    return names


def parse_numbers(text: str, flag: str) -> float | list[float]:
    """--mean/--std: one number or one per channel, separated by commas."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ConfigError(f"{flag} takes numbers separated by commas, got {text[:60]!r}") from None
    if not all(math.isfinite(v) for v in values):
        raise ConfigError(f"{flag} takes finite numbers, got {text[:60]!r}")
    return values[0] if len(values) == 1 else values
