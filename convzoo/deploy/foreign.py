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

from ..errors import ConfigError, not_a_file, repeated_key
from ..metadata import (MAX_CHANNELS, MAX_CLASSES, MAX_INPUT_SIZE, MAX_NAME_CHARS, META_KEY, MetadataError,
                        ELEMENT_TYPES, check_graph_io, check_model_meta, image_input)

HINTS = ("classes", "mean", "std", "input_size", "crop", "interpolation", "preprocess")  # what a user may say
MAX_CLASSES_FILE = 16 << 20  # a class-name file larger than this is not one (ImageNet-21k's is ~1 MB)
MAX_PREPROCESSOR_FILE = 1 << 20  # timm's config.json and Hugging Face's preprocessor_config.json are ~1 KB
# How photos are resized (Pillow's filters); timm names them, Hugging Face numbers them as Pillow does.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "lanczos", "box", "hamming")
PIL_NUMBERS = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
TIMM_CROP_PCT = 0.875  # timm's DEFAULT_CROP_PCT, for a pretrained_cfg that names none
# Input element types convzoo can feed: float16 graphs get the normalised batch cast to half precision;
# uint8 graphs (TensorFlow's, some mobile exports) take raw pixels 0..255, normalised inside the graph.
INPUT_TYPES = {1: "float32", 10: "float16", 2: "uint8"}
RAW_PIXELS = {"mean": 0.0, "std": 1 / 255}  # convzoo's (pixels/255 - mean) / std = the pixels themselves
MAX_ULTRALYTICS_NAMES = 4 << 20  # characters of Ultralytics' `names` entry read at most (21k names: ~0.7 MB)
# One `index: 'name'` pair of Ultralytics' names entry (Python's repr of a dict of ints to strings): read pair by
# pair, so a hostile entry costs linear time and no more memory than its text (ast.literal_eval of a 16 MB
# nested list took minutes and gigabytes).
NAME_PAIR = re.compile(r"""\s*(\d{1,9})\s*:\s*('(?:[^'\\\n]|\\.){0,1000}'|"(?:[^"\\\n]|\\.){0,1000}")\s*(,|$)""")
# Ultralytics' classify_transforms: pixels in 0..1, no normalisation, the shorter side resized to the
# input, then the centre square (crop fraction 1.0).
ULTRALYTICS_INPUT = {"mean": 0.0, "std": 1.0, "crop": 1.0}


DESCRIBE_FLAGS = "--classes, --mean, --std, --input-size, --crop, --interpolation, --preprocessor and --preprocess"


def not_for_checkpoints(path) -> ConfigError:
    """The refusal of description hints (DESCRIBE_FLAGS) for a convzoo checkpoint or shipped weights, in
    the words eval, predict, serve and the Python API all use."""
    return ConfigError(f"{DESCRIBE_FLAGS} describe ONNX files made elsewhere; a convzoo checkpoint describes itself",
                       path)


def has_convzoo_metadata(onnx_model) -> bool:
    return any(p.key == META_KEY for p in onnx_model.metadata_props)


