"""Readers and writers for the IDX (MNIST family) and CIFAR-10 formats, and the reader of image
folders (one sub-folder per class, or a training and a test folder holding them: train/ + test/,
val/, valid/ or validation/, training/ + testing/, in any case). numpy (and Pillow for the folders) only.

CIFAR-10 batches are read in both published forms: the binary records (cifar-10-batches-bin) and
the Python pickles torchvision downloads (cifar-10-batches-py), the latter with an unpickler that
can build numpy arrays and nothing else.

Every reader validates what it reads and raises DataError naming the file and the problem;
decoding is one vectorised numpy call, never a loop over images (an image folder, one file per
image, is decoded once, into a buffer sized before the first file is opened).
"""

from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import io
import math
import os
import pickle
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np

from ..atomic import atomic_write_bytes
from ..errors import DataError, printable
from . import images as image_files

# IDX type codes (third magic byte) -> big-endian numpy dtype.
IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
IDX_NAMES = {0x08: "unsigned bytes", 0x09: "signed bytes", 0x0B: "16-bit integers", 0x0C: "32-bit integers",
             0x0D: "32-bit floats", 0x0E: "64-bit floats"}
IDX_MAX_DIMS = 32  # numpy's limit (numpy 1.x); an IDX header can declare up to 255
CIFAR_IMAGE_BYTES = 3 * 32 * 32
CIFAR_RECORD_BYTES = 1 + CIFAR_IMAGE_BYTES
GZIP_MAGIC = b"\x1f\x8b"
PICKLE_PROTO = b"\x80"  # a pickle's first opcode; a CIFAR-10 binary record starts with a label byte 0..9
DEFLATE_MAX_RATIO = 1032  # deflate's limit: no gzip stream inflates to more than ~1032 times its size
CHUNK = 1 << 20  # bytes inflated per step: memory grows only as real data arrives
TAIL_PROBE = 1 << 16  # bytes read past a file's announced end to tell stray bytes from a bomb
META_MAX_BYTES = 1 << 16  # a class-name file is a few lines


