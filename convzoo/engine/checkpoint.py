"""Self-describing checkpoints: atomic save, safe load, and restore-with-exclude for transfer learning.

A checkpoint is a dict of tensors and plain Python values, loaded with weights_only=True: a file
that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import fnmatch
import io
import json
import math
import pickle
import warnings
import zipfile
import zlib
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_open
from ..errors import CheckpointError, ConfigError, first_line, not_a_file, printable
from ..metadata import META_KEY, check_model_meta, check_version, is_int, is_onnx, is_real, parse_json_meta
from ..models import pretrained

FORMAT = "convzoo-checkpoint"
VERSION = 1
REQUIRED = ("model", "num_classes", "class_names", "input", "state_dict")


def save_checkpoint(path, payload: dict, *, replace: bool = True) -> None:
    """torch.save to a temp file beside `path`, fsync, rename: a crash never leaves half a file.
    Without `replace`, a file that appeared at `path` meanwhile is kept (atomic.publish)."""
    # Through a file object: torch.save to a path reports a full disk as a bare RuntimeError.
    with atomic_open(path, replace=replace) as f:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, f)


def load_checkpoint(path, map_location="cpu", *, data: bytes | None = None) -> dict:
    """Load and validate a model: a convzoo checkpoint (.pt), a shipped .safetensors file, or a
    shipped pretrained name such as lenet5:mnist. Every failure is one CheckpointError line.
    `data`: the file's bytes, read by the caller; they are checked and loaded instead of reading `path`
    again (the ONNX cache exports exactly the bytes it hashed: training may replace best.pt meanwhile)."""
    path = model_file(path) if data is None else Path(path)
    if path.suffix.lower() == ".safetensors" or looks_like_safetensors(path, data):  # also one named .pt
        return load_safetensors(path, data=data)
    return check_checkpoint(read_torch_file(path, map_location, data), path)


def file_head(path: Path, data: bytes | None, size: int) -> bytes:
    """The first `size` bytes of the file, or of its bytes already read; OSError if it cannot be read."""
    if data is not None:
        return data[:size]
    with open(path, "rb") as f:
        return f.read(size)


def source(path: Path, data: bytes | None):
    """What torch.load and zipfile read: the path, or the bytes already read."""
    return path if data is None else io.BytesIO(data)


def model_file(path) -> Path:
    """`path` (or a NAME:DATASET's shipped file), checked to be a file."""
    path = pretrained.resolve(path)
    if (path.name == "last.pt" and not path.exists() and not path.is_symlink()
            and (path.parent / "config.yaml").is_file()):
        # A run killed in its first epoch: `train --resume` (which reads last.pt) has nothing to continue.
        raise CheckpointError("no checkpoint to resume from yet: the run in this folder stopped before writing "
                              "last.pt (at the end of its first epoch, or every --save-every steps); start it over "
                              "with --exist-ok", path)
    if not path.is_file():
        raise CheckpointError(not_a_file(path, "checkpoint not found", "not a regular file (a folder, device or pipe); "
                                         "give the checkpoint file itself"), path)
    return path


def read_torch_file(path: Path, map_location="cpu", data: bytes | None = None):
    """torch.load(weights_only=True) of a torch zip or pickle file (or of its bytes, `data`); anything
    else, or a file that needs arbitrary unpickling, is one CheckpointError line."""
    if is_onnx(path):  # torch would call its protobuf bytes an unsafe pickle
        raise CheckpointError("an ONNX file, not a checkpoint: eval, predict and serve take it with --model", path)
    if path.suffix.lower() == ".pt2":  # torch.export's archive: torch.load calls it corrupt
        raise CheckpointError("a torch.export archive (.pt2), which convzoo writes but does not run; pass the "
                              "checkpoint (.pt, .safetensors, NAME:DATASET) or its exported .onnx", path)
    check_torch_signature(path, data)
    check_torch_zip(path, data)
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols before refusing: one line is ours
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(source(path, data), map_location=map_location, weights_only=True)
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


# torch.save stores its entries uncompressed, so a checkpoint's entries declare about its own size. A
# re-zipped file may compress them, but floating-point weights shrink by little: a file declaring far
# more than it holds is a decompression bomb (1000:1 for zeros), which torch.load would allocate in full.
MAX_EXPANSION = 8
SLACK_BYTES = 1 << 20  # small records (data.pkl, version) may compress well


def check_torch_zip(path: Path, data: bytes | None = None) -> None:
    """The zip directory of a torch file, read before torch.load allocates what it declares: a
    TorchScript archive is named as one, and a file declaring more than MAX_EXPANSION times its size
    (plus SLACK_BYTES) is refused, and so is one whose entries do not match their CRC-32 checksums (torch.load
    does not check them: bytes overwritten inside a weight loaded as a 2.9e26 weight, and the run "diverged").
    A legacy pickle file, or a zip too damaged to list, is left to torch.load."""
    try:
        with zipfile.ZipFile(source(path, data)) as archive:
            entries = archive.infolist()
            check_declared_sizes(entries, path, len(data) if data is not None else path.stat().st_size)
            damaged = archive.testzip()  # reads every entry once (~0.1 s per 100 MB); the OS caches it for torch
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, OverflowError, zlib.error):
        return
    if damaged is not None:
        raise CheckpointError(f"corrupt checkpoint: the bytes of its entry {printable(damaged)!r} do not match their "
                              "checksum (a damaged copy or disk); use another copy", path)


