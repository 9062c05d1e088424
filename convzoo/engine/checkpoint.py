"""Self-describing checkpoints: atomic save, safe load, and restore-with-exclude for transfer learning.

A checkpoint is a dict of tensors and plain Python values, loaded with weights_only=True: a file
that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import fnmatch
import pickle
import warnings
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_open
from ..errors import CheckpointError, ConfigError, first_line
from ..metadata import META_KEY, check_model_meta, parse_json_meta
from ..models import pretrained

FORMAT = "convzoo-checkpoint"
VERSION = 1
REQUIRED = ("model", "num_classes", "class_names", "input", "state_dict")


def save_checkpoint(path, payload: dict) -> None:
    """torch.save to a temp file beside `path`, fsync, rename: a crash never leaves half a file."""
    # Through a file object: torch.save to a path reports a full disk as a bare RuntimeError.
    with atomic_open(path) as f:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, f)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a model: a convzoo checkpoint (.pt), a shipped .safetensors file, or a
    shipped pretrained name such as lenet5:mnist. Every failure is one CheckpointError line."""
    path = model_file(path)
    if path.suffix.lower() == ".safetensors" or looks_like_safetensors(path):  # also one named .pt
        return load_safetensors(path)
    return check_checkpoint(read_torch_file(path, map_location), path)


