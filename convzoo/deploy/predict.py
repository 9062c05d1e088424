"""Predict classes for users' images with an ONNX file (onnxruntime or OpenVINO) or a convzoo checkpoint
(exported to ONNX once, with torch)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..data.images import image_suffixes, walk_files
from ..errors import ConfigError, ConvzooError, WriteError, first_line, not_a_file
from ..metadata import META_KEY, image_input, is_onnx, parse_json_meta, read_onnx_metadata
from .foreign import DESCRIBE_FLAGS, describe, has_convzoo_metadata, not_for_checkpoints
from .graph_limits import check_deterministic, check_tensor_sizes, count
from .preprocess import ImageError, load_image, to_array
from .runtime import in_fixed_batches, open_runner, ort_session, pick_runtime, run_batched, session_runner

MAX_TOPK = 1000  # classes a result may list: the API, `predict --topk` and the server allow 1..this
BATCH_BYTES = 64 << 20  # model inputs run at most this many bytes at a time, whatever the input size


class Predictor:
    """Wraps one model file; `meta` carries class names, input spec and the preprocessing rule.
    runtime: 'auto', 'onnxruntime' or 'openvino'; after loading, the one that runs (pick_runtime)."""

    def __init__(self, path, *, threads: int = 1, runtime: str = "auto", describe: dict | None = None):
        self.path = Path(path)
        self.threads, self.runtime = threads, runtime
        # What the user says about an ONNX file made elsewhere (foreign.HINTS); it has no convzoo description.
        self.describe = {k: v for k, v in (describe or {}).items() if v is not None}
        if self.describe and not is_onnx(self.path):
            raise not_for_checkpoints(self.path)
        # A checkpoint or shipped weights run as their cached ONNX export: torch is imported only the
        # first time a file is seen, and later predictions start as fast as from an .onnx file.
        self.onnx_path, self._scratch = (self.path, None) if is_onnx(self.path) else cached_onnx(self.path)
        # What the graph's output holds: 'logits' (convzoo's exports), or 'probabilities' / 'log-probabilities'
        # for a graph that ends in Softmax / LogSoftmax over the classes (Ultralytics' -cls exports, many others).
        self.outputs = "logits"
        self.meta, self.run = self._load_onnx()

    def _load_onnx(self):
        # onnx_path differs from path only for convzoo's own export, verified against its sha256 by cached_onnx
        own = self.onnx_path != self.path and self.runtime in ("auto", "onnxruntime")
        meta, run_session, fixed = self._open_own_export() if own else self._open_checked()
        spec = meta["input"]
        # Rows per inference call: 256 for LeNet-sized inputs, fewer for big ones, so memory stays bounded.
        self.batch_rows = max(1, min(256, BATCH_BYTES // (4 * spec["channels"] * spec["size"] ** 2)))
        if fixed is not None:  # a graph exported for exactly `fixed` images per call
            if fixed > self.batch_rows:
                raise ConfigError(f"the model's batch size is fixed at {fixed} images, more than the {self.batch_rows} "
                                  f"convzoo runs at once for this input size; {REEXPORT}", self.path)
            self.batch_rows, run_session = fixed, in_fixed_batches(run_session, fixed)

        classes = len(meta["class_names"])

        def run(x):
            try:
                out = run_session(x)
            except Exception as exc:  # a graph whose weights disagree with its own shapes fails only when run
                raise ConfigError(f"the model failed to run ({runtime_reason(exc)})", self.path) from None
            if out.shape != (len(x), classes):  # a graph that drops or folds rows would misattribute answers
                images = f"{len(x)} image{'s' if len(x) > 1 else ''}"
                raise ConfigError(f"the model outputs shape {list(out.shape)} for {images}, not "
                                  f"[{len(x)}, {classes}] (one logit per class per image)", self.path)
            return out

        # Refused now, not per request: one image, and a file made elsewhere two where its batch is open (a graph
        # folding or dropping rows); convzoo's own verified export keeps its rows
        rows = 1 if own else min(2, self.batch_rows)
        out = run(np.zeros((rows, spec["channels"], spec["size"], spec["size"]), np.float32))
        if not np.isfinite(out).all():  # NaN weights, say: every prediction would be NaN
            raise ConfigError("the model outputs non-finite logits (NaN or inf) for an all-zero input; its weights "
                              "are unusable", self.path)
        return meta, run

    def _open_checked(self):
        """Any ONNX file: checked with the onnx package before a runtime builds anything from it."""
        import onnx

        if not self.onnx_path.is_file():
            raise ConfigError(not_a_file(self.onnx_path, "model file not found", "not a regular file (a folder, device or "
                                         "pipe); give the model file itself"), self.path)
        try:
            graph = onnx.load(str(self.onnx_path), load_external_data=False)
            check_opsets(graph, self.path)
            check_external_data(graph, self.onnx_path)
            # A structurally broken graph never reaches onnxruntime's C++ loader. Checked by path, so weights
            # stored beside the file (external data) are looked for in its folder, not the current one.
            onnx.checker.check_model(str(self.onnx_path))
        except ConvzooError:
            raise
        except Exception as exc:  # protobuf and onnx raise many types for a bad file
            raise ConfigError(f"not a loadable ONNX model ({first_line(exc)})",
                              self.path) from None
        # The description, checked before onnxruntime builds anything from it
        if has_convzoo_metadata(graph):
            if self.describe:
                raise ConfigError(f"{DESCRIBE_FLAGS} describe ONNX files made elsewhere; this one carries "
                                  "convzoo's own description", self.path)
            meta = read_onnx_metadata(graph, self.path)
        else:
            meta = describe(graph, self.path, self.describe)
        spec = meta["input"]
        # and the memory its tensors can ask for, run as the spec says
        check_tensor_sizes(graph, self.path, input_shape(spec)[1:])
        check_deterministic(graph, self.path)  # a prediction must not change from run to run
        self.outputs = output_kind(graph)
        self.runtime = pick_runtime(self.runtime, graph)  # 'auto' -> the one that runs
        fixed = fixed_batch(image_input(graph.graph, self.path))
        del graph
        try:
            run = open_runner(self.onnx_path, self.threads, self.runtime)
            run = typed(run, spec.get("dtype", "float32"))
            if spec.get("layout") == "nhwc":  # convzoo's batches are (N, C, H, W)
                return meta, channels_last(run), fixed
            return meta, run, fixed
        except ConvzooError:  # a runtime that is not installed
            raise
        except Exception as exc:  # the runtimes raise their own types for graphs they cannot run
            raise ConfigError(f"not a loadable ONNX model ({runtime_reason(exc)})", self.path) from None

    def _open_own_export(self):
        """convzoo's own fp32 export of a checkpoint (checked with onnx when it was written, and its bytes
        against the sha256 recorded then) straight in onnxruntime, the metadata read from the session:
        importing onnx would cost as much again as the rest of a one-image prediction."""
        try:
            session = ort_session(self.onnx_path, self.threads)
        except Exception as exc:  # onnxruntime's own error types
            raise ConfigError(f"its ONNX export does not load ({runtime_reason(exc)})", self.path) from None
        meta = parse_json_meta(session.get_modelmeta().custom_metadata_map.get(META_KEY), self.path,
                               need_num_classes=False)
        self.runtime = "onnxruntime"
        batch = session.get_inputs()[0].shape[0]  # convzoo exports a named (dynamic) batch dimension
        return meta, session_runner(session), batch if isinstance(batch, int) and batch > 0 else None

    @property
    def classes(self) -> list[str]:
        return self.meta["class_names"]

    def sha256(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()

    def inputs(self, images) -> np.ndarray:
        """PIL images -> the normalised float32 batch (N, C, H, W) the model runs on."""
        return np.concatenate([to_array(im, self.meta) for im in images])

    def predict_images(self, images, topk: int = 3) -> list[dict]:
        """PIL images -> [{'class', 'index', 'probability', 'topk': [...]}, ...]."""
        return self.predict_arrays(self.inputs(images), topk) if images else []

    def predict_arrays(self, batch: np.ndarray, topk: int = 3) -> list[dict]:
        """Model inputs (N, C, H, W) -> results, run `batch_rows` at a time so memory stays bounded.
        NonFiniteOutput when the model's logits for some row are NaN or inf."""
        results = self.predict_rows(batch, topk)
        bad = [i for i, r in enumerate(results) if r is None]
        if bad:
            raise NonFiniteOutput(bad, self.path)
        return results

    def predict_rows(self, batch: np.ndarray, topk: int = 3) -> list[dict | None]:
        """predict_arrays, with None for each row whose logits are not all finite (no probabilities
        can be given for it), so one such input fails only its own request in a shared batch."""
        batch = batch.astype(np.float32)
        logits = run_batched(self.run, batch, self.batch_rows)
        finite = np.isfinite(logits).all(1)
        logits = np.where(finite[:, None], logits, 0)  # finite outputs: finite probabilities
        probs = (logits if self.outputs == "probabilities" else np.exp(logits) if self.outputs == "log-probabilities"
                 else softmax(logits))
        k = min(topk, probs.shape[1])
        order = np.argsort(-probs, axis=1)[:, :k]  # one call for the batch, plain Python numbers out
        chances, classes, results = np.take_along_axis(probs, order, 1).tolist(), self.classes, []
        flat = batch.reshape(len(batch), -1)
        blank = (flat.max(1) == flat.min(1)).tolist()  # nothing to see: the answer is the model's guess for nothing
        for indices, row, ok, empty in zip(order.tolist(), chances, finite.tolist(), blank):
            top = [{"class": classes[i], "index": i, "probability": p} for i, p in zip(indices, row)]
            results.append(None if not ok else {**top[0], "topk": top, "blank": True} if empty else
                           {**top[0], "topk": top})
        return results

    def predict_files(self, paths, topk: int = 3) -> list[dict]:
        """Files, folders (their images, recursively) or quoted glob patterns -> one result per image."""
        files = expand_image_paths(paths)
        if not files:
            return []
        # Every file is decoded and checked before any is run; only the small model inputs are kept.
        batch = np.concatenate([to_array(load_image(f), self.meta) for f in files])
        try:
            results = self.predict_arrays(batch, topk)
        except NonFiniteOutput as exc:
            raise NonFiniteOutput(exc.rows, files[exc.rows[0]], model=self.path) from None
        return [{"file": str(f), **r} for f, r in zip(files, results)]