def check_declared_sizes(entries: list[zipfile.ZipInfo], path: Path, size: int) -> None:
    """A TorchScript archive named as one; a zip declaring far more than its size (a bomb) refused."""
    names = {e.filename.partition("/")[2] for e in entries}
    if "constants.pkl" in names or any(n.startswith("code/") for n in names):
        raise CheckpointError("a TorchScript archive (torch.jit.save), which convzoo does not run; save the model's "
                              "weights instead (torch.save(model.state_dict(), 'weights.pt')) and start from them "
                              "with train --restore, or export the model to ONNX", path)
    declared = sum(e.file_size for e in entries)
    if declared > MAX_EXPANSION * size + SLACK_BYTES:
        biggest = max(entries, key=lambda e: e.file_size)
        raise CheckpointError(f"its zip entries declare {declared:,} bytes in a {size:,}-byte file ({biggest.filename!r}: "
                              f"{biggest.file_size:,} bytes compressed to {biggest.compress_size:,}); torch.save "
                              "stores entries uncompressed, so this is not a checkpoint it wrote (a decompression "
                              "bomb?)", path)


# File signatures of what is often passed by mistake (an image as --model, arguments swapped).
SIGNATURES = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
              (b"BM", "a BMP image"), (b"II*\x00", "a TIFF image"), (b"MM\x00*", "a TIFF image"),
              (b"\x1f\x8b", "a gzip file"), (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy .npy array"),
              (b"\x89HDF", "an HDF5 file (a Keras .h5 model?)")]


def torch_signature(head: bytes) -> bool:
    """Do a file's first bytes start a torch.save file: a zip's local file header (PK\\x03\\x04) or a
    legacy pickle (0x80, then its protocol, 2 to 5)?"""
    return head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")


def check_torch_signature(path: Path, data: bytes | None = None) -> None:
    """A torch checkpoint is a zip or, in the legacy format, a pickle (torch_signature):
    anything else is named here, before torch.load calls a PNG an unsafe pickle."""
    try:
        head = file_head(path, data, 16)
    except OSError:
        return  # torch.load reports it
    if torch_signature(head):
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
        raise CheckpointError("not a convzoo checkpoint (no 'format: convzoo-checkpoint' record); make one from a "
                              "plain state_dict with `convzoo convert WEIGHTS --model NAME --dataset DATASET --output "
                              "OUT.pt`, or start training from it with train --restore", path)
    check_version(ckpt.get("version"), VERSION, "convzoo checkpoint format version", path)
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
    .safetensors file without convzoo's description. A 'module.' or '_orig_mod.' prefix (DataParallel/DDP,
    torch.compile) is dropped;
    a 'model.' one (Lightning, Hugging Face) by restore_weights, where the model's names are known."""
    return read_weights(path)[0]


