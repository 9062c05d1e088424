"""Readers and writers for the IDX (MNIST family) and CIFAR-10 formats. numpy only.

CIFAR-10 batches are read in both published forms: the binary records (cifar-10-batches-bin) and
the Python pickles torchvision downloads (cifar-10-batches-py), the latter with an unpickler that
can build numpy arrays and nothing else.

Every reader validates what it reads and raises DataError naming the file and the problem;
decoding is one vectorised numpy call, never a loop over images.
"""

from __future__ import annotations

import codecs
import gzip
import io
import pickle
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import DataError

# IDX type codes (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
CIFAR_IMAGE_BYTES = 3 * 32 * 32
CIFAR_RECORD_BYTES = 1 + CIFAR_IMAGE_BYTES
GZIP_MAGIC = b"\x1f\x8b"
PICKLE_PROTO = b"\x80"  # a pickle's first opcode; a CIFAR-10 binary record starts with a label byte 0..9


def read_idx(path) -> np.ndarray:
    """Decode an IDX file (gzipped or raw) into a native-endian numpy array."""
    data = read_maybe_gzip(path)
    if len(data) < 4:
        raise DataError(f"not an IDX file: only {len(data)} bytes", path)
    if data[0] != 0 or data[1] != 0 or data[2] not in IDX_DTYPES:
        raise DataError(f"not an IDX file: bad magic number 0x{data[:4].hex()}", path)
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    if ndim == 0:
        raise DataError("IDX header declares 0 dimensions", path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"IDX header truncated: {len(data)} bytes, header needs {header}", path)
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, 4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    present = len(data) - header
    if present < expected:
        count = present // max(1, expected // max(1, shape[0]))
        raise DataError(
            f"header says {shape[0]} items of shape {shape[1:]} but the file holds only {count} "
            f"({present} of {expected} data bytes): truncated",
            path,
        )
    if present > expected:
        raise DataError(f"{present - expected} bytes after the {shape[0]} items the header declares", path)
    return np.frombuffer(data, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx_images(path) -> np.ndarray:
    """IDX images as uint8 (N, 1, H, W)."""
    images = read_idx(path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}", path)
    return images[:, None]


def read_idx_labels(path, num_classes: int) -> np.ndarray:
    """IDX labels as int64 (N,), every one checked to lie in [0, num_classes)."""
    labels = read_idx(path)
    if labels.ndim != 1:
        raise DataError(f"expected a 1-D label file, got shape {labels.shape}", path)
    check_label_range(labels, num_classes, path)
    return labels.astype(np.int64)


def write_idx(path, array: np.ndarray) -> None:
    """Write an IDX file (gzipped when the name ends in .gz), atomically."""
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX cannot store {array.ndim} dimensions")
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    payload = header + array.astype(IDX_DTYPES[code], copy=False).tobytes()
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    atomic_write_bytes(path, payload)


def read_cifar_batch(path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 batch, binary or Python pickle -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    return decode_cifar_batch(read_maybe_gzip(path), path, num_classes)


def decode_cifar_batch(data: bytes, path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    if data[:1] == PICKLE_PROTO:
        return decode_cifar_pickle(data, path, num_classes)
    if len(data) == 0 or len(data) % CIFAR_RECORD_BYTES:
        raise DataError(
            f"size {len(data)} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 records "
            f"({len(data) // CIFAR_RECORD_BYTES} records + {len(data) % CIFAR_RECORD_BYTES} stray bytes)",
            path,
        )
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    check_label_range(labels, num_classes, path)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def decode_cifar_pickle(data: bytes, path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-batches-py batch: a dict with 'data' (N x 3072 uint8, channel-major) and 'labels'."""
    try:
        # latin1 is how Python 3 reads the Python 2 strings inside the official pickles.
        batch = SafeArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedPickle as exc:
        raise DataError(f"{exc}; a CIFAR-10 Python batch holds only numpy arrays and lists", path) from None
    except Exception as exc:  # truncated or garbled pickles raise almost any exception type
        raise DataError(f"corrupt CIFAR-10 Python batch (unpickling failed: {type(exc).__name__}: {exc})",
                        path) from None
    if not isinstance(batch, dict):
        raise DataError(f"not a CIFAR-10 Python batch (a pickled {type(batch).__name__}, not a dict)", path)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "labels" not in batch:
        hint = " (CIFAR-100 has 'fine_labels'; convzoo reads CIFAR-10)" if "fine_labels" in batch else ""
        raise DataError(f"CIFAR-10 Python batch has no 'labels' entry{hint}", path)
    images, labels = batch.get("data"), np.asarray(batch["labels"])
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != CIFAR_IMAGE_BYTES:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"CIFAR-10 Python batch 'data' must be uint8 N x {CIFAR_IMAGE_BYTES}, got {got}", path)
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{len(images)} images but labels of shape {labels.shape} ({labels.dtype})", path)
    labels = labels.astype(np.int64)
    check_label_range(labels, num_classes, path)
    return images.reshape(-1, 3, 32, 32), labels


class RefusedPickle(pickle.UnpicklingError):
    pass


class SafeArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy arrays pickle to, so loading a file can never run code."""

    _reconstruct = np.zeros(1).__reduce__()[0]  # numpy's array rebuilder, under either module name
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 writes bytes in protocol-2 pickles
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise RefusedPickle(f"refusing to unpickle {module}.{name}")
        return self.ALLOWED[(module, name)]


def write_cifar_bin(path, images: np.ndarray, labels: np.ndarray) -> None:
    images, labels = np.asarray(images, np.uint8), np.asarray(labels)
    if images.shape[1:] != (3, 32, 32) or len(images) != len(labels):
        raise ValueError(f"expected (N, 3, 32, 32) images and N labels, got {images.shape} and {labels.shape}")
    records = np.concatenate([labels.astype(np.uint8)[:, None], images.reshape(len(images), -1)], axis=1)
    atomic_write_bytes(path, records.tobytes())


def read_cifar_meta(path) -> list[str]:
    """Class names from batches.meta.txt: one per line, blank lines ignored."""
    try:
        names = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names: {exc}", path) from None
    if not names:
        raise DataError("no class names in file", path)
    return names


def write_cifar_meta(path, class_names) -> None:
    atomic_write_bytes(path, ("\n".join(class_names) + "\n").encode())


def check_label_range(labels: np.ndarray, num_classes: int, path) -> None:
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels[(labels < 0) | (labels >= num_classes)]
        index = int(np.flatnonzero((labels < 0) | (labels >= num_classes))[0])
        raise DataError(f"label {int(bad[0])} at index {index} is outside 0..{num_classes - 1}", path)


def read_maybe_gzip(path) -> bytes:
    """The file's bytes, transparently gunzipped; truncated or corrupt gzip is a DataError."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise DataError("file not found", path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path) from None
    return gunzip_if_needed(raw, path)


def gunzip_if_needed(raw: bytes, path) -> bytes:
    if raw[:2] != GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise DataError("truncated gzip file (ends before the end-of-stream marker)", path) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as exc:
        raise DataError(f"corrupt gzip file: {exc}", path) from None