def input_shape(spec: dict, batch: int = 1) -> tuple:
    """The graph input's shape for `batch` images of the described size, in its layout."""
    c, s = spec["channels"], spec["size"]
    return (batch, s, s, c) if spec.get("layout") == "nhwc" else (batch, c, s, s)


def typed(run, dtype: str):
    """A runner of a graph taking float16 or uint8 (raw pixels, normalised inside it) that takes convzoo's
    float32 batches, its output back as float32; a float32 graph's runner as it is."""
    if dtype == "float16":
        return lambda x: np.asarray(run(x.astype(np.float16)), np.float32)
    if dtype == "uint8":  # the batch holds (pixels / 255 - 0) / (1 / 255): the pixels, up to float rounding
        return lambda x: np.asarray(run(np.clip(np.rint(x), 0, 255).astype(np.uint8)), np.float32)
    return run  # float32: nothing to convert on the serving path


def channels_last(run):
    """A runner of an (N, H, W, C) graph that takes convzoo's (N, C, H, W) batches (Keras' exports)."""
    return lambda x: run(np.ascontiguousarray(x.transpose(0, 2, 3, 1)))


# Ops between a final Softmax and the output that leave its values as they are (up to int8 rounding for a
# quantize-dequantize pair, as onnxruntime's QDQ quantization writes) or only reshape them.
PASS_THROUGH = ("Identity", "Cast", "QuantizeLinear", "DequantizeLinear", "Flatten", "Reshape", "Squeeze")