def read_weights(path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """load_weights' tensors, and the file's own description (model, dataset, class_names, ...) where
    convzoo wrote one: a checkpoint, its .safetensors, shipped weights; None for other trainers' files."""
    path = model_file(path)
    if path.suffix.lower() == ".safetensors" or looks_like_safetensors(path):
        found = load_safetensors(path, need_meta=False)
        described = {k: v for k, v in found.items() if k != "state_dict"} or None
        return found["state_dict"] if described else without_run_prefixes(found["state_dict"]), described
    obj = read_torch_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        ckpt = check_checkpoint(obj, path)
        return ckpt["state_dict"], ckpt
    candidates = [obj] + ([obj.get(k) for k in STATE_DICT_KEYS] if isinstance(obj, dict) else [])
    state = next((c for c in candidates if is_state_dict(c)), None)
    if state is None:
        check_entries(candidates, path)
        raise CheckpointError("no weights found: expected a convzoo checkpoint, a state_dict (names to tensors) "
                              f"or a dict holding one under {', '.join(map(repr, STATE_DICT_KEYS))}", path)
    state = without_run_prefixes(state)
    check_state_dict(state, path)
    return state, None


# Added to every name by how a model ran, never part of its own names: DataParallel/DDP's 'module.',
# torch.compile's '_orig_mod.' (both, in either order, for a compiled model under DDP).
RUN_PREFIXES = ("module.", "_orig_mod.")


def without_run_prefixes(state: dict) -> dict:
    """Another trainer's state_dict without the RUN_PREFIXES all its names share."""
    stripped = True
    while stripped:
        stripped = False
        for prefix in RUN_PREFIXES:
            if state and all(k.startswith(prefix) for k in state):
                state, stripped = {k.removeprefix(prefix): v for k, v in state.items()}, True
    return state


def check_entries(candidates: list, path) -> None:
    """A dict of tensors but for one entry (an int among them, an int key) is named by that entry, not
    called 'no weights found'."""
    for candidate in candidates:
        if isinstance(candidate, dict) and any(isinstance(v, torch.Tensor) for v in candidate.values()):
            for key, value in candidate.items():
                if not (isinstance(key, str) and isinstance(value, torch.Tensor)):
                    raise CheckpointError(f"a state_dict maps names to tensors, but {str(key)[:60]!r} holds "
                                          f"{type(value).__name__} {str(value)[:40]!r}", path)


def is_state_dict(value) -> bool:
    return isinstance(value, dict) and bool(value) and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())


def looks_like_safetensors(path: Path, data: bytes | None = None) -> bool:
    """safetensors' layout: an 8-byte little-endian header size, then the JSON header's '{'
    (a torch checkpoint starts with a zip's 'PK' or a pickle's 0x80)."""
    try:
        head = file_head(path, data, 9)
    except OSError:
        return False  # torch.load below reports it
    return len(head) == 9 and head[8:] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= 100 << 20


def load_safetensors(path: Path, *, need_meta: bool = True, data: bytes | None = None) -> dict:
    """A checkpoint-like dict (model, classes, input spec, state_dict) from a convzoo .safetensors file
    (or its bytes, `data`); without `need_meta`, a file with no description gives just its state_dict."""
    from safetensors import SafetensorError
    from safetensors.torch import load, load_file

    check_not_torch_file(path, data)
    try:
        meta = safetensors_metadata(path, data)
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        raise CheckpointError(f"not a safetensors file ({first_line(exc)})", path) from None
    if META_KEY not in meta and need_meta:
        raise CheckpointError(f"not a convzoo safetensors file (no {META_KEY!r} metadata entry)", path)
    info = parse_json_meta(meta[META_KEY], path) if META_KEY in meta else {}  # checked before a tensor is read
    try:
        state = load_file(str(path)) if data is None else load(data)
    except (SafetensorError, OSError, ValueError, MemoryError) as exc:
        raise CheckpointError(f"corrupt safetensors file ({first_line(exc)})", path) from None
    check_state_dict(state, path)
    return {**info, "state_dict": state}