def model_file(path) -> Path:
    """`path` (or a NAME:DATASET's shipped file), checked to be a file."""
    path = pretrained.resolve(path)
    if path.name == "last.pt" and not path.exists() and (path.parent / "config.yaml").is_file():
        # A run killed in its first epoch: `train --resume` (which reads last.pt) has nothing to continue.
        raise CheckpointError("no checkpoint to resume from yet: the run in this folder stopped before writing "
                              "last.pt (at the end of its first epoch, or every --save-every steps); start it over "
                              "with --exist-ok", path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found" if not path.exists() else "not a regular file (a folder, "
                              "device or pipe); give the checkpoint file itself", path)
    return path


def read_torch_file(path: Path, map_location="cpu"):
    """torch.load(weights_only=True) of a torch zip or pickle file; anything else, or a file that
    needs arbitrary unpickling, is one CheckpointError line."""
    if path.suffix.lower() == ".onnx":  # torch would call its protobuf bytes an unsafe pickle
        raise CheckpointError("an ONNX file, not a checkpoint: eval, predict and serve take it with --model", path)
    if path.suffix.lower() == ".pt2":  # torch.export's archive: torch.load calls it corrupt
        raise CheckpointError("a torch.export archive (.pt2), which convzoo writes but does not run; pass the "
                              "checkpoint (.pt, .safetensors, NAME:DATASET) or its exported .onnx", path)
    check_torch_signature(path)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's text is a paragraph about weights_only; what it refused follows "WeightsUnpickler error:".
        found = str(exc).partition("WeightsUnpickler error:")[2].strip()
        reason = first_line(found, 120) if found else first_line(exc)
        raise CheckpointError(f"refused to load: the file needs arbitrary unpickling, which could run code ({reason})",
                              path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError, TypeError, AttributeError,
            IndexError, UnicodeDecodeError, MemoryError, OverflowError, RecursionError) as exc:
        # A damaged zip or pickle stream surfaces as almost any of these from inside torch.load.
        raise CheckpointError(f"truncated or corrupt checkpoint ({first_line(exc)})", path) from None


# File signatures of what is often passed by mistake (an image as --model, arguments swapped).
SIGNATURES = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
              (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
              (b"\x1f\x8b", "a gzip file"), (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy .npy array"),
              (b"\x89HDF", "an HDF5 file (a Keras .h5 model?)")]


def check_torch_signature(path: Path) -> None:
    """A torch checkpoint is a zip ('PK') or, in the legacy format, a pickle (0x80 and its protocol):
    anything else is named here, before torch.load calls a PNG an unsafe pickle."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return  # torch.load reports it
    if head[:2] == b"PK" or head[:1] == b"\x80":
        return
    kind = next((name for magic, name in SIGNATURES if head.startswith(magic)), None)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        kind = "a WebP image"
    elif head[4:8] == b"ftyp":
        kind = "an HEIC/AVIF image or a video"
    elif not kind and len(head) > 2 and head[0] == 0x08 and 3 <= head[1] <= 20 and head[2] in (0x12, 0x3A):
        kind = "an ONNX model (its name must end in .onnx; eval, predict and serve take it with --model)"
    elif not head:
        kind = "an empty file"
    elif not kind:
        kind = f"unrecognised format (it starts with bytes {head[:8].hex(' ')})"
    raise CheckpointError(f"not a checkpoint or model: {kind}; expected a convzoo checkpoint (.pt), a .safetensors "
                          "file, NAME:DATASET or an .onnx model", path)


def check_checkpoint(ckpt, path) -> dict:
    """A loaded .pt's contents checked as a convzoo checkpoint: format record, description, tensors."""
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError("not a convzoo checkpoint (no 'format: convzoo-checkpoint' record); a plain "
                              "state_dict can only initialise training, with train --restore", path)
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"convzoo checkpoint is missing {', '.join(missing)}", path)
    ckpt.update(check_model_meta(ckpt, path))
    check_state_dict(ckpt["state_dict"], path)
    return ckpt


# Where other trainers keep the weights in their checkpoint dicts.
STATE_DICT_KEYS = ("state_dict", "model_state_dict", "model")


def load_weights(path) -> dict[str, torch.Tensor]:
    """The tensors --restore starts from: a convzoo checkpoint or .safetensors (validated in full), or
    another trainer's weights: a plain state_dict, a dict holding one under STATE_DICT_KEYS, or a
    .safetensors file without convzoo's description. A 'module.' prefix (DataParallel/DDP) is dropped."""
    path = model_file(path)
    if path.suffix.lower() == ".safetensors" or looks_like_safetensors(path):
        return load_safetensors(path, need_meta=False)["state_dict"]
    obj = read_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        return check_checkpoint(obj, path)["state_dict"]
    candidates = [obj] + ([obj.get(k) for k in STATE_DICT_KEYS] if isinstance(obj, dict) else [])
    state = next((c for c in candidates if is_state_dict(c)), None)
    if state is None:
        raise CheckpointError("no weights found: expected a convzoo checkpoint, a state_dict (names to tensors) "
                              f"or a dict holding one under {', '.join(map(repr, STATE_DICT_KEYS))}", path)
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    check_state_dict(state, path)
    return state


def is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def looks_like_safetensors(path: Path) -> bool:
    """safetensors' layout: an 8-byte little-endian header size, then the JSON header's '{'
    (a torch checkpoint starts with a zip's 'PK' or a pickle's 0x80)."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False  # torch.load below reports it
    return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100 << 20


def load_safetensors(path: Path, *, need_meta: bool = True) -> dict:
    """A checkpoint-like dict (model, classes, input spec, state_dict) from a convzoo .safetensors file;
    without `need_meta`, a file with no description gives just its state_dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        raise CheckpointError(f"not a safetensors file ({first_line(exc)})", path) from None
    if META_KEY not in meta and need_meta:
        raise CheckpointError(f"not a convzoo safetensors file (no {META_KEY!r} metadata entry)", path)
    info = parse_json_meta(meta[META_KEY], path) if META_KEY in meta else {}  # checked before a tensor is read
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        raise CheckpointError(f"corrupt safetensors file ({first_line(exc)})", path) from None
    check_state_dict(state, path)
    return {**info, "state_dict": state}


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
COUNTERS = "num_batches_tracked"  # BatchNorm's step count, the zoo's only integer tensor


def check_state_dict(state, path) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in state.items()):
        raise CheckpointError("state_dict must map parameter names to tensors", path)
    for name, tensor in state.items():  # one pass over the weights, far cheaper than reading them
        if tensor.is_complex():  # loading would drop the imaginary parts, with only a warning
            raise CheckpointError(f"tensor {name!r} is complex ({tensor.dtype}); weights must be real", path)
        # Loading casts silently (uint16 weights predicted 0.1 for every class); float8 has no isfinite.
        if tensor.dtype not in WEIGHT_DTYPES and not (tensor.dtype == torch.int64 and name.endswith(COUNTERS)):
            raise CheckpointError(f"tensor {name!r} is {str(tensor.dtype).removeprefix('torch.')}; weights must be "
                                  "float16, bfloat16, float32 or float64", path)
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            kind = "NaN" if bool(torch.isnan(tensor).any()) else "inf"
            raise CheckpointError(f"tensor {name!r} holds {kind} values (a diverged training run?); weights "
                                  "must be finite", path)