def output_kind(model) -> str:
    """'probabilities' when the graph's output is made by a Softmax over the class axis (through the
    PASS_THROUGH ops), 'log-probabilities' for a LogSoftmax, else 'logits' (softmax is taken of them). The
    output is (N, classes) (Predictor checks it), so the class axis is taken to be 1 or -1 (Softmax's default
    in every opset); behind a Reshape that is an assumption about the shape before it."""
    producer = {o: n for n in model.graph.node for o in n.output}
    node = producer.get(model.graph.output[0].name)
    for _ in range(len(model.graph.node)):  # ops that keep the values: a softmax's rows still sum to 1
        if node is None or node.op_type not in PASS_THROUGH or node.domain not in ("", "ai.onnx"):
            break
        node = producer.get(node.input[0])
    if node is None or node.domain not in ("", "ai.onnx") or node.op_type not in ("Softmax", "LogSoftmax"):
        return "logits"
    axis = next((a.i for a in node.attribute if a.name == "axis"), None)
    if axis not in (None, 1, -1):
        return "logits"
    return "probabilities" if node.op_type == "Softmax" else "log-probabilities"


def check_opsets(model, path) -> None:
    """The default ONNX domain's opset is one this onnx (whose checker and shape inference run on the graph)
    knows; onnxruntime's own refusal of a newer one is long and cut before its reason."""
    import onnx

    newest = onnx.defs.onnx_opset_version()
    for entry in model.opset_import:
        if entry.domain in ("", "ai.onnx") and entry.version > newest:
            raise ConfigError(f"the model uses opset {entry.version}; this onnx and onnxruntime run up to opset "
                              f"{newest} (upgrade them, or export with an older opset)", path)