def safetensors_metadata(path: Path, data: bytes | None) -> dict:
    """The header's __metadata__ (string to string), read without loading a tensor. For bytes already
    read, parsed here: safetensors opens only files for that. ValueError for a malformed header."""
    from safetensors.torch import safe_open

    if data is None:
        with safe_open(str(path), framework="pt") as f:
            return f.metadata() or {}
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 + size:
        raise ValueError("header larger than the file")
    header = json.loads(data[8:8 + size])
    meta = (header.get("__metadata__") if isinstance(header, dict) else None) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError("__metadata__ must map strings to strings")
    return meta


def check_not_torch_file(path: Path, data: bytes | None = None) -> None:
    """A PyTorch checkpoint given a .safetensors name: safetensors reads its zip signature as a header
    size ("header too large"); say what it is instead."""
    try:
        head = file_head(path, data, 4)
    except OSError:
        return  # safetensors reports it
    if torch_signature(head):
        raise CheckpointError("not a safetensors file: it is a PyTorch checkpoint (a torch.save file); rename it to "
                              "end in .pt", path)


WEIGHT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
FLOAT32_MAX = float(torch.finfo(torch.float32).max)
COUNTERS = "num_batches_tracked"  # BatchNorm's step count, the zoo's only integer tensor


def check_state_dict(state, path) -> None:
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                               for k, v in state.items()):
        raise CheckpointError("state_dict must map parameter names to tensors", path)
    for name, tensor in state.items():  # one pass over the weights, far cheaper than reading them
        if not holds_values(tensor):  # torch.isfinite below cannot read them
            kind = "on the meta device (it holds no values)" if tensor.is_meta else f"sparse ({tensor.layout})"
            raise CheckpointError(f"tensor {name!r} is {kind}; weights must be dense tensors", path)
        if tensor.numel() * tensor.element_size() > tensor.untyped_storage().nbytes():
            # an expanded view (stride 0): 300 KB on disk claiming 10^12 values, which the isfinite
            # below would allocate (a 4 TB request and a traceback)
            raise CheckpointError(f"tensor {name!r} claims {tensor.numel():,} values of shape {tuple(tensor.shape)} but "
                                  f"stores {tensor.untyped_storage().nbytes() // tensor.element_size():,} (an expanded "
                                  "or overlapping view); weights must be stored whole", path)
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
        if tensor.dtype == torch.float64 and tensor.numel() and float(tensor.abs().max()) > FLOAT32_MAX:
            # the model runs in float32: 1e300 became inf there, found only by eval or as a "diverged" run
            raise CheckpointError(f"tensor {name!r} holds {float(tensor.abs().max()):.3g}, beyond float32's range "
                                  f"({FLOAT32_MAX:.3g}), in which the model runs", path)


def check_resume_state(state: dict, path, optimizer: torch.optim.Optimizer | None = None) -> None:
    """The training position and states that --resume reads, checked before any is applied (or a
    whole epoch is trained with them). With the run's freshly built `optimizer`, each saved optimizer
    tensor is checked against its parameter's shape; without, against the checkpoint's weights' shapes."""
    for key in ("epoch", "step"):
        value = state.get(key)
        if not is_int(value) or not 0 <= value < 2**31:
            raise CheckpointError(f"cannot resume: {key} must be a non-negative integer, got {str(value)[:40]!r}", path)
    for key, kind in (("optimizer", dict), ("config", dict), ("history", list)):
        if not isinstance(state.get(key, kind()), kind):
            raise CheckpointError(f"cannot resume: {key} must be a {kind.__name__}", path)
    check_position(state, path)
    check_rng_state(state.get("rng"), path)
    best = state.get("best_acc", -1.0)
    if not is_real(best) or not (best == -1.0 or 0.0 <= best <= 1.0):
        raise CheckpointError(f"cannot resume: best_acc must be an accuracy from 0 to 1 (or -1 before the first "
                              f"evaluation), got {str(best)[:40]!r}", path)
    check_history(state.get("history", []), state["epoch"], path)
    check_accumulators(state.get("epoch_accumulators"), path)
    check_clocks(state, path)
    if "optimizer" in state:
        # the weights first (the likelier mistake, and the trainer's own line for it), then the optimizer's
        check_weights_fit(state, path, "cannot resume: its weights do not fit the model")
        check_optimizer_state(state["optimizer"], path, optimizer, state.get("state_dict"))