def check_resume_state(state: dict, path) -> None:
    """The training position and states that --resume reads, checked before any is applied."""
    for key in ("epoch", "step"):
        value = state.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**31:
            raise CheckpointError(f"cannot resume: {key} must be a non-negative integer, got {str(value)[:40]!r}", path)
    rng = state.get("rng")
    if not (isinstance(rng, dict) and isinstance(rng.get("torch"), torch.Tensor) and rng["torch"].dtype == torch.uint8):
        raise CheckpointError("cannot resume: the checkpoint has no valid RNG state", path)
    for key, kind in (("optimizer", dict), ("config", dict), ("history", list)):
        if not isinstance(state.get(key, kind()), kind):
            raise CheckpointError(f"cannot resume: {key} must be a {kind.__name__}", path)
    meter = state.get("epoch_accumulators")
    numbers = ("loss_sum", "correct", "seen", "time")
    if meter is not None and not (isinstance(meter, dict) and all(
            isinstance(meter.get(k), (int, float)) and not isinstance(meter.get(k), bool) for k in numbers)):
        raise CheckpointError("cannot resume: the saved mid-epoch totals are malformed", path)


def model_from_checkpoint(ckpt: dict, path=None) -> nn.Module:
    """Build the checkpoint's model and load its weights (strictly)."""
    from ..errors import ConfigError
    from ..models.registry import create_model, get_model_info

    try:
        info = get_model_info(ckpt["model"])
    except ConfigError as exc:
        raise CheckpointError(str(exc), path) from None
    if ckpt["input"]["size"] != info.input_size:
        raise CheckpointError(f"input size {ckpt['input']['size']} does not match model {info.name!r} "
                              f"({info.input_size}x{info.input_size})", path)
    model = create_model(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["input"]["channels"])
    load_strict(model, ckpt["state_dict"], path, f"weights do not fit model {ckpt['model']!r}")
    return model


def load_strict(model: nn.Module, state: dict, path, what: str) -> None:
    """model.load_state_dict(state), its failure one line: `what`, then the first tensor torch names."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:  # torch's first line only says "Error(s) in loading state_dict"; each problem follows
        problems = [line.strip() for line in str(exc).splitlines()[1:] if line.strip()] or [first_line(exc)]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(f"{what}: {problems[0][:200]}{more}", path) from None


def check_model_name(ckpt: dict, expected: str, path) -> None:
    if ckpt["model"] != expected:
        raise CheckpointError(f"checkpoint is of model {ckpt['model']!r}, not {expected!r}", path)


def restore_weights(model: nn.Module, path, exclude: list[str] = ()) -> dict[str, list[str]]:
    """Load the tensors of `path` that match `model` by name and shape, except those matching an
    `exclude` glob (e.g. 'fc3.*'). Returns which were loaded, skipped (and why) and left new."""
    source = load_weights(path)
    check_globs("--restore-exclude", exclude, list(source), str(path), noun="tensor")
    own = model.state_dict()
    report = {"loaded": [], "excluded": [], "shape_mismatch": [], "unused": [], "new": []}
    update = {}
    for name, tensor in source.items():
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            report["excluded"].append(name)
        elif name not in own:
            report["unused"].append(name)
        elif own[name].shape != tensor.shape:
            report["shape_mismatch"].append(f"{name} {tuple(tensor.shape)}->{tuple(own[name].shape)}")
        else:
            update[name] = tensor
            report["loaded"].append(name)
    if not update:  # a run "restored" from nothing would silently train from scratch
        skipped = (f"{len(report['shape_mismatch'])} of another shape, {len(report['excluded'])} excluded, "
                   f"{len(report['unused'])} not in the model, e.g. {next(iter(source), '-')!r}")
        raise CheckpointError(f"no tensor matches the model by name and shape ({skipped}); nothing to restore", path)
    report["new"] = [n for n in own if n not in update]
    model.load_state_dict(update, strict=False)
    return report


def check_globs(flag: str, patterns, names: list[str], what: str, noun: str = "parameter") -> None:
    """Each glob matches at least one of `names`: a typo ('Conv1.*') silently trained the layers the
    user meant to keep fixed. The error lists the names' prefixes (conv1, fc3, ...) to pick from."""
    for pat in patterns:
        if not any(fnmatch.fnmatchcase(name, pat) for name in names):
            prefixes = ", ".join(dict.fromkeys(name.split(".")[0] + ".*" for name in names))
            raise ConfigError(f"{flag} {pat!r} matches no {noun} of {what} (names start with: {prefixes}; "
                              "globs are case-sensitive)")


def freeze(model: nn.Module, patterns: list[str], model_name: str = "the model") -> list[str]:
    """requires_grad=False for parameters matching any glob; returns their names."""
    check_globs("--freeze", patterns, [name for name, _ in model.named_parameters()], model_name)
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