# The end of a source location (".../graph/model.cc:180 "), all runtime_reason needs of it: searched from
# the '.' alone, so the search is linear (a path group before it made every '/' of a token start a scan).
SOURCE_LOCATION = re.compile(r"(?<=[\w.-])\.(?:cc|cpp|h|hpp):\d+\s+")
CPP_SIGNATURE = re.compile(r"[\w~<>,*&\s]*::[\w:~<>,*&\s]*\((?:[^()]|\([^()]*\))*\)\s*(?:const\s*)?")
ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")


REASON_SCAN_CHARS = 2000  # of a runtime's message searched for its reason: the regexes cost more than linear time


def runtime_reason(exc: BaseException, limit: int = 200) -> str:
    """A runtime's error in one short line, from its reason: onnxruntime's text starts with a status code,
    a source file and line and the C++ function's signature, which a one-line cut kept instead of why.
    Only its start is searched: onnxruntime quotes node names, which a hostile file makes as long as it
    likes (a 16k-character name of '/'s took seconds, on every request in serve)."""
    text = " ".join(str(exc)[:REASON_SCAN_CHARS].split())
    locations = list(SOURCE_LOCATION.finditer(text))
    if locations:
        text = text[locations[-1].end():]
        text = text[len(m.group()):] if (m := CPP_SIGNATURE.match(text)) else text
    text = ORT_PREFIX.sub("", text).strip()
    return first_line(RuntimeError(text), limit) if text else first_line(exc, limit)


def check_external_data(model, path: Path) -> None:
    """Weights stored outside an ONNX file (external data) must be regular files in its folder or below,
    as onnx's checker and onnxruntime require too: said here in one short line (onnx's message repeats
    the folder's full path, and a one-line error cut it off before the problem)."""
    import onnx

    for tensor in model.graph.initializer:
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        where = f"tensor {tensor.name[:60]!r} is stored in {location[:100]!r} (external data)"
        if not location or Path(location).is_absolute() or ".." in Path(location).parts:
            raise ConfigError(f"{where}: not a file in the model's folder; external data is read only from there",
                              path)
        target = path.parent / location
        if target.is_symlink() or not target.is_file():
            problem = "a symbolic link" if target.is_symlink() else "missing" if not target.exists() else "not a file"
            raise ConfigError(f"{where}, which is {problem} in the model's folder ({target})", path)
        check_external_extent(tensor, location, target.stat().st_size, path)