def check_position(state: dict, path) -> None:
    """The saved step lies within an epoch: the steps per epoch are the schedule's total over the epochs
    it was planned for (a forged step of 10**9 skipped every batch and read as a diverged loss)."""
    epochs = (state.get("config") or {}).get("epochs")
    total = (state.get("scheduler") or {}).get("total_steps") if isinstance(state.get("scheduler"), dict) else None
    if is_int(epochs) and is_int(total) and epochs > 0 and total > 0 and total % epochs == 0:
        per_epoch = total // epochs
        if state["step"] > per_epoch:
            raise CheckpointError(f"cannot resume: step {state['step']} is beyond the run's {per_epoch} steps per "
                                  "epoch", path)
        if "global_step" in state and state["global_step"] != state["epoch"] * per_epoch + state["step"]:
            raise CheckpointError(f"cannot resume: global_step {str(state['global_step'])[:40]!r} does not match "
                                  f"epoch {state['epoch']}, step {state['step']} ({per_epoch} steps per epoch)", path)
    elif "global_step" in state and not (is_int(state["global_step"]) and state["global_step"] >= state["step"]):
        raise CheckpointError(f"cannot resume: global_step must be an integer of at least step, got "
                              f"{str(state['global_step'])[:40]!r}", path)


# The CUDA generator's state is its 8-byte seed and 8-byte Philox offset.
CUDA_RNG_BYTES = 16


def check_rng_state(rng, path) -> None:
    """torch's generator state exactly as long as this torch's (torch.set_rng_state raises on any
    other length), and each CUDA generator's as long as a CUDA state."""
    size = torch.get_rng_state().numel()
    if not (isinstance(rng, dict) and is_byte_state(rng.get("torch"), size)):
        raise CheckpointError(f"cannot resume: the checkpoint has no valid RNG state (the torch generator's state "
                              f"must be {size} bytes)", path)
    cuda = rng.get("cuda", [])
    if not (isinstance(cuda, (list, tuple)) and all(is_byte_state(t, CUDA_RNG_BYTES) for t in cuda)):
        raise CheckpointError(f"cannot resume: the saved CUDA RNG states must be {CUDA_RNG_BYTES}-byte tensors", path)


def holds_values(tensor: torch.Tensor) -> bool:
    """A dense tensor with values to read: not sparse, not on the meta device."""
    return tensor.layout == torch.strided and not tensor.is_meta


def is_byte_state(value, size: int) -> bool:
    return (isinstance(value, torch.Tensor) and holds_values(value)
            and value.dtype == torch.uint8 and value.shape == (size,))


# A history row as trainer writes it: accuracies from 0 to 1 or None (not evaluated that epoch), the
# rest real numbers (None where unknown); metrics.csv and the report read them back as numbers.
HISTORY_ACCURACIES = ("train_acc", "val_acc", "test_acc")
HISTORY_NUMBERS = ("train_loss", "lr", "epoch_time_s", "images_per_s", "wall_s")


def check_history(history: list, epoch: int, path) -> None:
    previous = 0
    for i, row in enumerate(history):
        where = f"cannot resume: history entry {i + 1}"
        if not isinstance(row, dict) or not all(isinstance(k, str) for k in row):
            raise CheckpointError(f"{where} must be a mapping of field names to values", path)
        number = row.get("epoch")
        if not is_int(number) or not previous < number <= epoch:
            raise CheckpointError(f"{where}: epoch must be an integer after the previous entry's and at most "
                                  f"{epoch}, got {str(number)[:40]!r}", path)
        previous = number
        for key in HISTORY_ACCURACIES:
            value = row.get(key)
            if value is not None and not (is_real(value) and 0.0 <= value <= 1.0):
                raise CheckpointError(f"{where}: {key} must be an accuracy from 0 to 1, got {str(value)[:40]!r}", path)
        for key in HISTORY_NUMBERS:
            value = row.get(key)
            if value is not None and not (is_real(value) and value >= 0):
                raise CheckpointError(f"{where}: {key} must be a finite non-negative number, got "
                                      f"{str(value)[:40]!r}", path)


