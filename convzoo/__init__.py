"""convzoo's Python API: the CLI's jobs as functions.

    import convzoo
    run = convzoo.train(model="lenet5", dataset="mnist", epochs=1)    # any `convzoo train` flag
    convzoo.evaluate(run["checkpoint"]).accuracy
    convzoo.export(run["checkpoint"], "model.onnx")
    model = convzoo.load("model.onnx")            # or a checkpoint, a .safetensors file, "lenet5:mnist"
    convzoo.predict(model, ["digit.png", pil_image, numpy_array])

These names are stable. `import convzoo` imports no torch: loading and predicting with an ONNX file
work with the base install (no torch); train, evaluate, export and checkpoints need `convzoo[train]`.
Mistakes in the input raise ConvzooError (one line, as the CLI prints them).
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import NOT_UTF8, ConfigError, ConvzooError, not_utf8, path_error, shown

# onnxruntime 1.32's Linux builds upload usage events and keep a device id in ~/.cache/Microsoft unless
# this is set before it starts (a `.ses` file in $TMPDIR per process too). convzoo runs offline models on
# the user's machine: off unless the user chose (ORT_DISABLE_TELEMETRY=0 keeps onnxruntime's default).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

__all__ = ["train", "evaluate", "load", "predict", "export", "Model", "ConvzooError", "TrainConfig"]


def __getattr__(name):
    if name == "TrainConfig":  # lazily: config.py needs pyyaml, part of the train extra
        from .config import TrainConfig

        return TrainConfig
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("convzoo")
        except PackageNotFoundError:
            return "0+unknown"
    raise AttributeError(f"module 'convzoo' has no attribute {name!r}")


def _paths_checked(function):
    """A path no file can have (a 300-byte name, a link loop) given to the API raises ConvzooError, as
    the CLI prints it, not the OSError or RuntimeError from wherever it was first used."""
    import functools

    @functools.wraps(function)
    def checked(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except (OSError, RuntimeError) as exc:
            unusable = path_error(exc)
            if unusable is None:
                raise
            raise unusable from None

    return checked


@_paths_checked
def train(config=None, *, resume: bool = False, exist_ok: bool = False, quiet: bool = False, **flags) -> dict:
    """Train as `convzoo train` does; returns the last epoch's metrics, `best_acc`, `output_dir` and
    `checkpoint` (the run's best.pt).

    config: a preset name ("lenet5-mnist") or YAML file, a TrainConfig, a dict of TrainConfig fields, or
    None. Like a file, a dict or TrainConfig is a recipe: a setting in it that this run does not use
    (momentum with optimizer="adam") is a warning line; given as a keyword, it is refused.
    flags: TrainConfig fields that override it, spelled as the long CLI flags with underscores
    (model="lenet5", epochs=1, batch_size=64, train_limit=2048, output_dir="runs/x", logger="tensorboard";
    the flags' other spellings too: learning_rate=0.01 for lr).
    """
    import dataclasses

    from .config import TrainConfig, build_config, check_value, flag_name, is_config_file, key_names, recipe_settings
    from .engine.launch import train as run_training
    from .errors import ConfigError, unknown

    for name, value in (("resume", resume), ("exist_ok", exist_ok), ("quiet", quiet)):
        _boolean(name, value)  # exist_ok="no" is truthy: it replaced the run it was meant to keep
    if isinstance(config, os.PathLike):  # a path is a YAML file, whatever its name (a bare one reads as a preset's)
        config = os.fspath(config)
        if isinstance(config, str) and not is_config_file(config):
            config = os.path.join(os.curdir, config)
    if isinstance(config, str) and not config:  # as --config "" is refused: never the defaults unasked
        raise ConfigError("config must not be empty (None trains with the defaults)")
    if not (config is None or isinstance(config, (str, dict, TrainConfig))):
        raise ConfigError(f"config must be a preset name, a YAML file's path, a TrainConfig or a dict, not "
                          f"{type(config).__name__}")
    fields, spellings = {f.name for f in dataclasses.fields(TrainConfig)}, key_names()
    for key in [*(config if isinstance(config, dict) else ()), *flags]:  # train()'s own keywords are choices too
        if not isinstance(key, str) or key not in spellings:
            raise unknown("train option", str(key), fields | {"config", "resume", "exist_ok", "quiet"})
    given = {}
    for key, value in flags.items():  # learning_rate=0.1 as lr=0.1, as the CLI's --learning_rate
        name = spellings[key]
        if name in given:
            raise ConfigError(f"train() was given {name} twice ({given[name][0]}= and {key}=); keep one")
        given[name] = key, _plain(value)
        if value is None:  # the CLI's "not given": as a keyword it would silently be the default (epochs=None ran 10)
            check_value(name, None, flag_name(name))
    flags = {name: value for name, (_, value) in given.items()}
    if isinstance(config, TrainConfig):  # a recipe, as a dict is
        config = config.to_dict()
    if isinstance(config, dict):
        config = {k: _plain(v) for k, v in config.items()}
    cleared = [name for name, value in flags.items() if value is None]  # output_dir, data_path, classes, restore
    if cleared and config is not None:  # None is "not given": over a recipe's value it would keep that value
        chosen = recipe_settings(config)
        for name in cleared:
            if chosen.get(name) is not None:
                raise ConfigError(f"train(): {given[name][0]}=None cannot clear the recipe's {name} {chosen[name]!r}; "
                                  "leave the keyword out, or give a value")
    base, source = (None, "")
    if resume:  # as `convzoo train --resume`: the run's own settings, then what is given (checked against them)
        from .engine.rundir import saved_config

        base, source, paths = saved_config(config, flags)
        flags.update(paths)
    cfg = build_config(config, flags, base=base, base_source=source)
    result = run_training(cfg, resume=resume, exist_ok=exist_ok, quiet=quiet)
    return {**result, "checkpoint": str(Path(result["output_dir"]) / "best.pt")}


@_paths_checked
def evaluate(model, *, dataset: str | None = None, data_path=None, device: str = "auto", batch_size: int = 1000,
             threads: int = 0, runtime: str = "auto", test_limit: int = 0, tta: str | None = None, classes=None,
             mean=None, std=None, input_size: int | None = None, crop: float | None = None,
             interpolation: str | None = None, preprocessor=None, preprocess: str | None = None):
    """Test-set accuracy of a checkpoint, .safetensors, NAME:DATASET, ONNX file or loaded Model: an
    EvalResult with .accuracy, .per_class (None for a class with no test images), .classes, .confusion
    and .table(). As `convzoo eval`:
    threads: CPU threads (0: leave torch's setting alone; onnxruntime then uses 2, as the CLI does).
    runtime: what runs an ONNX file, as in load(). test_limit: score the first N test images only (0: all).
    tta: a checkpoint's test-time augmentation (None: the one its run was scored with).
    classes, mean, std, input_size, crop, interpolation, preprocessor, preprocess: an ONNX file made
    elsewhere, described as load() takes it; it is scored on `dataset`'s images of the classes it names."""
    from .deploy.runtime import RUNTIMES
    from .metadata import is_onnx

    batch_size = _integer("batch_size", batch_size, 1, 65536)  # the CLI's ranges
    threads = _integer("threads", threads, 0, 1024)
    test_limit = _integer("test_limit", test_limit, 0, 10**9)
    device = _device(device)
    if dataset is not None and not isinstance(dataset, str):
        raise ConfigError(f"dataset must be a data set name such as 'mnist', got {shown(dataset)}")
    _path_or_none("data_path", data_path)
    _choice("runtime", runtime, RUNTIMES)  # checkpoints run in torch, but a misspelt runtime is still refused
    if tta is not None:
        from .config import TTA_CHOICES

        _choice("tta", tta, TTA_CHOICES)
    path = _resolve(model.source if isinstance(model, Model) else model)
    onnx_file = is_onnx(path)
    if tta is not None and onnx_file:
        raise ConfigError("tta applies to a checkpoint (scored in PyTorch); an ONNX file is scored as it is", path)
    given = {"classes": classes, "mean": mean, "std": std, "input_size": input_size, "crop": crop,
             "interpolation": interpolation, "preprocessor": preprocessor, "preprocess": preprocess}
    # a Model loaded with a description (an ONNX file made elsewhere) is scored as loaded; arguments given
    # here win, and the whole is read once, as load() reads it (a preprocessor file's values and its own checks)
    loaded_with = model._described_with if isinstance(model, Model) else {}
    given = {k: loaded_with.get(k) if v is None else v for k, v in given.items()}
    if any(v is not None for v in given.values()):  # as `convzoo eval` refuses them, before a class file is read
        if not onnx_file:
            from .deploy.foreign import not_for_checkpoints

            raise not_for_checkpoints(path)
        if dataset is None:
            raise ConfigError("a model made elsewhere names no data set: evaluate takes dataset='mnist' (or another "
                              "name), whose classes are matched to the model's by name", path)
    if threads:
        import torch

        torch.set_num_threads(threads)
    if onnx_file:
        from .deploy.predict import evaluate_model_file

        return evaluate_model_file(path, dataset=dataset, data_path=data_path, threads=threads or 2, runtime=runtime,
                                   limit=test_limit, describe=_description(**given))
    from .engine.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(path, dataset=dataset, data_path=data_path, device=device, batch_size=batch_size,
                               tta=tta, limit=test_limit)


@_paths_checked
def load(path_or_name, *, threads: int = 1, runtime: str = "auto", classes=None, mean=None, std=None,
         input_size: int | None = None, crop: float | None = None, interpolation: str | None = None,
         preprocessor=None, preprocess: str | None = None) -> "Model":
    """A model ready to predict: an ONNX file (no torch needed), a convzoo checkpoint, a shipped
    .safetensors file or a pretrained name such as "lenet5:mnist". runtime: "onnxruntime", "openvino"
    (pip install 'convzoo[openvino]') or "auto" (OpenVINO for int8 files where installed).

    An ONNX classifier made elsewhere (timm, torchvision, Keras; Ultralytics exports name their classes)
    is described as `convzoo predict` takes it: classes (a list of names, {index: name}, a count, or what
    --classes takes: a file or "a,b,c"), mean and std (one number or one per channel, for pixels in
    0..1), input_size (when the graph leaves it open), crop (the centre fraction kept, as timm's
    crop_pct), interpolation (Pillow's filter for resizing photos: "bilinear", "bicubic", ...), preprocessor
    (a timm config.json or Hugging Face preprocessor_config.json to read the others from; arguments given
    override it) and preprocess ("resize", or "digit" / "fashion" for MNIST-like models)."""
    from .deploy.predict import Predictor

    threads = _integer("threads", threads, 1, 1024)  # before the file: a bad count is not the file's fault
    described_with = {"classes": classes, "mean": mean, "std": std, "input_size": input_size, "crop": crop,
                      "interpolation": interpolation, "preprocessor": preprocessor, "preprocess": preprocess}
    model = Model._made(Predictor(_resolve(path_or_name), threads=threads, runtime=runtime,
                                  describe=_description(**described_with)), str(path_or_name))
    model._described_with = described_with  # as given: evaluate(model) describes it again with its own arguments
    return model


def _description(*, classes, mean, std, input_size, crop, interpolation, preprocessor, preprocess) -> dict:
    """load()'s and evaluate()'s description of an ONNX file made elsewhere, as Predictor's `describe`
    (the CLI's describe_hints): classes given as a file, "a,b,c" or a count are read here; the values
    are checked against the graph when it is read."""
    from .deploy.foreign import read_classes, with_preprocessor

    classes, mean, std = _plain(classes), _plain(mean), _plain(std)  # np.float32(0.3), np.array([0.13]) as numbers
    if isinstance(classes, (str, int)) and not isinstance(classes, bool):
        classes = read_classes(str(classes))
    if input_size is not None:  # as --input-size takes it ('32' was compared with the graph's 32 and failed)
        input_size = _integer("input_size", input_size, 1, 512)
    given = {"classes": classes, "mean": mean, "std": std, "input_size": input_size, "crop": crop,
             "interpolation": interpolation, "preprocess": preprocess}
    return with_preprocessor({k: v for k, v in given.items() if v is not None}, preprocessor)


@_paths_checked
def predict(model, images, *, topk: int = 3) -> list[dict]:
    """One result per image: {'class', 'index', 'probability', 'topk': [...]} (plus 'file' for files).

    model: a Model from load(), or anything load() takes. images: one or a list of file paths,
    folders, quoted patterns ('shots/*.png'), PIL images, or numpy arrays (H x W grey, H x W x 3 RGB
    or H x W x 4 RGBA; integers in 0..255 or floats in 0..1; 40 megapixels at most, as files). They get the same preprocessing as `convzoo predict`.
    """
    from .deploy.predict import MAX_TOPK

    topk = _integer("topk", topk, 1, MAX_TOPK)  # before loading the model
    model = model if isinstance(model, Model) else load(model)
    return model.predict(images, topk=topk)


@_paths_checked
def export(checkpoint, output=None, *, format: str = "onnx", int8: bool = False, opset: int = 18,
           dynamic_batch: bool = True, data_path=None, exist_ok: bool = False) -> dict:
    """`convzoo export`: a checkpoint, .safetensors or NAME:DATASET -> a checked ONNX file (int8 with
    int8=True) or a torch.export .pt2 archive. Returns what `convzoo export --json` prints (path, parity, ...).
    output defaults to beside the checkpoint, or NAME-DATASET.onnx in the current folder for a name; a
    file already there is replaced only with exist_ok=True."""
    from .atomic import check_target

    _path_or_none("output", output)
    _choice("export format", format, ("onnx", "pt2"))
    opset = _integer("opset", opset, 18, 23)  # the CLI's range
    _boolean("int8", int8)
    _boolean("dynamic_batch", dynamic_batch)
    _path_or_none("data_path", data_path)
    _boolean("exist_ok", exist_ok)
    if int8 and format == "pt2":  # int8 is an ONNX graph; a .pt2 name on it would mislead every reader
        raise ConfigError("--int8 makes an ONNX file; it cannot be combined with --format pt2")
    if data_path is not None and not int8:  # taken and ignored, its folder never even looked at
        raise ConfigError("--data-path goes with --int8 (the images its calibration and checks read); an fp32 "
                          "export reads no data")
    source = checkpoint.source if isinstance(checkpoint, Model) else checkpoint
    path = _resolve(source, "checkpoint")
    source = str(source)
    from .metadata import is_onnx

    if is_onnx(path):
        raise ConfigError("already an ONNX file; export takes a checkpoint, .safetensors or NAME:DATASET", path)
    suffix = ".pt2" if format == "pt2" else "-int8.onnx" if int8 else ".onnx"
    if output is None:
        is_name = ":" in source and not Path(source).exists()
        output = Path(source.replace(":", "-") + suffix) if is_name else path.with_name(path.stem + suffix)
    # before the work, as convert does: a user's notes.onnx or another tool's model is not replaced unasked
    check_target(output, inputs=[path], suffixes=(".pt2",) if format == "pt2" else (".onnx",), exist_ok=exist_ok)
    if int8:
        from .quant.ptq import export_int8_from_checkpoint

        return export_int8_from_checkpoint(path, Path(output), data_path=data_path, exist_ok=exist_ok)
    from .deploy.export import export_onnx, export_pt2

    if format == "pt2":
        return export_pt2(path, output, exist_ok=exist_ok)
    return export_onnx(path, output, opset=opset, dynamic_batch=dynamic_batch, exist_ok=exist_ok)


class Model:
    """A loaded model: its description (.name, .dataset, .classes, .input, .preprocessing), the
    preprocessing itself (.preprocess(images) -> the float32 N x C x H x W batch it sees) and
    .predict(images). Made by convzoo.load(...), not by calling Model."""

    def __init__(self, *args, **kwargs):
        # Model("lenet5:mnist") was a bare TypeError, Model("a", "b") an AttributeError: say what makes one
        raise ConvzooError("a Model is made by convzoo.load(PATH_OR_NAME), e.g. convzoo.load(\"lenet5:mnist\") or "
                           "convzoo.load(\"model.onnx\"), not by calling Model(...)")

    @classmethod
    def _made(cls, predictor, source: str) -> "Model":
        """load()'s Model of a Predictor, bypassing __init__."""
        model = cls.__new__(cls)
        model._predictor = predictor
        model.source = source  # as given to load(): a path or NAME:DATASET
        model.path = predictor.path
        model.meta = dict(predictor.meta)
        model._described_with = {}
        return model

    name = property(lambda self: self.meta["model"])
    dataset = property(lambda self: self.meta.get("dataset"))
    classes = property(lambda self: list(self._predictor.classes))
    input = property(lambda self: dict(self.meta["input"]))  # channels, size, fit, mean, std
    preprocessing = property(lambda self: self.meta.get("preprocess", "resize"))  # digit | fashion | resize

    @_paths_checked
    def preprocess(self, images):
        """Images (as predict() takes them) -> the normalised float32 batch the model runs on."""
        decoded = _decoded(images)
        if not decoded:
            raise ConvzooError("no images given")
        return self._predictor.inputs([image for _, image, _ in decoded])

    @_paths_checked
    def predict(self, images, *, topk: int = 3) -> list[dict]:
        from .deploy.predict import MAX_TOPK

        topk = _integer("topk", topk, 1, MAX_TOPK)
        decoded = _decoded(images)
        results = self._predictor.predict_images([image for _, image, _ in decoded], topk)
        return [({"file": name} if is_file else {}) | r for (name, _, is_file), r in zip(decoded, results)]

    def __call__(self, images, *, topk: int = 3) -> list[dict]:
        return self.predict(images, topk=topk)

    def __reduce__(self):
        """Pickled as where it was loaded from and how (multiprocessing, joblib): a copy loads the file again
        (an onnxruntime session cannot be pickled), so the file must be there for it."""
        return _reloaded, (self.source, self._predictor.threads, self._predictor.runtime, self._described_with)

    def __repr__(self) -> str:
        return (f"Model({self.name!r}, dataset={self.dataset!r}, classes={len(self.classes)}, "
                f"input={self.input['channels']}x{self.input['size']}x{self.input['size']}, file={str(self.path)!r})")


def _reloaded(source: str, threads: int, runtime: str, described_with: dict) -> Model:
    """An unpickled Model: load() again, with the arguments it was loaded with."""
    return load(source, threads=threads, runtime=runtime, **described_with)


def _resolve(path_or_name, what: str = "model") -> Path:
    """NAME:DATASET -> the shipped weights file (verified); a path as is. Anything else is refused, not
    made a file name by str() (evaluate(None) scored a file named 'None')."""
    import os

    from .models.pretrained import resolve

    if isinstance(path_or_name, dict) and "checkpoint" in path_or_name:
        raise ConfigError(f"{what} must be a file path or a NAME:DATASET name, got train()'s result: pass its "
                          "['checkpoint']")
    if not isinstance(path_or_name, (str, os.PathLike)) or not str(path_or_name):
        raise ConfigError(f"{what} must be a file path or a NAME:DATASET name, got {shown(path_or_name)}")
    if not_utf8(os.fspath(path_or_name)):
        raise ConfigError(f"{what}: {os.fspath(path_or_name)} {NOT_UTF8}")
    return Path(resolve(os.fspath(path_or_name)))


def _decoded(images) -> list:
    """(name, PIL image, is_file) for paths, folders, patterns, PIL images and numpy arrays."""
    from PIL import Image

    from .data.images import orient, standard_mode
    from .deploy.predict import expand_image_paths
    from .deploy.preprocess import ImageError, load_image, read_pixels

    items = images if isinstance(images, (list, tuple)) else [images]
    out = []
    for i, item in enumerate(items):
        if isinstance(item, (str, Path)):
            for f in expand_image_paths([item]):
                out.append((str(f), load_image(f), True))
        elif isinstance(item, Image.Image):
            if 0 in item.size:  # as a file's image is refused (data/images.py open_image)
                raise ImageError("image is {}x{}: no pixels".format(*item.size), f"image[{i}]")
            _check_pixels(item.size[1], item.size[0], f"image[{i}]")  # from the header, before reading pixels
            # Upright by its EXIF orientation, as a file given by path is (load_image): a phone photo
            # opened with Image.open is stored sideways.
            name = f"image[{i}]"  # 8-bit now (standard_mode), so an image of NaN floats is named by its place
            out.append((name, standard_mode(orient(read_pixels(item, name), name), name), False))
        elif type(item).__module__ == "numpy":
            out.append((f"array[{i}]", _array_image(item, f"array[{i}]"), False))
        else:
            raise ConvzooError(f"images[{i}]: expected a path, a PIL image or a numpy array, not {type(item).__name__}")
    return out


def _check_pixels(height: int, width: int, name: str) -> None:
    """The files' megapixel limit, from the shape, before anything is converted or allocated (a
    broadcast 100,000 x 100,000 array grew to 9.8 GB, then failed with numpy's MemoryError)."""
    from .data.images import MAX_PIXELS, ImageTooLarge

    if height * width > MAX_PIXELS:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                            f"{MAX_PIXELS / 1e6:.0f}", name)


def _array_image(array, name: str):
    """H x W, H x W x 1/3/4 arrays (uint8 or other integers in 0..255, floats in 0..1) -> a PIL image."""
    import numpy as np
    from PIL import Image

    a = np.asarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (3, 4))) or 0 in a.shape:
        raise ConvzooError(f"{name}: expected an H x W, H x W x 3 or H x W x 4 image array, got shape {a.shape}")
    _check_pixels(a.shape[0], a.shape[1], name)
    if a.dtype != np.uint8:
        # As torchvision reads them: integers are 0..255 (numpy's default int64 included), floats 0..1.
        integer = np.issubdtype(a.dtype, np.integer)
        if not integer and not np.issubdtype(a.dtype, np.floating):  # complex, bool, object
            raise ConvzooError(f"{name}: expected an array of numbers, got dtype {a.dtype}")
        top = 255 if integer else 1
        if not np.isfinite(a).all() or a.min() < 0 or a.max() > top:
            raise ConvzooError(f"{name}: {'integer' if integer else 'float'} arrays must hold values in 0..{top} "
                               f"(got dtype {a.dtype})")
        a = a.astype(np.uint8) if integer else np.round(a * 255).astype(np.uint8)
    return Image.fromarray(a)