def check_external_extent(tensor, location: str, file_bytes: int, path) -> None:
    """A tensor's bytes (offset, length) lie inside its external data file, and the length is what its
    shape needs: onnxruntime's refusal of a short file gave only a source line."""
    fields = {e.key: e.value for e in tensor.external_data}
    name = f"tensor {tensor.name[:60]!r}"
    numbers = {}
    for key in ("offset", "length"):
        if key in fields:
            if not re.fullmatch(r"\d{1,19}", fields[key]):
                raise ConfigError(f"{name}'s external data {key} is {fields[key][:40]!r}, not a byte count", path)
            numbers[key] = int(fields[key])
    item = item_bytes(tensor.data_type)
    needed = count(tensor.dims) * item if item else None
    if needed is not None and numbers.get("length", needed) != needed:
        raise ConfigError(f"{name} has shape {list(tensor.dims)[:8]}, which needs {needed:,} bytes, but its external "
                          f"data length is {numbers['length']:,}", path)
    length = numbers.get("length", needed)
    offset = numbers.get("offset", 0)
    if length is not None and offset + length > file_bytes:
        raise ConfigError(f"external data file {location[:100]!r} is {file_bytes:,} bytes, {name} needs bytes "
                          f"{offset:,}..{offset + length:,}", path)


def item_bytes(data_type: int) -> int | None:
    """Bytes per value of an ONNX element type, None where it has none: strings, an unknown type, and
    the types onnx numbers from UINT4 on (most are packed below a byte)."""
    import onnx

    if data_type == onnx.TensorProto.STRING or data_type >= onnx.TensorProto.UINT4:
        return None
    try:
        return onnx.helper.tensor_dtype_to_np_dtype(data_type).itemsize
    except (KeyError, ValueError, TypeError):
        return None


REEXPORT = ("re-export it with a dynamic batch dimension (`convzoo export` makes one; torch.onnx.export needs "
            "dynamic_shapes or dynamic_axes for dimension 0)")


def fixed_batch(graph_input) -> int | None:
    """The batch size an ONNX graph input is fixed at (its dimension 0 is a number), or None if it is dynamic."""
    dims = graph_input.type.tensor_type.shape.dim
    return dims[0].dim_value if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0 else None


class NonFiniteOutput(ConfigError):
    """The model's logits for an input are NaN or inf: no class or probability can be given for it.
    `rows`: the inputs' indices in the batch; `path`: the model, or the input it names."""

    def __init__(self, rows: list[int], path, *, model=None, what: str | None = None):
        self.rows = rows
        what = what or ("this image" if model is not None else
                        f"input {rows[0]}" + (f" (and {len(rows) - 1} more)" if len(rows) > 1 else ""))
        source = f"model {model}" if model is not None else "the model"
        super().__init__(f"{source} produced non-finite outputs (NaN or inf) for {what}; no prediction can be "
                         "given", path)


def cached_onnx(checkpoint: Path):
    """(ONNX path, scratch folder or None): the checkpoint's ONNX export, made once and kept in the
    cache under the file's sha256 (so an edited checkpoint gets a fresh export), with the export's own
    sha256 beside it (`.onnx.sha256`): an entry whose bytes no longer match (damaged, cut short,
    replaced) is exported again, never run. Where the cache is not writable, the export goes to a
    TemporaryDirectory that is removed with the Predictor holding it."""
    data = read_model_bytes(checkpoint)
    cached = cache_entry(data)
    if export_intact(cached):
        return cached, None
    return export_to_cache(checkpoint, data, cached)


def read_model_bytes(checkpoint: Path) -> bytes:
    """The checkpoint's bytes, read once: what is hashed is what is exported (export_to_cache)."""
    if not checkpoint.is_file():
        from ..engine.checkpoint import load_checkpoint

        load_checkpoint(checkpoint)  # the one-line error for a missing or unusable path
    try:
        return checkpoint.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read ({exc.strerror or exc})", checkpoint) from None