def check_accumulators(meter, path) -> None:
    """The mid-epoch totals a resumed epoch continues from (a NaN loss sum read as a diverged run)."""
    if meter is None:
        return
    if not isinstance(meter, dict):
        raise CheckpointError("cannot resume: the saved mid-epoch totals are malformed", path)
    for key in ("loss_sum", "time"):
        if not (is_real(meter.get(key)) and meter[key] >= 0):
            raise CheckpointError(f"cannot resume: the saved mid-epoch {key} must be a finite non-negative number, "
                                  f"got {str(meter.get(key))[:40]!r}", path)
    for key in ("correct", "seen"):
        if not (is_int(meter.get(key)) and 0 <= meter[key] < 2**53):
            raise CheckpointError(f"cannot resume: the saved mid-epoch count {key!r} must be a non-negative integer, "
                                  f"got {str(meter.get(key))[:40]!r}", path)
    if meter["correct"] > meter["seen"]:
        raise CheckpointError(f"cannot resume: the saved mid-epoch totals count {meter['correct']} correct of "
                              f"{meter['seen']} images seen", path)


def check_clocks(state: dict, path) -> None:
    """last.pt's wall clock and the mid-epoch step count a resume continues: a forged value would be a
    wrong time to accuracy or per-step time."""
    wall = state.get("wall_s")
    if wall is not None and not (is_real(wall) and 0 <= wall <= 1e9):
        raise CheckpointError(f"cannot resume: wall_s must be the seconds of training so far, got {str(wall)[:40]!r}",
                              path)
    meter = state.get("epoch_accumulators")
    steps = meter.get("steps") if isinstance(meter, dict) else None
    if steps is not None and not (is_int(steps) and 0 <= steps <= state["step"]):
        raise CheckpointError(f"cannot resume: the saved mid-epoch step count must be an integer from 0 to step "
                              f"{state['step']}, got {str(steps)[:40]!r}", path)


# The numeric settings of SGD, Adam and AdamW param groups (lr_scale: --bias-lr-scale's group).
OPTIMIZER_NUMBERS = ("lr", "initial_lr", "momentum", "dampening", "weight_decay", "eps", "lr_scale")


def check_optimizer_state(saved: dict, path, optimizer: torch.optim.Optimizer | None = None,
                          weights: dict | None = None) -> None:
    """An optimizer state_dict's structure, and each of its tensors shaped as its parameter: torch's
    load_state_dict checks neither, and a wrong-shaped momentum buffer failed at the first step."""
    groups, per_param = saved.get("param_groups"), saved.get("state")
    if not (isinstance(groups, list) and groups and isinstance(per_param, dict)):
        raise CheckpointError("cannot resume: the optimizer state must hold 'param_groups' (a non-empty list) and "
                              "'state' (a mapping)", path)
    ids = []
    for group in groups:
        params = group.get("params") if isinstance(group, dict) else None
        if not (isinstance(params, list) and all(is_int(i) for i in params)):
            raise CheckpointError("cannot resume: each optimizer param group must list its parameters' numbers", path)
        ids += params
        for key, value in group.items():
            if key == "params":
                continue
            if key == "betas":
                ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
                    is_real(v) and 0 <= v < 1 for v in value)
            elif key in OPTIMIZER_NUMBERS:
                ok = is_real(value) and value >= 0
            else:  # nesterov, maximize, foreach, fused, ...: flags
                ok = value is None or isinstance(value, bool) or is_real(value)
            if not ok:
                raise CheckpointError(f"cannot resume: optimizer setting {key!r} is {str(value)[:40]!r}", path)
    if len(set(ids)) != len(ids):
        raise CheckpointError("cannot resume: the optimizer lists a parameter twice", path)
    shapes = None
    if optimizer is not None:
        own = [p for group in optimizer.param_groups for p in group["params"]]
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
            raise CheckpointError(f"cannot resume: the optimizer state has {len(ids)} parameters in {len(groups)} "
                                  f"group(s), the run's optimizer {len(own)} in {len(optimizer.param_groups)}", path)
        shapes = {i: own[n].shape for n, i in enumerate(ids)}
    for index, entry in per_param.items():
        if index not in ids or not isinstance(entry, dict):
            raise CheckpointError(f"cannot resume: the optimizer holds state for parameter {str(index)[:20]!r}, "
                                  "which none of its param groups lists", path)
        for key, value in entry.items():
            if not isinstance(value, torch.Tensor):
                if key == "step" and is_real(value) and value >= 0:  # an older torch's integer step count
                    continue
                raise CheckpointError(f"cannot resume: optimizer state {key!r} of parameter {index} must be a "
                                      f"tensor or number, got {type(value).__name__}", path)
            if not holds_values(value) or not value.is_floating_point():
                raise CheckpointError(f"cannot resume: optimizer state {key!r} of parameter {index} must be a dense "
                                      f"floating-point tensor", path)
            if key == "step" and value.dim() == 0:
                if not (math.isfinite(float(value)) and float(value) >= 0):
                    raise CheckpointError(f"cannot resume: optimizer step count of parameter {index} is "
                                          f"{float(value)}", path)
                continue
            expected_ok = (value.shape == shapes[index] if shapes is not None
                           else weights is None or any(isinstance(w, torch.Tensor) and w.shape == value.shape
                                                       for w in weights.values()))
            if not expected_ok:
                want = f" (the parameter is {tuple(shapes[index])})" if shapes is not None else ""
                raise CheckpointError(f"cannot resume: optimizer state {key!r} of parameter {index} has shape "
                                      f"{tuple(value.shape)}, which fits no parameter of the model{want}", path)
            if not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"cannot resume: optimizer state {key!r} of parameter {index} holds NaN or "
                                      "inf values", path)