# The arguments' checks: the CLI's parser does these for its flags; the API gets the same ranges.
def _integer(name: str, value, low: int, high: int) -> int:
    """An integer (a numpy one too; not a bool) within low..high, as an int, or a ConfigError naming
    the argument."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not low <= value <= high:
        raise ConfigError(f"{name} must be an integer from {low} to {high}, got {shown(value)}")
    return int(value)


def _plain(value):
    """A train() argument as the other API functions take it: a path-like object (pathlib.Path) as its
    str, numpy scalars as Python's int, float or bool (lists, tuples and 1-d arrays item by item, as lists); anything else as given, for
    TrainConfig's checks to accept or refuse."""
    import os

    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)) or (type(value).__module__ == "numpy" and getattr(value, "ndim", 0) == 1):
        # classes=(3, 5) or np.array([3, 5]) as [3, 5]; one level only (no setting nests lists), so a
        # nested value is refused as given rather than copied whole, however many items it shares
        return [_scalar(v) for v in value]
    return _scalar(value)


def _scalar(value):
    """A numpy scalar as Python's int, float or bool; anything else as given."""
    import numbers

    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        if isinstance(value, numbers.Integral):
            return int(value)
        if isinstance(value, numbers.Real):  # via its shortest text: np.float32(0.01) is 0.01, not 0.0099999998
            return float(str(value))
        if value.dtype == bool:
            return bool(value)
    return value


def _boolean(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be True or False, got {shown(value)}")
    return value


def _choice(kind: str, value, choices) -> str:
    from .errors import unknown

    if not isinstance(value, str):
        raise ConfigError(f"unknown {kind} {value!r:.40}; choose from: {', '.join(sorted(choices))}")
    if value not in choices:
        raise unknown(kind, value, choices)
    return value


def _path_or_none(name: str, value) -> None:
    import os

    if value is not None and not isinstance(value, (str, os.PathLike)):
        raise ConfigError(f"{name} must be a path, got {shown(value)}")
    if value is not None and not str(value).strip():  # '' would quietly mean the default search
        raise ConfigError(f"{name} must not be empty")
    if not_utf8(os.fspath(value) if value is not None else None):
        raise ConfigError(f"{name}: {os.fspath(value)} {NOT_UTF8}")


def _device(value) -> str:
    """'auto', 'cpu', 'cuda', 'cuda:1', 'mps' (checked against the machine later), or a torch.device."""
    if type(value).__module__ == "torch" and type(value).__name__ == "device":
        return str(value)
    if not isinstance(value, str):
        raise ConfigError(f"device must be a name such as 'auto', 'cpu' or 'cuda', got {shown(value)}")
    return value