class DataStream:
    """A data file's bytes, inflated on the fly when it is gzip (any number of members).

    Nothing is read or inflated beyond what the caller asks for, so a header can be checked
    before its payload is allocated and a gzip bomb costs no more memory than the cap it hits.
    Read errors, truncated and corrupt gzip streams are DataErrors naming the file.
    """

    def __init__(self, path, data: bytes | None = None):
        self.path = path
        try:
            self.raw = io.BytesIO(data) if data is not None else open(path, "rb")
        except FileNotFoundError:
            raise DataError("file not found", path) from None
        except OSError as exc:
            raise DataError(f"cannot read: {exc.strerror or exc}", path) from None
        with read_errors(self.path):
            self.size = len(data) if data is not None else os.fstat(self.raw.fileno()).st_size
            self.gzipped = self.raw.read(2) == GZIP_MAGIC
            self.raw.seek(0)
        self.file = gzip.GzipFile(fileobj=self.raw, mode="rb") if self.gzipped else self.raw
        # The most bytes the file can yield, known before inflating any.
        self.max_size = self.size * DEFLATE_MAX_RATIO + 1024 if self.gzipped else self.size

    def __enter__(self) -> "DataStream":
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.file.close()
            self.raw.close()
        except (OSError, EOFError, zlib.error):
            pass

    def first_byte(self) -> bytes:
        with read_errors(self.path):
            return self.file.peek(1)[:1] if hasattr(self.file, "peek") else self.file.getvalue()[:1]

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the data. Keep n small: it is allocated up front."""
        with read_errors(self.path):
            return self.file.read(n)

    def read_array(self, n: int) -> np.ndarray:
        """Up to n bytes as a writable uint8 array, read in CHUNK steps (a header's claim alone
        allocates nothing)."""
        buf = bytearray()
        while len(buf) < n:
            chunk = self.read(min(CHUNK, n - len(buf)))
            if not chunk:
                break
            buf += chunk
        return np.frombuffer(buf, np.uint8)

    def read_capped(self, limit: int) -> np.ndarray:
        """All the remaining bytes (uint8), refused as soon as they exceed `limit`."""
        if not self.gzipped and self.size > limit:
            raise DataError(f"{self.size:,} bytes, more than the {limit:,} the official file can hold", self.path)
        data = self.read_array(limit)
        if len(data) == limit and self.read(1):
            raise DataError(f"decompresses to more than {limit:,} bytes, more than the official file holds", self.path)
        return data


def read_idx(path, *, code: int | None = None, dims=None, max_items: int | None = None,
             allow_empty: bool = True) -> np.ndarray:
    """Decode an IDX file (gzipped or raw) into a native-endian numpy array.

    `code` (the type byte), `dims` (each record's dimensions, None where any size will do) and
    `max_items` (records in the official file) are what the caller expects; `allow_empty=False`
    refuses a header of 0 records (a data set's split must hold some). The header is checked
    against them, and the size it announces against the file's, before anything is allocated;
    inflating a gzip stream stops at the size the header announces.
    """
    with DataStream(path) as src:
        head = src.read(4)
        if len(head) < 4:
            raise DataError(f"not an IDX file: only {len(head)} bytes", path)
        if head[0] != 0 or head[1] != 0 or head[2] not in IDX_DTYPES:
            raise DataError(f"not an IDX file: bad magic number 0x{head.hex()}", path)
        type_code, ndim = head[2], head[3]
        if code is not None and type_code != code:
            raise DataError(f"IDX data are {IDX_NAMES[type_code]} (type 0x{type_code:02X}), expected "
                            f"{IDX_NAMES[code]} (type 0x{code:02X})", path)
        if ndim == 0:
            raise DataError("IDX header declares 0 dimensions", path)
        if dims is not None and ndim != 1 + len(dims):
            raise DataError(f"IDX header declares {ndim} dimensions, expected {1 + len(dims)} "
                            f"({shape_text(('N', *dims))})", path)
        if ndim > IDX_MAX_DIMS:
            raise DataError(f"IDX header declares {ndim} dimensions; at most {IDX_MAX_DIMS} are supported", path)
        header = 4 + 4 * ndim
        sizes = src.read(4 * ndim)
        if len(sizes) < 4 * ndim:
            raise DataError(f"IDX header truncated: {4 + len(sizes)} bytes, header needs {header}", path)
        shape = tuple(int.from_bytes(sizes[i : i + 4], "big") for i in range(0, 4 * ndim, 4))
        if dims is not None and any(want is not None and got != want for got, want in zip(shape[1:], dims)):
            raise DataError(f"header says records of shape {shape_text(shape[1:])}, expected "
                            f"{shape_text(dims)}", path)
        if max_items is not None and shape[0] > max_items:
            raise DataError(f"header says {shape[0]:,} records, more than the {max_items:,} of the official file",
                            path)
        if shape[0] == 0 and not allow_empty:  # else every command fails later, each its own way
            raise DataError("no records (its header says 0)", path)
        dtype = IDX_DTYPES[type_code]
        expected = math.prod(shape) * dtype.itemsize  # Python ints: a product of 2^32s cannot overflow

        def truncated(present: int) -> DataError:
            count = present // max(1, expected // max(1, shape[0]))
            return DataError(f"header says {shape[0]} items of shape {shape[1:]} but the file holds only {count} "
                             f"({present} of {expected} data bytes): truncated", path)

        if not src.gzipped:  # the file's size says it all, before reading
            present = src.size - header
            if present < expected:
                raise truncated(present)
            if present > expected:
                raise DataError(f"{present - expected} bytes after the {shape[0]} items the header declares", path)
        elif expected > src.max_size - header:
            raise DataError(f"header announces {expected:,} data bytes, more than a {src.size:,}-byte gzip file "
                            "can hold: truncated or corrupt", path)
        data = src.read_array(expected)
        if len(data) < expected:
            raise truncated(len(data))
        tail = src.read(TAIL_PROBE)  # also lets gzip check its CRC at the end of the stream
        if tail:
            if len(tail) == TAIL_PROBE and src.read(1):
                raise DataError(f"decompresses to more than the {header + expected:,} bytes its header announces",
                                path)
            raise DataError(f"{len(tail)} bytes after the {shape[0]} items the header declares", path)
    return data.view(dtype).reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def read_idx_images(path, size=None, max_items: int | None = None) -> np.ndarray:
    """IDX images as uint8 (N, 1, H, W), N > 0; `size` (H, W) and `max_items` are checked in the header."""
    return read_idx(path, code=0x08, dims=tuple(size) if size else (None, None), max_items=max_items,
                    allow_empty=False)[:, None]


def read_idx_labels(path, num_classes: int, max_items: int | None = None) -> np.ndarray:
    """IDX labels as int64 (N,), N > 0: unsigned bytes (a float or int32 label file is refused, not rounded),
    every one checked to lie in [0, num_classes)."""
    labels = read_idx(path, code=0x08, dims=(), max_items=max_items, allow_empty=False)
    check_label_range(labels, num_classes, path)
    return labels.astype(np.int64)


def shape_text(shape) -> str:
    return " x ".join("any" if d is None else str(d) for d in shape) if shape else "scalars"


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


def read_cifar_batch(path, num_classes: int = 10, max_records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR-10 batch, binary or Python pickle -> (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    `max_records` (the official count) bounds what is read: a larger file is refused before it is
    read, a gzip stream stops inflating at that size."""
    with DataStream(path) as src:
        if src.first_byte() == PICKLE_PROTO:
            limit = cifar_pickle_limit(max_records) if max_records else src.max_size
            return decode_cifar_pickle(src.read_capped(limit), path, num_classes, max_records)
        if not src.gzipped:
            check_cifar_size(src.size, path, max_records)
        limit = max_records * CIFAR_RECORD_BYTES if max_records else src.max_size
        return decode_cifar_batch(src.read_capped(limit), path, num_classes, max_records)


def cifar_pickle_limit(records: int) -> int:
    """Largest plausible Python batch of `records` records: the images, a label and a file name each."""
    return records * (CIFAR_RECORD_BYTES + 128) + (1 << 16)


def check_cifar_size(size: int, path, max_records: int | None = None) -> None:
    if size == 0:  # said as for an empty IDX file
        raise DataError("no records (0 bytes)", path)
    if size % CIFAR_RECORD_BYTES:
        raise DataError(
            f"size {size} bytes is not a whole number of {CIFAR_RECORD_BYTES}-byte CIFAR-10 records "
            f"({size // CIFAR_RECORD_BYTES} records + {size % CIFAR_RECORD_BYTES} stray bytes)",
            path,
        )
    if max_records is not None and size // CIFAR_RECORD_BYTES > max_records:
        raise DataError(f"{size // CIFAR_RECORD_BYTES:,} records, more than the {max_records:,} of the official file",
                        path)


def decode_cifar_batch(data: bytes, path, num_classes: int = 10,
                       max_records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    if bytes(data[:1]) == PICKLE_PROTO:
        return decode_cifar_pickle(data, path, num_classes, max_records)
    check_cifar_size(len(data), path, max_records)
    records = np.frombuffer(data, np.uint8).reshape(-1, CIFAR_RECORD_BYTES)
    labels = records[:, 0].astype(np.int64)
    check_label_range(labels, num_classes, path)
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def decode_cifar_pickle(data: bytes, path, num_classes: int = 10,
                        max_records: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A cifar-10-batches-py batch: a dict with 'data' (N x 3072 uint8, channel-major) and 'labels'."""
    try:
        # latin1 is how Python 3 reads the Python 2 strings inside the official pickles.
        batch = SafeArrayUnpickler(io.BytesIO(data), encoding="latin1").load()
    except RefusedPickle as exc:
        raise DataError(f"{exc}; a CIFAR-10 Python batch holds only numpy arrays and lists", path) from None
    except Exception as exc:  # truncated or garbled pickles raise almost any exception type
        raise DataError(f"corrupt CIFAR-10 Python batch (unpickling failed: {type(exc).__name__}: "
                        f"{str(exc)[:200]})", path) from None
    if not isinstance(batch, dict):
        raise DataError(f"not a CIFAR-10 Python batch (a pickled {type(batch).__name__}, not a dict)", path)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "labels" not in batch:
        hint = " (CIFAR-100 has 'fine_labels'; convzoo reads CIFAR-10)" if "fine_labels" in batch else ""
        raise DataError(f"CIFAR-10 Python batch has no 'labels' entry{hint}", path)
    images, labels = batch.get("data"), batch["labels"]
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 2 \
            or images.shape[1] != CIFAR_IMAGE_BYTES or len(images) == 0:
        got = f"{images.dtype} {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(f"CIFAR-10 Python batch 'data' must be uint8 N x {CIFAR_IMAGE_BYTES} with N > 0, got {got}",
                        path)
    if max_records is not None and len(images) > max_records:
        raise DataError(f"{len(images):,} records, more than the {max_records:,} of the official file", path)
    # Checked before numpy sees it: a list of lists of shared references can announce billions of items.
    if isinstance(labels, np.ndarray):
        ok = labels.ndim == 1 and labels.dtype.kind in "iu"
        got = f"labels of shape {labels.shape} ({labels.dtype})"
    else:
        ok = isinstance(labels, list) and all(type(v) is int for v in labels)
        got = f"{len(labels)} labels" if ok else f"labels that are not a list of integers ({type(labels).__name__})"
    if not ok or len(labels) != len(images):
        raise DataError(f"{len(images)} images but {got}", path)
    if isinstance(labels, list):
        bad = next((i for i, v in enumerate(labels) if not 0 <= v < num_classes), None)
        if bad is not None:  # before numpy: a label beyond int64 would overflow it
            v = labels[bad]
            shown = v if v.bit_length() < 64 else f"of {v.bit_length()} bits"
            raise DataError(f"label {shown} at index {bad} is outside 0..{num_classes - 1}", path)
    else:
        check_label_range(labels, num_classes, path)
    labels = np.asarray(labels).astype(np.int64)
    return images.reshape(-1, 3, 32, 32), labels


class RefusedPickle(pickle.UnpicklingError):
    pass


# numpy.ndarray resolves to this token, not the class: called (REDUCE) or instantiated (NEWOBJ), the
# class would allocate whatever shape the file names; as _reconstruct's argument it is all it needs.
class _NdarrayToken:
    def __call__(self, *args, **kwargs):
        raise RefusedPickle("refusing to call numpy.ndarray (it allocates whatever shape the file names)")


_NDARRAY = _NdarrayToken()


def _checked_reconstruct(subtype, shape, dtype):
    # numpy pickles an array as an empty (0,) array whose state then fills it, from bytes the file holds.
    if subtype is not _NDARRAY or shape != (0,):
        raise RefusedPickle(f"refusing an array constructor other than numpy's own (shape {shape!r})")
    return _RECONSTRUCT(np.ndarray, shape, dtype)


def _checked_dtype(*args):
    dtype = np.dtype(*args)
    if dtype.hasobject:  # object arrays unpickle arbitrary objects
        raise RefusedPickle(f"refusing the object dtype {dtype}")
    return dtype


def _checked_encode(obj, encoding="utf-8", errors="strict"):
    # Protocol-2 pickles spell bytes as _codecs.encode(text, 'latin1'); other codecs are refused.
    if not isinstance(obj, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle(f"refusing _codecs.encode with {encoding!r}")
    return codecs.encode(obj, encoding, errors)


def _checked_bytes(*args):
    # An empty array's data pickles (protocol 2) as bytes(); bytes(n) would allocate n bytes.
    if args:
        raise RefusedPickle("refusing bytes() with arguments")
    return b""


_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's array rebuilder, under either module name


class SafeArrayUnpickler(pickle.Unpickler):
    """Resolves only the globals numpy arrays pickle to, each checked, so loading a file can never
    run code nor allocate more than the file's own bytes justify."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _checked_reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _checked_reconstruct,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _checked_dtype,
        ("_codecs", "encode"): _checked_encode,
        ("__builtin__", "bytes"): _checked_bytes,
        ("builtins", "bytes"): _checked_bytes,
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
        with open(path, "rb") as f:
            raw = f.read(META_MAX_BYTES + 1)
        if len(raw) > META_MAX_BYTES:
            raise DataError(f"more than {META_MAX_BYTES:,} bytes; a class-name file holds a few lines", path)
        names = [line.strip() for line in raw.decode().splitlines() if line.strip()]
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


def gunzip_capped(raw: bytes, limit: int, path) -> bytes | None:
    """`raw` inflated if it is gzip (as is otherwise), or None once it inflates past `limit` bytes."""
    if raw[:2] != GZIP_MAGIC:
        return raw
    with DataStream(path, raw) as src:
        data = src.read_array(limit)
        if len(data) == limit and src.read(1):  # else the stream ended, its CRC checked
            return None
        return data.tobytes()


@contextlib.contextmanager
def read_errors(path):
    """What reading a file or a gzip stream raises, as one DataError naming the file."""
    try:
        yield
    except EOFError:
        raise DataError("truncated gzip file (ends before the end-of-stream marker)", path) from None
    except (gzip.BadGzipFile, zlib.error) as exc:
        raise DataError(f"corrupt gzip file: {exc}", path) from None
    except OSError as exc:
        raise DataError(f"cannot read: {exc.strerror or exc}", path) from None


# ---------------------------------------------------------------- split readers (the catalog's READERS)
# Each takes a located data set (data/fetch.Located: its catalog entry, root folder and file paths)
# and a split name, and returns (uint8 images (N, C, H, W), int64 labels (N,), class names).


def read_idx_split(located, split: str):
    """The IDX images and labels files of `split`, each checked against its catalog entry (type,
    dimensions, at most the official record count) before its records are allocated."""
    spec = located.spec
    files = spec.split_files(split)
    images_file, labels_file = (next(f for f in files if f.role == r) for r in ("images", "labels"))
    images = read_idx_images(located.path(images_file), images_file.idx_dims, images_file.count)
    labels = read_idx_labels(located.path(labels_file), spec.num_classes, labels_file.count)
    if len(images) != len(labels):
        raise DataError(f"{len(images)} images but {len(labels)} labels in {located.path(labels_file).name}",
                        located.path(images_file))
    return images, labels, spec.classes


def read_cifar_split(located, split: str):
    """The CIFAR-10 batches of `split` (binary or pickled), concatenated."""
    spec = located.spec
    parts = [read_cifar_batch(located.path(f), spec.num_classes, f.count) for f in spec.split_files(split)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), spec.classes


# ---------------------------------------------------------------- image folders

# A class name a model's description (metadata.py) may hold: data info warns of a longer folder name
# (long_class_names), which train refuses before training unless --classes leaves it out.
MAX_CLASS_NAME_CHARS = 200
MAX_DECODED_BYTES = 2 << 30  # a folder decodes into memory at once: refused beyond this, before decoding
MAX_IMAGE_FILE_BYTES = image_files.MAX_FILE_BYTES  # a single image file larger than this is not a photo
MACOS_METADATA = "__MACOSX"  # skipped like hidden files (see skipped)


def read_folder_split(located, split: str):
    """`split` of an image folder, decoded by its catalog entry's FolderRule (size, channels, split)."""
    rule = located.spec.folder
    classes, files = list_folder(located.root, rule)
    chosen = files[split]
    images = np.empty((len(chosen), rule.channels, rule.image_size, rule.image_size), np.uint8)
    digests = {}
    for i, (path, _) in enumerate(chosen):
        data = image_files.read_image_file(path)
        digests[path] = file_digest(path, data)
        image = image_files.load_image(data, str(path))
        images[i] = rule.decode(image) if rule.decode else image_files.to_pixels(image, rule.image_size, rule.channels)
    if split == "train":  # kept for the test split's read, which follows
        warn_of_loose_images(located.root)
        _TRAIN_DIGESTS.clear()
        _TRAIN_DIGESTS.update(digests)
    else:
        if not rule.every_image:  # scoring a model of another data set: the training folder trained nothing
            warn_if_test_copies_train(located.root, [p for p, _ in files["train"]], digests)
        _TRAIN_DIGESTS.clear()  # used: a large folder's digests are not kept for the whole run
    return images, np.array([label for _, label in chosen], np.int64), classes


# The digests of the training files last read (path -> (size, mtime, digest)): the test split's read
# compares against them without reading the training files again.
_TRAIN_DIGESTS: dict[Path, tuple[int, int, bytes]] = {}


def file_digest(path: Path, data: bytes) -> tuple[int, int, bytes]:
    """(size, mtime, blake2b) of an image file's bytes, read anyway to decode it; size and mtime tell
    a remembered digest from a changed file's."""
    return len(data), os.stat(path).st_mtime_ns, hashlib.blake2b(data, digest_size=16).digest()


def warn_if_test_copies_train(root: Path, train: list[Path], test: dict[Path, tuple[int, int, bytes]]) -> None:
    """One warning line when test images are byte copies of training images (test/ a copy of train/,
    a photo saved twice in a class folder): their score is a training score. Only after this process
    read the training split (train, data info): a test-only read (eval, data sample) has no digests
    remembered and would read and hash every training file of a test file's size, with fixed-size
    formats (BMP, PGM) all of them. A training file is read again only if it changed since."""
    if not any(path in _TRAIN_DIGESTS for path in train):
        return
    sizes = {size for size, _, _ in test.values()}
    seen = set()
    for path in train:
        stat = os.stat(path)
        if stat.st_size not in sizes:  # cannot be a copy of any test file
            continue
        known = _TRAIN_DIGESTS.get(path)
        if known is None or known[:2] != (stat.st_size, stat.st_mtime_ns):
            known = file_digest(path, image_files.read_image_file(path))
        seen.add(known[2])
    copies = sum(digest in seen for _, _, digest in test.values())
    if copies and os.environ.get("RANK", "0") == "0":  # once per run: data-parallel ranks all read the folder
        print(f"warning: {printable(str(root))}: {copies} of {len(test)} test images are byte-identical to "
              "training images; the test accuracy measures memory", file=sys.stderr)


def warn_of_loose_images(root: Path) -> None:
    """One warning line when image files sit beside the class folders (read by no class), or editors'
    source files lie in them: a class folder forgotten while sorting, or a class saved only as .psd, would
    otherwise train on fewer images without a word."""
    notes = unread_notes(root, split_layout(root))
    if notes and os.environ.get("RANK", "0") == "0":
        print(f"warning: {printable(str(root))}: {notes[2:]}", file=sys.stderr)


def list_folder(root: Path, rule) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
    """(class names, {split: [(file, label)]}) of an image folder: one sub-folder of images per class,
    or a training and a test folder each holding them (split_layout). Every problem (no classes, one
    class, a class without images, no test images, too much to decode) is a DataError found here,
    before any image is decoded."""
    root = Path(root)
    if not root.is_dir():
        raise DataError("not a folder", root)
    layout = split_layout(root)
    if layout:
        classes, files = split_folder_files(*layout[:2])
    else:
        folders = class_folders(root)
        check_not_split(folders, root)
        classes = checked_classes(folders, root, least=1 if rule.every_image else 2)
        files = {"train": [], "test": []}
        for i, c in enumerate(classes):
            images = class_images(root / c)
            train, test = ([], images) if rule.every_image else split_class(images, c, rule)
            files["train"] += [(f, i) for f in train]
            files["test"] += [(f, i) for f in test]
        if not files["test"]:  # eval would score nothing, training would report a test accuracy of 0
            raise DataError("no test images: every class folder holds a single image (a class needs two for one "
                            "to be held out for testing)", root)
    split_dirs = layout[:2] if layout else (root,)
    check_linked_files(files, {d / c: i for d in split_dirs for i, c in enumerate(classes)}, classes)
    check_decoded_size(sum(map(len, files.values())), rule, root)
    # A seeded order mixes the classes, so --train-limit and --from-test take a bit of each.
    files = {s: [f[i] for i in np.random.default_rng(rule.seed).permutation(len(f))] for s, f in files.items()}
    return classes, files


# A folder split by hand: a training folder and a test folder, each with one sub-folder per class,
# named in any case. The test split is the first tier's folder that holds class folders: test/ over
# val/ beside both, val/ when test/ is Kaggle's unlabelled one (its images loose, no classes).
TRAIN_FOLDERS = ("train", "training")
TEST_FOLDERS = (("test", "testing"), ("val", "valid", "validation"))
SPLIT_NAMES = frozenset(TRAIN_FOLDERS).union(*TEST_FOLDERS)


def split_layout(root: Path) -> tuple[Path, Path, list[Path]] | None:
    """(training folder, test folder, the test-split folders passed over for holding no class folders)
    of a folder split by hand (train/ + test/, Train/ + Test/, training/ + testing/, train/ + val/,
    valid/ or validation/), None for one folder per class. Class folders with images beside the splits
    are refused (check_no_stray_classes)."""
    by_name: dict[str, list[Path]] = {}
    for p in class_folders(root):
        by_name.setdefault(p.name.lower(), []).append(p)
    train = [p for name in TRAIN_FOLDERS for p in by_name.get(name, [])]
    tiers = [found for tier in TEST_FOLDERS if (found := [p for name in tier for p in by_name.get(name, [])])]
    if not train or not tiers:
        return None
    labelled = [[p for p in tier if holds_class_folders(p)] for tier in tiers]
    # None labelled: the first tier's, refused in split_folder_files for holding no class folders.
    chosen = next((i for i, tier in enumerate(labelled) if tier), None)
    test = tiers[0] if chosen is None else labelled[chosen]
    for found in (train, test):
        if len(found) > 1:  # train/ and Training/: which one is meant cannot be guessed
            raise DataError(f"{' and '.join(p.name + '/' for p in found)} would both be the "
                            f"{'training' if found is train else 'test'} split; keep one", root)
    check_no_stray_classes(root, train[0], test[0], {p for tier in tiers for p in tier})
    passed = [] if chosen is None else [p for tier in tiers[:chosen + 1] for p in tier if p not in test]
    return train[0], test[0], passed


def check_no_stray_classes(root: Path, train: Path, test: Path, split_folders: set[Path]) -> None:
    """Refuse class folders with images beside train/ + test/: only the split folders are read, so their
    images would be left out without a word, and whether they are classes or a split is not ours to guess."""
    others = [p for p in class_folders(root) if p != train and p not in split_folders]
    counts = {p: n for p in others if (n := len(image_paths(p)))}
    if not counts:
        return
    names = ", ".join(f"{printable(p.name)}/" for p in list(counts)[:5])
    names += f" and {len(counts) - 5} more" * (len(counts) > 5)
    train_name, test_name = printable(train.name), printable(test.name)
    raise DataError(f"ambiguous: class folders {names} ({sum(counts.values())} images) sit beside the split folders "
                    f"{train_name}/ and {test_name}/, which alone are read, so their images would be ignored; "
                    f"move them into {train_name}/ (or {test_name}/), or out of this folder", root)


def holds_class_folders(folder: Path) -> bool:
    """Does `folder` hold a class folder (a sub-folder, skipped ones aside)? Stops at the first: a flat
    test/ of thousands of unlabelled images costs one directory listing."""
    try:
        return any(not skipped(e.name) and safely(e.is_dir) for e in os.scandir(folder))
    except OSError as exc:
        raise DataError(f"cannot read folder: {exc.strerror or exc}", folder) from None


def holds_image_classes(root: Path) -> bool:
    """Does `root` read as a folder of the user's own images: two or more sub-folders, every one holding
    image files (one folder per class), or a training and a test folder each holding such class folders?
    For a catalog data set's --data-path that holds none of its files (fetch.locate), where MNIST would
    otherwise be downloaded. A shared data folder (mnist/ beside a samples/ of images) does not."""
    try:
        subs = [Path(e.path) for e in listed(root) if e.is_dir()]
        if len(subs) >= 2 and all(direct_images(listed(sub)) for sub in subs):
            return True
        names = {sub.name.lower(): sub for sub in subs}
        splits = [next((names[n] for n in tier if n in names), None) for tier in (TRAIN_FOLDERS, sum(TEST_FOLDERS, ()))]
        return all(split is not None and any(e.is_dir() and direct_images(listed(Path(e.path))) for e in listed(split))
                   for split in splits)
    except DataError:  # unreadable: not ours to describe here
        return False


def split_folder_files(train_dir: Path, test_dir: Path):
    """(class names, {split: [(file, label)]}) of a folder split by hand: the classes are the training
    folder's; the test folder may lack some, not add any."""
    train_folders, test_folders = class_folders(train_dir), class_folders(test_dir)
    classes = checked_classes(train_folders, train_dir)
    unknown = [p for p in test_folders if p.name not in classes]
    if unknown:
        raise unknown_test_class(unknown[0], classes, train_dir.name)
    check_crossed_links(train_folders, test_folders, test_dir)
    files = {s: [(f, i) for i, c in enumerate(classes) for f in class_images(d / c, s == "train")]
             for s, d in (("train", train_dir), ("test", test_dir))}
    if not files["test"] and not holds_class_folders(test_dir):  # Kaggle's test/ without its val/
        raise DataError("no class folders: its images are unlabelled, so no accuracy can be taken from them; sort "
                        "them into one sub-folder per class (beside train/, a test/ or val/ holding class folders is "
                        "the test split)", test_dir)
    if not files["test"]:
        raise DataError(f"no image files in any class folder ({' '.join(image_files.image_suffixes())})", test_dir)
    return classes, files


def check_not_split(folders: list[Path], root: Path) -> None:
    """Refuse a split folder (train/, val/, ...) taken for a class: one that holds class folders and
    no images is a split whose partner is missing, and its name would become a class."""
    for p in folders:
        name = p.name.lower()
        if name not in SPLIT_NAMES or not holds_only_folders(p):
            continue
        wanted = ("test", sum(TEST_FOLDERS, ())) if name in TRAIN_FOLDERS else ("training", TRAIN_FOLDERS)
        missing = f"no {wanted[0]} folder ({either(wanted[1])}) is beside it"
        raise DataError(f"{p.name}/ holds class folders, as a split of the data would, but {missing}; add it, "
                        "or put the class folders here directly to hold out --test-split of each", root)


def either(names) -> str:
    """('a', 'b', 'c') -> 'a/, b/ or c/'."""
    names = [n + "/" for n in names]
    return ", ".join(names[:-1]) + " or " + names[-1]


def holds_only_folders(folder: Path) -> bool:
    """Does `folder` hold sub-folders and no image files of its own (hidden entries aside)?"""
    entries = listed(folder)
    return any(e.is_dir() for e in entries) and not direct_images(entries)


def listed(folder: Path) -> list[os.DirEntry]:
    """The entries directly in `folder`, hidden ones and macOS zips' metadata aside."""
    try:
        return [e for e in os.scandir(folder) if not skipped(e.name)]
    except OSError as exc:
        raise DataError(f"cannot read folder: {exc.strerror or exc}", folder) from None


def direct_images(entries: list[os.DirEntry]) -> int:
    """How many of a folder's `entries` are image files (by suffix, in any case)."""
    suffixes = set(image_files.image_suffixes())
    return sum(1 for e in entries if Path(e.name).suffix.lower() in suffixes and safely(e.is_file))


def describe_test_split(root: Path, rule, *, unread: bool = True) -> str:
    """Where an image folder's test images come from, and (`unread`) which of its images are not read (what
    warn_of_loose_images warns of), for `data info`."""
    root = Path(root)
    layout = split_layout(root)
    if layout:
        train, test, passed = layout
        unlabelled = "".join(f"; {printable(p.name)}/ holds no class folders (unlabelled images): not used"
                             for p in passed)
        other = [p for p in class_folders(root) if p.name.lower() in SPLIT_NAMES and p not in (train, test)
                 and p not in passed and holds_class_folders(p)]  # valid/ beside test/
        labelled = "".join(f"; {printable(p.name)}/ (labelled) not used: {printable(test.name)}/ is the test split"
                           for p in other)
        return (f"{printable(test.name)}/ (training images: {printable(train.name)}/{unlabelled}{labelled})"
                f"{unread_notes(root, layout) if unread else ''}")
    return (f"{rule.test_split:.0%} of each class folder (--test-split {rule.test_split}, seed {rule.seed})"
            f"{unread_notes(root, None) if unread else ''}")


def unread_notes(root: Path, layout) -> str:
    """'; N image files directly in FOLDER/: ...' for the folder and, split by hand (`layout`,
    split_layout's), its training and test folders, then '; N editors' source files ...'; '' when
    there are none, and '; N linked folders inside class folders ...'."""
    return "".join(loose_images(folder) for folder in (root, *(layout or ())[:2])) + walk_notes(root, layout)


def walk_notes(root: Path, layout) -> str:
    """From one walk of the folder: '; N editors' source files (.psd, ...) in the class folders: not read'
    (a folder's scan skips images.SOURCE_FORMATS' files, see there: a class saved only as .psd would lose
    its images without a word), and '; N linked folders inside class folders: not entered' (a class's
    sub-folders are walked as os.walk walks them; a link to a folder elsewhere is read as a class folder
    or a split folder only); '' when there are neither."""
    suffixes = set(image_files.source_suffixes())
    try:
        found = [f for f in image_files.walk_files(root, DataError) if MACOS_METADATA not in f.relative_to(root).parts]
    except DataError:  # data info describes; reading the data says what is wrong with the folder
        return ""
    sources = [f for f in found if f.suffix.lower() in suffixes]
    deep = 3 if layout else 2  # a class folder's own entries: root/class/x, or root/train/class/x
    linked = [f for f in found if len(f.relative_to(root).parts) >= deep and f.is_symlink() and f.is_dir()]
    notes = ""
    if sources:
        kinds = ", ".join(sorted({f.suffix.lower() for f in sources}))
        notes += (f"; {len(sources)} editors' source file{'s' * (len(sources) != 1)} ({kinds}) in the class folders: "
                  "not read (export them as PNG to train on them)")
    if linked:
        notes += (f"; {len(linked)} linked folder{'s' * (len(linked) != 1)} inside class folders "
                  f"({printable(linked[0].relative_to(root).as_posix())}{', ...' * (len(linked) > 1)}): not entered "
                  "(link the class folder itself, or the image files)")
    return notes


def loose_images(folder: Path) -> str:
    """'; N image files directly in FOLDER/: in no class folder, not used' (or ''): a class's images are
    the files in its folder, so files beside the class folders belong to none."""
    try:
        count = direct_images(listed(folder))
    except DataError:  # data info describes; reading the data says what is wrong with the folder
        return ""
    if not count:
        return ""
    return f"; {count} image file{'s' * (count != 1)} directly in {printable(folder.name)}/: in no class folder, not used"


def unknown_test_class(folder: Path, classes: tuple[str, ...], train: str = "train") -> DataError:
    """The error for a test class folder that the training folder does not have; a look-alike name
    (the same in another Unicode normalisation) is said to be one."""
    twin = next((c for c in classes if unicodedata.normalize("NFC", c) == unicodedata.normalize("NFC", folder.name)),
                None)
    hint = "" if twin is None else (f" ({train}/ has {ascii(twin)}, the same name written in another Unicode "
                                    f"normalisation than {ascii(folder.name)}; rename one)")
    return DataError(f"a test class that {train}/ does not have{hint}", folder)


def split_fingerprint(root: Path, rule, class_names) -> dict:
    """The test split of an image folder by `rule`, over the classes `class_names`: its file count and
    a sha256 of its sorted paths relative to the folder (a moved folder is the same split). Checkpoints
    record it: files added to or removed from a class redraw that class's split, moving training images
    into the test split, which the rule alone cannot tell."""
    root = Path(root)
    classes, files = list_folder(root, rule)
    paths = sorted(p.relative_to(root).as_posix() for p, y in files["test"] if classes[y] in class_names)
    digest = hashlib.sha256("\0".join(paths).encode("utf-8", "surrogateescape")).hexdigest()
    return {"test_files": len(paths), "test_sha256": digest}


def class_folders(folder: Path) -> list[Path]:
    """The class folders of `folder`, sorted by name: hidden ones and macOS zips' __MACOSX skipped. A link
    to a folder elsewhere is a class folder, as in torchvision's ImageFolder (a split made of links into
    one pool of images); a broken link or a loop is none."""
    return sorted((p for p in folder.iterdir() if not skipped(p.name) and p.is_dir()), key=lambda p: p.name)


def skipped(name: str) -> bool:
    """Hidden names (.DS_Store, AppleDouble ._x.png) and __MACOSX, the folder of AppleDouble files a
    zip made on macOS holds: metadata, never images."""
    return name.startswith(".") or name == MACOS_METADATA


def checked_classes(folders: list[Path], folder: Path, least: int = 2) -> tuple[str, ...]:
    """The class names of `folders` (class_folders'), each checked, and the folders distinct; `least`: 2
    for a classifier trained on them, 1 to score a model of another data set on them."""
    classes = tuple(p.name for p in folders)
    for name in classes:
        check_class_name(name, folder)
    check_lookalikes(classes, folder)
    if not classes:
        raise DataError("no class folders: expected one sub-folder of images per class (or train/ and test/ "
                        "holding them)", folder)
    if len(classes) < least:
        raise DataError(f"only one class folder ({classes[0]!r}); a classifier needs at least two", folder)
    # Two class folders that are one, or one inside the other, through a link in the data set (`kitty ->
    # cat`, `kitty -> cat/sub`, `all -> .`): their images would be two classes, labelled wrong half the time.
    # Sorted by their parts, a folder comes right before the first folder inside it: neighbours suffice.
    places = sorted((p.resolve().parts, p.name) for p in folders)
    for (place, name), (other_place, other) in zip(places, places[1:]):
        if overlap(Path(*place), Path(*other_place)):
            same = "the same folder" if place == other_place else "one inside the other"
            raise DataError(f"class folders '{printable(name)}' and '{printable(other)}' are {same} (a link in the "
                            "data set): their images would be two classes; remove the link", folder)
    return classes


def overlap(a: Path, b: Path) -> bool:
    """Whether two resolved folders are one, or one lies inside the other."""
    return a.is_relative_to(b) or b.is_relative_to(a)


def check_crossed_links(train_folders: list[Path], test_folders: list[Path], test_dir: Path) -> None:
    """A test class folder that is, holds or lies in another class's training folder (test/dog ->
    ../train/cat: cat images scored as dogs), or the other way round: refused, naming both."""
    trained = [(p.name, p.resolve()) for p in train_folders]
    for folder in test_folders:
        tested = folder.resolve()
        for name, place in trained:
            if name != folder.name and overlap(tested, place):
                raise DataError(f"test class folder '{printable(folder.name)}' and training class folder "
                                f"'{printable(name)}' are the same images (one links into the other): they would "
                                "be scored as the wrong class; remove the link", test_dir)


def check_linked_files(files: dict, class_dirs: dict[Path, int], classes) -> None:
    """A file link into another class's folder (a/link.png -> ../b/0.png), or two links in two classes to
    one image elsewhere, puts one image in two classes, as a class folder linking to another would
    (checked_classes): refused, naming both. A link within its class (test/a -> train/a, a copy held out)
    is left to the byte-identical warning."""
    owners = [(d.resolve(), label) for d, label in class_dirs.items()]
    elsewhere: dict[Path, int] = {}  # targets outside every class folder -> the class linking to them
    for chosen in files.values():
        for path, label in chosen:
            if not path.is_symlink():  # walk_files enters no linked folder: the file itself is the link
                continue
            target = path.resolve()
            other = next((y for d, y in owners if target.is_relative_to(d)), None)
            where = "in class folder"
            if other is None:
                other, where = elsewhere.setdefault(target, label), "which a link in class folder"
            if other != label:
                also = " links to as well" if where.startswith("which") else ""
                raise DataError(f"links to {printable(str(target))} {where} '{printable(classes[other])}'{also}: the "
                                f"same image would be two classes ('{printable(classes[label])}' and "
                                f"'{printable(classes[other])}'); remove the link", path)


def check_class_name(name: str, folder: Path) -> None:
    """Class names are stored in checkpoints and ONNX metadata (UTF-8 JSON): a folder name that is not
    UTF-8 (Latin-1 bytes from an old zip or tar archive) cannot be one. (A name over MAX_CLASS_NAME_CHARS
    is refused by train only if --classes keeps it, and data info warns of it: long_class_names.)"""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise DataError(f"class folder '{name}' has a name that is not valid UTF-8 (an old zip or tar archive?); "
                        "rename it to UTF-8: class names are stored in checkpoints and model files", folder) from None


def long_class_names(classes) -> str:
    """'; class folder 'xxx...' has a name of 250 characters ...' for names no checkpoint can hold (or '')."""
    long = [c for c in classes if len(c) > MAX_CLASS_NAME_CHARS]
    if not long:
        return ""
    return (f"; class folder '{printable(long[0][:40])}...' has a name of {len(long[0])} characters"
            f"{f' (and {len(long) - 1} more)' if len(long) > 1 else ''}: a checkpoint holds at most "
            f"{MAX_CLASS_NAME_CHARS} a class, so train refuses it unless --classes leaves it out; rename it")


def check_lookalikes(classes: tuple[str, ...], folder: Path) -> None:
    """Two folders whose names differ only in Unicode normalisation ('café' typed on Linux, NFC, and
    copied from macOS, NFD) print alike: two classes no one can tell apart. Case differences are
    visible, and legitimate where the file system tells them apart: left alone."""
    seen = {}
    for name in classes:
        other = seen.setdefault(unicodedata.normalize("NFC", name), name)
        if other != name:
            raise DataError(f"class folders {ascii(other)} and {ascii(name)} have the same name written in two Unicode "
                            "normalisations (NFC and NFD), so they look identical; merge them or rename one", folder)


def class_images(folder: Path, required: bool = True) -> list[Path]:
    """The image files under one class folder (image_paths), each within the size an image may have;
    none is an error if `required`."""
    found = image_paths(folder)
    if not found and required:
        raise DataError(f"no image files ({' '.join(sorted(image_files.image_suffixes()))})", folder)
    for f in found:
        if f.stat().st_size > MAX_IMAGE_FILE_BYTES:
            raise DataError(f"{f.stat().st_size:,} bytes, more than the {MAX_IMAGE_FILE_BYTES >> 20} MB an image "
                            "file may have", f)
    return found


def image_paths(folder: Path) -> list[Path]:
    """The image files under `folder` (sub-folders included), sorted; extensions matched in any case.
    Skipped like hidden files: anything that is not a regular file (a FIFO or device named *.png would
    block or never end when read, a broken link or a loop fails); a link to an image elsewhere is read."""
    suffixes = set(image_files.image_suffixes())
    found = []
    if folder.is_dir():  # walk_files: no recursion (a deep tree), linked folders not entered
        found = [f for f in image_files.walk_files(folder, DataError) if f.suffix.lower() in suffixes
                 and MACOS_METADATA not in f.relative_to(folder).parts]
    return sorted(f for f in found if f.is_file())  # is_file: regular, links followed


def within_data_set(path, root) -> bool:
    """Does `path` lie in the image folder `root`, or in a folder elsewhere that a class (or split) folder
    of it links to, whose images it reads? A file written there (a plot, samples, a run) becomes one."""
    return any(inside(Path(path), folder) for folder in (Path(root), *linked_folders(Path(root))))


def linked_folders(root: Path) -> list[Path]:
    """The folders elsewhere that `root`'s sub-folders, or theirs (train/<class>, also in a linked train/),
    are links to."""
    found = []
    try:  # a folder that cannot be listed: reading the data set says so
        tops = [root, *class_folders(root)] if root.is_dir() else []  # train/ itself may be a link
    except OSError:
        return found
    for here in tops:
        try:
            with os.scandir(here) as entries:
                found += [Path(e.path).resolve() for e in entries if e.is_symlink() and safely(e.is_dir)]
        except OSError:
            continue
    return found


def safely(test) -> bool:
    """A DirEntry's is_dir or is_file, False for a link loop (DirEntry raises ELOOP for it)."""
    try:
        return test()
    except OSError:
        return False


def inside(path: Path, root: Path) -> bool:
    """Does `path`, links resolved, stay inside `root`?"""
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):  # a link loop: Python 3.11's resolve() raises RuntimeError for it
        return False


def split_class(files: list[Path], name: str, rule) -> tuple[list[Path], list[Path]]:
    """One class's files split into (train, test): rule.test_split of them for testing, drawn by a
    generator seeded with the rule's seed and the class's name, so adding a class changes no other
    class's split."""
    n = len(files)
    n_test = min(n - 1, max(1, round(n * rule.test_split))) if n >= 2 else 0
    rng = np.random.default_rng([rule.seed, zlib.crc32(name.encode())])
    test = set(rng.permutation(n)[:n_test].tolist())
    return [f for i, f in enumerate(files) if i not in test], [f for i, f in enumerate(files) if i in test]


def check_decoded_size(count: int, rule, root: Path) -> None:
    size = count * rule.channels * rule.image_size ** 2
    if size > MAX_DECODED_BYTES:
        raise DataError(f"{count:,} images of {rule.channels} x {rule.image_size} x {rule.image_size} would decode to "
                        f"{size / 1e9:.1f} GB, more than the {MAX_DECODED_BYTES / 1e9:.1f} GB limit; use a smaller "
                        "--image-size or fewer images", root)


def channel_stats(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 (N, C, H, W) images scaled to 0..1, exactly, from a
    256-bin histogram (no float copy of the images)."""
    values = np.arange(256) / 255
    means, stds = [], []
    for c in range(images.shape[1]):
        counts = np.bincount(images[:, c].reshape(-1), minlength=256)
        mean = float(counts @ values / max(counts.sum(), 1))
        std = float(np.sqrt(counts @ (values - mean) ** 2 / max(counts.sum(), 1)))
        means.append(round(mean, 4))
        stds.append(round(max(std, 1e-3), 4))  # a blank folder must not divide by zero
    return tuple(means), tuple(stds)