def describe(onnx_model, path, hints: dict | None) -> dict:
    """A checked convzoo description for an ONNX file without one. hints: the user's `classes` (a list of
    names), `mean`, `std` (one number, or one per channel, for pixels in 0..1), `input_size`, `crop`,
    `interpolation` (Pillow's filter for resizing photos), `preprocess` ('resize', or 'digit' / 'fashion' to
    read photos as MNIST's / Fashion-MNIST's images were made), and `size_hint` (read_preprocessor's side,
    used where the graph leaves its input's open). uint8 inputs take raw pixels: no mean or std."""
    hints = {k: v for k, v in (hints or {}).items() if v is not None}
    from_file = hints.pop("from_preprocessor", ())
    for flag in ("crop", "interpolation"):
        if hints.get(flag) is not None and hints.get("preprocess", "resize") != "resize":
            raise ConfigError(f"--{flag} goes with --preprocess resize; {hints['preprocess']} fits the strokes in "
                              "MNIST's way", path)
    dtype = input_type(onnx_model.graph, path)
    if dtype == "uint8":
        given = [f"--{k}" for k in ("mean", "std") if k in hints and k not in from_file]
        if given:
            raise ConfigError("the model takes uint8 pixels 0..255 as they are (its normalisation is inside the "
                              f"graph): {' and '.join(given)} {'do' if len(given) > 1 else 'does'} not apply", path)
        hints.update(RAW_PIXELS)
    layout, channels, size = input_layout(onnx_model.graph, path, hints.get("mean"))
    found = ultralytics_hints(onnx_model, path)
    if found.get("input_size") and size and found["input_size"] != size:
        raise MetadataError(f"its Ultralytics metadata says imgsz {found['input_size']} but the graph's input is "
                            f"{size}x{size}", path)
    hints = {**found, **hints}  # the user's word first
    if hints.get("input_size") and size and hints["input_size"] != size:
        raise ConfigError(f"--input-size {hints['input_size']} does not match the graph's fixed input "
                          f"{size}x{size}", path)
    size = size or hints.get("input_size") or hints.get("size_hint")  # a preprocessing file's side: open graphs only
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
        odd = next((name for name in hints["classes"] if not isinstance(name, str)), "")
        if odd != "":  # before the repeats are numbered: [None] * 10 became 'None (0)' .. 'None (9)'
            raise MetadataError(f"each class name must be a string, got {odd!r:.60}", path)
        hints["classes"] = unique_names(list(hints["classes"]))
        if len(hints["classes"]) < 2:  # a sigmoid score's one output: softmax would make every answer 1.0
            raise MetadataError("a classifier needs an output per class, at least 2; a model with one output "
                                "(a sigmoid score) is not one convzoo can run", path)
    rule = hints.get("preprocess", "resize")
    if rule in ("digit", "fashion") and channels != 1:
        raise ConfigError(f"--preprocess {rule} reads grey images; the model takes {channels} channels", path)
    # A digit or garment is made 28x28 and centred on black, as in MNIST; a larger input gets it padded (LeNet-5's 32)
    spec = {"channels": channels, "size": size, "fit": "pad" if rule in ("digit", "fashion") else "resize",
            "mean": per_channel(hints["mean"], channels, "mean", path),
            "std": per_channel(hints["std"], channels, "std", path)}
    meta = check_model_meta({"model": Path(path).stem[:200] or "model", "class_names": hints["classes"],
                             "input": spec, "preprocess": rule}, path, need_num_classes=False, need_dataset=False)
    meta["input"]["layout"] = layout
    meta["input"]["dtype"] = dtype
    if rule == "resize":  # a digit or garment is cropped to its strokes instead
        meta["input"]["crop"] = check_crop(hints.get("crop", 1.0), path)
        meta["input"]["interpolation"] = check_interpolation(hints.get("interpolation", "bilinear"), path)
    check_graph_io(onnx_model.graph, meta, path)
    return meta


def input_type(graph, path) -> str:
    """'float32', 'float16' or 'uint8': the element type of the graph's image input."""
    elem = image_input(graph, path).type.tensor_type.elem_type
    if elem not in INPUT_TYPES:
        kind = ELEMENT_TYPES.get(elem, f"element type {elem}")
        raise MetadataError(f"ONNX input is {kind}: convzoo feeds float32, float16 or uint8 images", path)
    return INPUT_TYPES[elem]


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


def check_interpolation(name, path) -> str:
    if name not in INTERPOLATIONS:
        raise ConfigError(f"--interpolation must be one of {', '.join(INTERPOLATIONS)}, got {str(name)[:40]!r}", path)
    return name


def check_crop(crop, path) -> float:
    if isinstance(crop, bool) or not isinstance(crop, (int, float)) or not 0.05 <= crop <= 1:
        raise ConfigError(f"--crop must be a fraction in 0.05..1 (the centre part of the image kept, as timm's "
                          f"crop_pct), got {crop!r}", path)
    return float(crop)