def model_from_checkpoint(ckpt: dict, path=None) -> nn.Module:
    """Build the checkpoint's model and load its weights (strictly)."""
    from ..errors import ConfigError
    from ..models.registry import get_model_info

    try:
        info = get_model_info(ckpt["model"])
    except ConfigError as exc:
        raise CheckpointError(str(exc), path) from None
    if ckpt["input"]["size"] != info.input_size:
        raise CheckpointError(f"input size {ckpt['input']['size']} does not match model {info.name!r} "
                              f"({info.input_size}x{info.input_size})", path)
    what = f"weights do not fit model {ckpt['model']!r}"
    check_weights_fit(ckpt, path, what)  # names and shapes first: AlexNet for 100,000 classes is 2 GB
    model = build_model(ckpt)
    load_strict(model, ckpt["state_dict"], path, what)
    return model


def build_model(ckpt: dict) -> nn.Module:
    """The model a checkpoint (or its description) names, for its classes and input channels."""
    from ..models.registry import create_model

    return create_model(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["input"]["channels"])


def meta_model(ckpt: dict) -> nn.Module | None:
    """build_model on the meta device (no memory), or None for a model that cannot be built there
    (lenet5-1998's __init__ computes from values)."""
    try:
        with torch.device("meta"):
            return build_model(ckpt)
    except (NotImplementedError, RuntimeError):
        return None


def check_weights_fit(ckpt: dict, path, what: str) -> None:
    """The checkpoint's tensor names and shapes against its model's, built on the meta device; a model
    that cannot be built there is left to its real build, which checks them."""
    skeleton = meta_model(ckpt)
    if skeleton is None:
        return
    with warnings.catch_warnings():  # "copying ... to a meta parameter ... is a no-op": only shapes matter here
        warnings.simplefilter("ignore", UserWarning)
        load_strict(skeleton, ckpt["state_dict"], path, what)


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
    own = model.state_dict()
    source = strip_wrapper_prefix(load_weights(path), own)  # before the globs, which name the model's tensors
    check_globs("--restore-exclude", exclude, list(source), str(path), noun="tensor")
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


# What wrappers put before a model's own names: Lightning's LightningModule and Hugging Face models
# keep the network as `self.model`.
WRAPPER_PREFIXES = ("model.",)


def strip_wrapper_prefix(source: dict, own: dict) -> dict:
    """`source` without a prefix that all its names share, when only then do its names match the
    model's (a model whose own names begin with 'model.' keeps them)."""
    matching = sum(name in own for name in source)
    for prefix in WRAPPER_PREFIXES:
        if all(name.startswith(prefix) for name in source):
            stripped = {name.removeprefix(prefix): tensor for name, tensor in source.items()}
            if sum(name in own for name in stripped) > matching:
                return stripped
    return source


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