def cache_entry(data: bytes) -> Path:
    from ..cache import cache_root

    return cache_root() / "onnx" / f"{hashlib.sha256(data).hexdigest()}.onnx"


def export_to_cache(checkpoint: Path, data: bytes, cached: Path):
    """Export the checkpoint's bytes `data` (not the file, which training may have replaced since they
    were hashed: the entry would hold another model under their name) to `cached`, or where the cache
    cannot be written, to a scratch folder; (ONNX path, scratch folder or None) as cached_onnx."""
    from ..atomic import remove_stale_temps
    from ..engine.checkpoint import load_checkpoint
    from .export import export_onnx  # torch: only on the first prediction from this file

    ckpt = load_checkpoint(checkpoint, data=data)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # Temps of any entry whose export was killed (atomic_path sweeps only its own target's).
        remove_stale_temps(cached.parent)
        export_onnx(checkpoint, cached, ckpt=ckpt)
        atomic_write_bytes(digest_path(cached), hashlib.sha256(cached.read_bytes()).hexdigest().encode())
        return cached, None
    except (OSError, WriteError):
        return export_to_scratch(checkpoint, ckpt)


def export_to_scratch(checkpoint: Path, ckpt: dict):
    """The export in a temp folder kept until the Predictor goes; a $TMPDIR that cannot take it is
    one WriteError naming it (atomic.scratch_errors)."""
    from ..atomic import make_scratch, scratch_errors
    from .export import export_onnx

    scratch = make_scratch("convzoo-onnx-")
    try:
        with scratch_errors(scratch.name):
            export_onnx(checkpoint, Path(scratch.name) / "model.onnx", ckpt=ckpt)
    except BaseException:
        scratch.cleanup()
        raise
    return Path(scratch.name) / "model.onnx", scratch


def digest_path(onnx_path: Path) -> Path:
    return onnx_path.with_name(onnx_path.name + ".sha256")


def export_intact(onnx_path: Path) -> bool:
    """The cached export exists and its bytes have the sha256 recorded when it was written."""
    try:
        recorded = digest_path(onnx_path).read_bytes()[:64].decode("ascii")
        return hashlib.sha256(onnx_path.read_bytes()).hexdigest() == recorded
    except (OSError, UnicodeDecodeError):
        return False


def expand_image_paths(paths) -> list[Path]:
    """Files as given (a device or FIFO refused); a folder -> the image files under it (sorted, hidden
    ones and non-regular files skipped); a pattern such as 'shots/*.jpg' (quoted, so the shell leaves
    it) -> its matching regular files, and the image files in the folders it matches (as the shell's
    expansion given to predict would be read; a matched folder without images is passed over)."""
    files = []
    for given in paths:
        if isinstance(given, str) and not given:  # Path("") is ".": an unset shell variable would predict every image here
            raise ImageError("empty image path", "''")
        path = Path(given)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise ImageError(f"folder holds no image files ({' '.join(image_suffixes())})", path)
            files += found
        elif not path.exists() and is_pattern(str(path)):
            found = [f for match in glob_paths(path) for f in (folder_images(match) if match.is_dir() else [match])]
            if not found:
                raise ImageError("no files match this pattern", path)
            files += found
        elif path.exists() and not path.is_file():  # a device or FIFO: reading would block or never end
            raise ImageError("not a regular file", path)
        else:
            files.append(path)
    return files


def folder_images(folder: Path) -> list[Path]:
    """The image files under `folder`, sorted (walk_files: no recursion for a deep tree; hidden names and
    linked folders skipped)."""
    return sorted(f for f in walk_files(folder) if f.suffix.lower() in image_suffixes() and f.is_file())


def is_pattern(text: str) -> bool:
    return any(ch in text for ch in "*?[")  # glob's wildcards