def per_channel(value, channels: int, key: str, path) -> list:
    """One number for every channel, or a list of one per channel (its range is checked with the description)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value] * channels
    if not isinstance(value, (list, tuple)) or len(value) != channels:
        raise ConfigError(f"{key} must be one number or a list of {channels} (one per input channel), got "
                          f"{str(value)[:60]!r}", path)
    return list(value)


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
    content = read_text(path, MAX_CLASSES_FILE, "class names")
    if path.suffix.lower() != ".json":
        return checked_names(name_lines(content, path), path)
    data = parse_json(content, path)
    if isinstance(data, dict) and "id2label" in data:  # a Hugging Face model's config.json
        data = data["id2label"]
    if isinstance(data, dict) and isinstance(data.get("label_names"), list):  # a timm hub config.json
        data = data["label_names"]
    return checked_names(indexed_names(data, "the class names", path), path)


def name_lines(content: str, path) -> list[str]:
    """A text file's class names, line i naming class i-1. Blank lines at the end are the file's ending;
    one inside the list is refused: dropped, it moved every later name to the class before its own."""
    lines = [line.strip() for line in content.split("\n")]  # \r\n too; not str.splitlines' U+2028 or U+0085
    while lines and not lines[-1]:
        lines.pop()
    if "" in lines:
        raise ConfigError(f"line {lines.index('') + 1} is blank: each line names one class, in the order of the "
                          "model's outputs", path)
    return lines


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


def read_text(path: Path, limit: int, what: str) -> str:
    """A small UTF-8 file's text (a byte-order mark dropped), or one line naming the file."""
    try:
        if path.stat().st_size > limit:
            raise ConfigError(f"larger than {limit >> 20} MiB: not a file of {what}", path)
        return path.read_text(encoding="utf-8-sig")  # -sig: Windows editors' byte-order mark is not content
    except UnicodeDecodeError:
        raise ConfigError(f"{what} must be UTF-8 text", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} ({exc.strerror or exc})", path) from None


def parse_json(content: str, path):
    try:
        return json.loads(content, object_pairs_hook=lambda pairs: distinct_keys(pairs, path))
    except (ValueError, RecursionError):
        raise ConfigError("not valid JSON", path) from None


def distinct_keys(pairs: list, path) -> dict:
    """json.loads' object_pairs_hook: a key given twice is refused (JSON keeps the last: `"4": "e", "4": "f"`
    named class 4 'f' without a word)."""
    problem = repeated_key(pairs)
    if problem:
        raise ConfigError(problem, path)
    return dict(pairs)


def with_preprocessor(hints: dict, file) -> dict:
    """The user's hints over those of a --preprocessor file (read_preprocessor), for `describe`."""
    if file is None:
        return hints
    if hints.get("preprocess", "resize") != "resize":
        raise ConfigError(f"--preprocessor describes photos resized to the input; --preprocess {hints['preprocess']} "
                          "fits the strokes in MNIST's way instead")
    settings = read_preprocessor(str(file))
    # which values only the file gave: a uint8 graph normalises inside, so the file's mean and std are
    # its training's, not something to refuse the way --mean/--std are
    return {**settings, **hints, "from_preprocessor": tuple(k for k in settings if k not in hints)}


def read_preprocessor(text: str) -> dict:
    """--preprocessor FILE: how a model's photos were prepared, from a timm hub config.json (its
    pretrained_cfg: mean, std, input_size, crop_pct, interpolation) or a Hugging Face
    preprocessor_config.json (image_mean, image_std, rescale_factor, size, crop_size or crop_pct, resample),
    as describe() hints; the user's own flags override them. The input side it names is used only where
    the graph leaves its own open ('size_hint')."""
    path = Path(text)
    if not path.is_file():
        raise ConfigError(not_a_file(path, "preprocessing file not found"), path)
    data = parse_json(read_text(path, MAX_PREPROCESSOR_FILE, "preprocessing settings"), path)
    if isinstance(data, dict) and isinstance(data.get("pretrained_cfg"), dict):  # timm's hub config.json
        return timm_settings(data["pretrained_cfg"], path)
    if isinstance(data, dict) and "image_mean" in data or isinstance(data, dict) and "do_normalize" in data:
        return hf_settings(data, path)
    if isinstance(data, dict) and "mean" in data and "std" in data:  # a pretrained_cfg saved on its own
        return timm_settings(data, path)
    raise ConfigError("neither a timm config.json (with pretrained_cfg) nor a Hugging Face "
                      "preprocessor_config.json (with image_mean and image_std)", path)


def timm_settings(cfg: dict, path) -> dict:
    """timm's eval transform: the centre crop_pct of the shorter side, resized to input_size with
    `interpolation`, normalised with mean and std (pixels in 0..1). test_input_size and test_crop_pct
    are not used, as timm's resolve_data_config does not use them unless asked (use_test_size=True)."""
    hints = {"mean": numbers(cfg.get("mean"), "mean", path), "std": numbers(cfg.get("std"), "std", path),
             "crop": crop_pct(cfg["crop_pct"], path) if cfg.get("crop_pct") is not None else TIMM_CROP_PCT}
    interpolation = cfg.get("interpolation", "bilinear")
    if interpolation not in (*INTERPOLATIONS, "random"):  # random: a training-time choice; bilinear at eval
        raise ConfigError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got "
                          f"{str(interpolation)[:40]!r}", path)
    hints["interpolation"] = "bilinear" if interpolation == "random" else interpolation
    size = cfg.get("input_size")
    if size is not None:
        if not (isinstance(size, list) and len(size) == 3 and all(type(v) is int for v in size)):
            raise ConfigError(f"input_size must be [channels, height, width], got {str(size)[:60]!r}", path)
        hints["size_hint"] = square(size[1], size[2], "input_size", path)
    return hints


def hf_settings(data: dict, path) -> dict:
    """Hugging Face's image processors: resize (the shorter side, or to a square), centre crop
    (crop_size, or ConvNeXt's crop_pct below 384 px), rescale by rescale_factor, normalise. convzoo
    normalises pixels in 0..1, so a rescale other than 1/255 is folded into mean and std."""
    rescale = data.get("rescale_factor", 1 / 255) if data.get("do_rescale", True) else 1.0
    if isinstance(rescale, bool) or not isinstance(rescale, (int, float)) or not 1e-6 <= rescale <= 1e6:
        raise ConfigError(f"rescale_factor must be a positive number, got {str(rescale)[:40]!r}", path)
    scale = 255 * rescale  # HF's input (pixels * rescale - m) / s = (pixels / 255 - m / scale) / (s / scale)
    if data.get("do_normalize", True):
        mean, std = numbers(data.get("image_mean"), "image_mean", path), numbers(data.get("image_std"), "image_std", path)
        hints = {"mean": [m / scale for m in mean], "std": [s / scale for s in std]}
    else:
        hints = {"mean": 0.0, "std": 1 / scale}
    resample = data.get("resample", 2)
    if type(resample) is not int or resample not in PIL_NUMBERS:
        raise ConfigError(f"resample must be one of Pillow's filter numbers 0..5, got {str(resample)[:40]!r}", path)
    hints["interpolation"] = PIL_NUMBERS[resample]
    hints["crop"] = 1.0
    if not data.get("do_resize", True):
        return hints
    size = data.get("size")
    side = hf_side(size, "size", path) if size is not None else None
    crop_size = data.get("crop_size")
    if data.get("do_center_crop") and crop_size is not None and side:
        crop_side = hf_side(crop_size, "crop_size", path)
        hints["crop"], side = min(1.0, crop_side / side), crop_side
    elif data.get("crop_pct") is not None and side and side < 384:  # ConvNeXt: resize to side / crop_pct, crop side
        hints["crop"] = crop_pct(data["crop_pct"], path)
    if side:
        hints["size_hint"] = side
    return hints


def crop_pct(value, path) -> float:
    """A preprocessing file's crop_pct (timm's and ConvNeXt's), checked here so a problem names the file."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.05 <= value <= 1:
        raise ConfigError(f"crop_pct must be a fraction in 0.05..1, got {str(value)[:40]!r}", path)
    return value


def hf_side(size, key: str, path) -> int:
    """A Hugging Face size: an int, {"shortest_edge": N} or {"height": N, "width": N}."""
    if type(size) is int:
        side = size
    elif isinstance(size, dict) and type(size.get("shortest_edge")) is int:
        side = size["shortest_edge"]
    elif isinstance(size, dict) and type(size.get("height")) is int and type(size.get("width")) is int:
        side = square(size["height"], size["width"], key, path)
    else:
        raise ConfigError(f"{key} must be a number of pixels, {{\"shortest_edge\": N}} or {{\"height\": N, "
                          f"\"width\": N}}, got {str(size)[:60]!r}", path)
    if not 1 <= side <= 4096:
        raise ConfigError(f"{key} {side} is not a side in 1..4096 pixels", path)
    return side


def square(height: int, width: int, key: str, path) -> int:
    if height != width:
        raise ConfigError(f"{key} is {height}x{width}: convzoo runs square inputs only", path)
    return height


def numbers(values, key: str, path) -> list:
    """A list of 1 or 3 finite numbers (mean, std), checked here so a problem names the file."""
    if (not isinstance(values, list) or len(values) not in (1, 3)
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)):
        raise ConfigError(f"{key} must be a list of 1 or 3 numbers, got {str(values)[:60]!r}", path)
    return [float(v) for v in values]