def glob_paths(pattern: Path) -> list[Path]:
    """The regular files and folders matching `pattern`: pathlib's glob, or for `**` a walk that does not descend
    into symlinked folders, as folder arguments do not (glob.glob's does: a link to a parent folder made
    `'shots/**/x.png'` run forever), matched by wcmatch as bash's globstar does (files only: a final '**'
    already means every file below)."""
    parts = pattern.parts
    first = next(k for k, part in enumerate(parts) if is_pattern(part))
    root = Path(*parts[:first]) if first else Path(".")
    # Hidden files and folders match only a pattern that names them (the shell's and glob.glob's rule).
    hidden_ok = any(part.startswith(".") and part not in (".", "..") for part in parts[first:])
    rest = parts[first:]
    if any("**" in part and part != "**" for part in rest):
        raise ImageError("invalid pattern ('**' can only be an entire path component)", pattern)
    if "**" in rest:  # pathlib's '**' recurses once per folder level: a deep tree raised RecursionError
        from wcmatch import glob as wcglob  # 20 ms to import: only for '**' patterns

        # '**' is any number of folders, none included; a final one, every file below (bash's globstar)
        flags = wcglob.GLOBSTAR | wcglob.DOTGLOB if hidden_ok else wcglob.GLOBSTAR
        found = [f for f in walk_files(root, hidden=hidden_ok)
                 if wcglob.globmatch(f.relative_to(root).as_posix(), Path(*rest).as_posix(), flags=flags)]
    else:
        found = list(root.glob(str(Path(*rest))))
    return sorted(p for p in found if (p.is_file() or p.is_dir())
                  and (hidden_ok or not any(q.startswith(".") for q in p.relative_to(root).parts)))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)


def predict_test_set(predictor: Predictor, count: int, *, data_path=None, topk: int = 3):
    """The first `count` test images of the model's data set: (uint8 images, true names, predictions)."""
    from ..data.tensors import load_model_data
    from .preprocess import from_dataset

    _, test = load_model_data(predictor.meta, predictor.path, command="predict --from-test",
                              data_path=data_path, test_only=True)
    if count > len(test):  # it quietly gave the whole test set
        raise ConfigError(f"--from-test {count} is more than the {len(test):,} test images of the model's data set")
    images = test.images[:count].numpy()
    truth = [test.classes[i] for i in test.labels[:count].tolist()]
    try:
        results = predictor.predict_arrays(from_dataset(images, predictor.meta), topk=topk)
    except NonFiniteOutput as exc:
        raise NonFiniteOutput(exc.rows, predictor.path, what=f"test image {exc.rows[0]}") from None
    for i, (r, t) in enumerate(zip(results, truth)):
        r.update(index_in_test=i, true=t)
    return images, truth, results


def evaluate_model_file(path, *, dataset: str | None = None, data_path=None, threads: int = 2, runtime: str = "auto",
                        limit: int = 0, describe: dict | None = None):
    """Accuracy and confusion matrix of an ONNX file or checkpoint on its data set's test split (or
    its first `limit` images); describe: an ONNX file made elsewhere (Predictor's), scored on `dataset`'s
    images of the classes whose names it shares."""
    import torch

    from ..data.tensors import load_model_data
    from ..engine.evaluate import EvalResult
    from .preprocess import from_dataset

    predictor = Predictor(path, threads=threads, runtime=runtime, describe=describe)
    _, test = load_model_data(predictor.meta, path, command="eval", dataset=dataset, data_path=data_path,
                              test_only=True)
    test = test.subset(slice(0, limit or None))
    k = len(predictor.classes)
    images, labels = test.images.numpy(), test.labels.numpy()
    preds = run_batched(lambda x: predictor.run(from_dataset(x, predictor.meta)).argmax(1), images,
                        predictor.batch_rows)
    confusion = torch.from_numpy(np.bincount(labels * k + preds, minlength=k * k).reshape(k, k))
    return EvalResult(float((preds == labels).mean()), float("nan"), confusion, tuple(predictor.classes))
