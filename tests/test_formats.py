"""IDX and CIFAR-10 (binary and Python pickle) formats: real files, round trips, every kind of corruption,
headers checked against the catalog, gzip bombs; and the atomic writes: modes, leftovers, full and read-only disks."""

from __future__ import annotations

import codecs
import contextlib
import gzip
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convzoo.atomic import atomic_open, atomic_write_bytes, remove_stale_temps
from convzoo.data import formats
from convzoo.data.catalog import CIFAR10, MNIST
from convzoo.engine import rundir
from convzoo.errors import DataError, WriteError

from conftest import (CIFAR_DIR, FASHION_DIR, MNIST_DIR, ROOT, RunsCode, assert_user_error, cifar_pickle, cli_env, need,
                      run_cli)


@pytest.mark.real_data
def test_real_mnist():
    test_images = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")
    test_labels = formats.read_idx_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 10)
    train_images = formats.read_idx_images(MNIST_DIR / "train-images-idx3-ubyte.gz")
    assert test_images.shape == (10000, 1, 28, 28) and test_images.dtype == np.uint8
    assert train_images.shape == (22699, 1, 28, 28)
    assert test_labels[:5].tolist() == [7, 2, 1, 0, 4]
    assert np.bincount(test_labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.real_data
def test_real_fashion_mnist():
    images = formats.read_idx_images(need(FASHION_DIR) / "train-images-idx3-ubyte.gz")
    labels = formats.read_idx_labels(FASHION_DIR / "train-labels-idx1-ubyte.gz", 10)
    test_labels = formats.read_idx_labels(FASHION_DIR / "t10k-labels-idx1-ubyte.gz", 10)
    assert images.shape == (60000, 1, 28, 28)
    assert np.bincount(labels).tolist() == [6000] * 10
    assert np.bincount(test_labels).tolist() == [1000] * 10
    assert test_labels[:5].tolist() == [9, 2, 1, 1, 6]


@pytest.mark.real_data
def test_real_cifar10():
    folder = need(CIFAR_DIR) / "cifar-10-batches-bin"
    images, labels = formats.read_cifar_batch(folder / "test_batch.bin")
    assert images.shape == (10000, 3, 32, 32) and images.dtype == np.uint8
    assert labels[:5].tolist() == [3, 8, 8, 0, 6]
    assert np.bincount(labels).tolist() == [1000] * 10
    train = np.concatenate([formats.read_cifar_batch(folder / f"data_batch_{i}.bin")[1] for i in range(1, 6)])
    assert np.bincount(train).tolist() == [5000] * 10
    assert formats.read_cifar_meta(folder / "batches.meta.txt")[:3] == ["airplane", "automobile", "bird"]
    # official per-channel mean on 0..1, as PROVENANCE.txt measured (R 0.4941 on test)
    assert abs(images[:, 0].mean() / 255 - 0.4941) < 0.002


IDX_DTYPES = st.sampled_from([np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])


@settings(max_examples=40, deadline=None)
@given(data=st.data(), dtype=IDX_DTYPES, gz=st.booleans())
def test_idx_round_trip(tmp_path_factory, data, dtype, gz):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=6))
    array = data.draw(hnp.arrays(dtype, shape, elements={"allow_nan": False} if np.dtype(dtype).kind == "f" else None))
    path = tmp_path_factory.mktemp("idx") / ("a.idx.gz" if gz else "a.idx")
    formats.write_idx(path, array)
    back = formats.read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


@settings(max_examples=20, deadline=None)
@given(images=hnp.arrays(np.uint8, st.tuples(st.integers(1, 5), st.just(3), st.just(32), st.just(32))),
       seed=st.integers(0, 2**16))
def test_cifar_round_trip(tmp_path_factory, images, seed):
    labels = np.random.default_rng(seed).integers(0, 10, len(images))
    path = tmp_path_factory.mktemp("cifar") / "batch.bin"
    formats.write_cifar_bin(path, images, labels)
    back_images, back_labels = formats.read_cifar_batch(path)
    np.testing.assert_array_equal(back_images, images)
    np.testing.assert_array_equal(back_labels, labels)


def write_raw(path, payload: bytes, gz=False):
    path.write_bytes(gzip.compress(payload) if gz else payload)
    return path


def idx_header(code, *dims):
    return bytes([0, 0, code, len(dims)]) + np.asarray(dims, ">u4").tobytes()


def test_truncated_gzip(tmp_path):
    data = gzip.compress(idx_header(8, 3, 2, 2) + bytes(12))
    path = write_raw(tmp_path / "x.gz", data[: len(data) - 9])
    with pytest.raises(DataError, match="truncated gzip"):
        formats.read_idx(path)


def test_wrong_magic(tmp_path):
    path = write_raw(tmp_path / "x", b"\x00\x01\x08\x01" + bytes(8))
    with pytest.raises(DataError, match="bad magic number 0x00010801"):
        formats.read_idx(path)


def test_header_count_larger_than_data(tmp_path):
    path = write_raw(tmp_path / "x.gz", idx_header(8, 100, 28, 28) + bytes(28 * 28 * 60), gz=True)
    with pytest.raises(DataError, match="header says 100 items .* holds only 60"):
        formats.read_idx(path)


def test_trailing_bytes(tmp_path):
    path = write_raw(tmp_path / "x", idx_header(8, 2) + bytes(5))
    with pytest.raises(DataError, match="3 bytes after"):
        formats.read_idx(path)


def test_label_out_of_range(tmp_path):
    path = tmp_path / "labels.gz"
    formats.write_idx(path, np.array([1, 2, 12, 3], np.uint8))
    with pytest.raises(DataError, match="label 12 at index 2 is outside 0..9"):
        formats.read_idx_labels(path, 10)


def test_cifar_wrong_size(tmp_path):
    path = write_raw(tmp_path / "data_batch_1.bin", bytes(3073 * 2 + 100))
    with pytest.raises(DataError, match="not a whole number of 3073-byte"):
        formats.read_cifar_batch(path)


def test_cifar_bad_label(tmp_path):
    path = write_raw(tmp_path / "b.bin", bytes([11]) + bytes(3072))
    with pytest.raises(DataError, match="label 11"):
        formats.read_cifar_batch(path)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        formats.read_idx(tmp_path / "nope")


def test_data_files_with_no_records_are_refused(tmp_path):
    """An IDX images or labels file whose header says 0 records, or an empty CIFAR-10 batch: refused by
    the reader, naming the file (a generic read_idx still reads an empty array)."""
    images = write_raw(tmp_path / "t10k-images-idx3-ubyte", idx_header(8, 0, 28, 28))
    labels = write_raw(tmp_path / "t10k-labels-idx1-ubyte.gz", idx_header(8, 0), gz=True)
    with pytest.raises(DataError, match=re.escape(f"{images}: no records")):
        formats.read_idx_images(images, (28, 28), 10000)
    with pytest.raises(DataError, match=re.escape(f"{labels}: no records")):
        formats.read_idx_labels(labels, 10, 10000)
    assert formats.read_idx(images).shape == (0, 28, 28)
    batch = write_raw(tmp_path / "test_batch.bin", b"")
    with pytest.raises(DataError, match=re.escape(f"{batch}: no records (0 bytes)")):
        formats.read_cifar_batch(batch)


@pytest.mark.real_data
def test_cli_test_split_with_no_records(tmp_path, capsys):
    """t10k files whose headers say 0 records beside the real training files: eval (ONNX and checkpoint),
    predict --from-test and train all stop when the data are loaded, with one line naming the file."""
    from convzoo.cli import main

    folder = tmp_path / "zero"
    folder.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        (folder / name).symlink_to(need(MNIST_DIR) / name)
    formats.write_idx(folder / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    formats.write_idx(folder / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    run = tmp_path / "run"
    for args in (["eval", "--model", "lenet5:mnist"], ["eval", "--ckpt", "lenet5:mnist"],
                 ["predict", "--model", "lenet5:mnist", "--from-test", 2],
                 ["train", "--model", "lenet5", "--dataset", "mnist", "--epochs", 1, "--train-limit", 256,
                  "--threads", 1, "--output-dir", run]):
        code = main([str(a) for a in (*args, "--data-path", folder)])  # in this process: no interpreter start each
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
        assert code == 2 and len(errors) == 1 and "Traceback" not in err, err
        assert f"{folder / 't10k-images-idx3-ubyte'}: no records" in errors[0], err
    assert not (run / "last.pt").exists()


@pytest.mark.real_data
def test_cifar_python_pickle_reads_like_binary(tmp_path):
    images, labels = formats.read_cifar_batch(need(CIFAR_DIR) / "cifar-10-batches-bin" / "test_batch.bin")
    path = write_raw(tmp_path / "test_batch", cifar_pickle(images[:500], labels[:500]))
    back_images, back_labels = formats.read_cifar_batch(path)
    np.testing.assert_array_equal(back_images, images[:500])
    np.testing.assert_array_equal(back_labels, labels[:500])


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "was-run"
    path = write_raw(tmp_path / "data_batch_1", pickle.dumps({"labels": [1], "data": RunsCode(marker)}, protocol=2))
    with pytest.raises(DataError, match=r"refusing to unpickle posix\.mkdir"):
        formats.read_cifar_batch(path)
    assert not marker.exists()


@pytest.mark.parametrize("payload,message", [
    (lambda: cifar_pickle(np.zeros((2, 3, 32, 32), np.uint8), [0, 1])[:-40], "corrupt CIFAR-10 Python batch"),
    (lambda: pickle.dumps([1, 2, 3], protocol=2), "a pickled list, not a dict"),
    (lambda: pickle.dumps({"fine_labels": [3], "data": np.zeros((1, 3072), np.uint8)}, protocol=2), "CIFAR-100"),
    (lambda: cifar_pickle(np.zeros((2, 3, 16, 16), np.uint8), [0, 1]), "must be uint8 N x 3072"),
    (lambda: cifar_pickle(np.zeros((2, 3, 32, 32), np.uint8), [0, 1, 2]), "2 images but 3 labels"),
    (lambda: cifar_pickle(np.zeros((2, 3, 32, 32), np.uint8), [0, 10]), "label 10 at index 1"),
])
def test_cifar_pickle_corruptions(tmp_path, payload, message):
    path = write_raw(tmp_path / "test_batch", payload())
    with pytest.raises(DataError, match=re.escape(message)):
        formats.read_cifar_batch(path)


# ---------------------------------------------------------------- checked against the catalog

TRAIN_IMAGES, TRAIN_LABELS = MNIST.files[0], MNIST.files[1]


def read_as_catalogued(path, file):
    """What read_split does with one MNIST file: its catalog entry's type, dimensions and count."""
    if file.role == "images":
        return formats.read_idx_images(path, file.idx_dims, file.count)
    return formats.read_idx_labels(path, 10, file.count)


@pytest.mark.parametrize("file,payload,message", [
    (TRAIN_IMAGES, idx_header(8, *[1] * 65) + bytes(1), "declares 65 dimensions, expected 3 (N x 28 x 28)"),
    (TRAIN_IMAGES, idx_header(8, 2**31, 2**31, 4), "records of shape 2147483648 x 4, expected 28 x 28"),
    (TRAIN_IMAGES, idx_header(8, 3, 1, 784) + bytes(3 * 784), "records of shape 1 x 784, expected 28 x 28"),
    (TRAIN_IMAGES, idx_header(8, 3, 784) + bytes(3 * 784), "declares 2 dimensions, expected 3"),
    (TRAIN_IMAGES, idx_header(8, 60001, 28, 28), "header says 60,001 records, more than the 60,000 of the official"),
    (TRAIN_IMAGES, idx_header(0x0D, 1, 28, 28) + bytes(4 * 784), "32-bit floats (type 0x0D), expected unsigned bytes"),
    (TRAIN_LABELS, idx_header(0x0D, 2) + np.array([3.7, np.nan], ">f4").tobytes(), "32-bit floats (type 0x0D)"),
    (TRAIN_LABELS, idx_header(0x0C, 2) + np.array([3, 1], ">i4").tobytes(), "32-bit integers (type 0x0C)"),
    (TRAIN_LABELS, idx_header(8, 2, 1) + bytes(2), "declares 2 dimensions, expected 1 (N)"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_header_checked_against_catalog(tmp_path, file, payload, message, gz):
    path = write_raw(tmp_path / file.name, payload, gz=gz)
    with pytest.raises(DataError, match=re.escape(message)):
        read_as_catalogued(path, file)


@pytest.mark.parametrize("gz", [False, True])
def test_overflowing_dims_refused_before_allocating(tmp_path, gz):
    """2^31 x 2^31 x 4 bytes (16 EiB) with no catalog entry to check: the file's size refuses it."""
    path = write_raw(tmp_path / "x", idx_header(8, 2**31, 2**31, 4) + bytes(64), gz=gz)
    with pytest.raises(DataError, match="truncated"):
        formats.read_idx(path)


def gzip_bomb(prefix: bytes, total_zeros: int, member_zeros: int = 64 << 20) -> bytes:
    """`prefix` then `total_zeros` zero bytes as concatenated gzip members (each ~65 KB per 64 MB): a
    10 MB file that inflates to 10 GB, made in milliseconds."""
    member = gzip.compress(bytes(member_zeros), compresslevel=9, mtime=0)
    return gzip.compress(prefix, mtime=0) + member * (total_zeros // member_zeros)


@pytest.mark.parametrize("records", [60000, 10])
def test_gzip_bomb_stops_at_announced_size_with_bounded_memory(tmp_path, records):
    import tracemalloc

    bomb = gzip_bomb(idx_header(8, records, 28, 28), 10 << 30)
    assert 9 << 20 < len(bomb) < 12 << 20
    path = write_raw(tmp_path / TRAIN_IMAGES.name, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"decompresses to more than the {16 + records * 784:,} bytes"):
            read_as_catalogued(path, TRAIN_IMAGES)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # the announced bytes (a growing buffer over-allocates by up to 1/8) and a few MB of inflate buffers
    assert peak < 1.25 * records * 784 + (8 << 20), f"peak {peak:,} bytes"


def test_cifar_gzip_bomb_capped_at_official_records(tmp_path):
    path = write_raw(tmp_path / "test_batch.bin", gzip_bomb(bytes([1]) + bytes(3072), 2 << 30))
    with pytest.raises(DataError, match="decompresses to more than 30,730,000 bytes"):
        formats.read_cifar_batch(path, 10, max_records=CIFAR10.files[-1].count)


def test_cifar_bigger_than_official_refused_before_reading(tmp_path):
    path = tmp_path / "test_batch.bin"
    with open(path, "wb") as f:
        f.truncate(3073 * 10001)  # sparse: costs no disk
    with pytest.raises(DataError, match="10,001 records, more than the 10,000 of the official file"):
        formats.read_cifar_batch(path, 10, max_records=10000)


class Reduces:
    """Pickles to a call of `func(*args)`."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def nested_labels(depth=3, width=1000):
    """A list of lists of shared references: a few KB of pickle, 10^9 items to numpy."""
    level = [0] * width
    for _ in range(depth - 1):
        level = [level] * width
    return level


RECONSTRUCT = np.zeros(1).__reduce__()[0]


@pytest.mark.parametrize("batch,message", [
    (lambda images: {"data": images, "labels": [1]}, "2 images but 1 labels"),
    (lambda images: {"data": images, "labels": [1, [2, 3]]}, "not a list of integers"),
    (lambda images: {"data": images, "labels": nested_labels()}, "not a list of integers"),
    (lambda images: {"data": images, "labels": [1, 2**70]}, "label of 71 bits at index 1"),
    (lambda images: {"data": images, "labels": [1.0, 2.0]}, "not a list of integers"),
    (lambda images: {"data": images, "labels": "ab"}, "not a list of integers (str)"),
    (lambda images: {"data": images, "labels": np.array([1.5, 2.5])}, "labels of shape (2,) (float64)"),
    (lambda images: {"data": np.zeros((0, 3072), np.uint8), "labels": []}, "with N > 0"),
    (lambda images: {"data": Reduces(np.ndarray, (1 << 40,), "u1"), "labels": [1]}, "refusing to call numpy.ndarray"),
    (lambda images: {"data": Reduces(RECONSTRUCT, np.ndarray, (1 << 40,), b"b"), "labels": [1]},
     "refusing an array constructor"),
    (lambda images: {"data": images.astype(object), "labels": [1, 2]}, "refusing the object dtype"),
    (lambda images: {"data": Reduces(codecs.encode, "x" * 10, "rot13"), "labels": [1]}, "refusing _codecs.encode"),
])
def test_cifar_pickle_malformed_content(tmp_path, batch, message):
    images = np.zeros((2, 3072), np.uint8)
    path = write_raw(tmp_path / "test_batch", pickle.dumps(batch(images), protocol=2))
    with pytest.raises(DataError, match=re.escape(message)):
        formats.read_cifar_batch(path, 10, max_records=10000)


def test_cifar_pickle_records_beyond_official(tmp_path):
    path = write_raw(tmp_path / "test_batch", cifar_pickle(np.zeros((11, 3, 32, 32), np.uint8), [0] * 11))
    with pytest.raises(DataError, match="11 records, more than the 10 of the official file"):
        formats.read_cifar_batch(path, 10, max_records=10)


# ---------------------------------------------------------------- writes: modes, leftovers, full and read-only disks

@contextlib.contextmanager
def tmpfs(folder, size="64k", ro=False):
    """A real tmpfs mounted on `folder` (tiny, or read-only): ENOSPC and EROFS as the kernel gives them."""
    folder.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", str(folder)],
                          capture_output=True, text=True)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_atomic_write_mode_follows_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "a.bin", b"x")
        formats.write_idx(tmp_path / "b.idx", np.zeros(3, np.uint8))
        with open(tmp_path / "plain", "wb"):
            pass
    finally:
        os.umask(old)
    for name in ("a.bin", "b.idx", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_full_disk_is_one_write_error_and_leaves_nothing(tmp_path):
    import torch

    with tmpfs(tmp_path / "small") as folder:
        with pytest.raises(WriteError, match=r"small/a\.bin: cannot write: No space left on device"):
            atomic_write_bytes(folder / "a.bin", bytes(200_000))
        with pytest.raises(WriteError, match="b.idx.gz: cannot write: No space left on device"):
            formats.write_idx(folder / "b.idx.gz", np.random.default_rng(0).integers(0, 255, 200_000, np.uint8))
        # torch.save through a file object reports the errno (given a path, it raises a bare RuntimeError)
        with pytest.raises(WriteError, match="last.pt: cannot write: No space left on device"):
            with atomic_open(folder / "last.pt") as f:
                torch.save({"w": torch.zeros(100_000)}, f)
        log = rundir.RunLog(folder, quiet=True)
        with pytest.raises(WriteError, match="train.log: cannot write: No space left on device"):
            for _ in range(10_000):
                log.line("Epoch: [ 1/10], step: [ 937/ 937], loss: 0.1234, time: 1.234ms")
        log.close()
        assert sorted(p.name for p in folder.iterdir()) == ["train.log"]


def cli(capsys, *args) -> tuple[int, str]:
    """The real entry point in this process (no interpreter start): exit code and stderr."""
    from convzoo.cli import main

    capsys.readouterr()
    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


def assert_one_error_line(code: int, err: str, fragment: str) -> None:
    lines = [line for line in err.splitlines() if line.startswith("convzoo: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert fragment in lines[0], lines[0]


@pytest.mark.real_data
def test_cli_sample_full_and_read_only_folders(tmp_path, capsys):
    need(MNIST_DIR)
    with tmpfs(tmp_path / "small") as folder:
        code, err = cli(capsys, "data", "sample", "mnist", "--data-path", MNIST_DIR, "--count", "2000",
                        "--output", folder)
        assert_one_error_line(code, err, "cannot write: No space left on device")
        written = sorted(folder.iterdir())
        assert written and all(p.name.startswith("test-") and p.suffix == ".png" for p in written)  # no temps
        from PIL import Image

        for p in written:  # every PNG that is there is whole
            Image.open(p).load()
    with tmpfs(tmp_path / "ro", ro=True) as folder:
        code, err = cli(capsys, "data", "sample", "mnist", "--data-path", MNIST_DIR, "--output", folder / "samples")
        assert_one_error_line(code, err, "samples: cannot write: Read-only file system")
        code, err = cli(capsys, "data", "sample", "mnist", "--data-path", MNIST_DIR, "--output", folder)
        assert_one_error_line(code, err, "test-00000-7.png: cannot write: Read-only file system")


def test_cli_sample_output_that_is_no_folder(tmp_path, capsys):
    """--output naming a file, a device, a link loop or a broken link was "cannot write: File exists"."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "loop").symlink_to("loop")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    for output, fragment in ((tmp_path / "notes.txt", "notes.txt: not a folder"), ("/dev/null", "/dev/null: not a folder"),
                             (tmp_path / "loop", "loop: a symbolic link loop"), (tmp_path / "gone", "gone: a broken link")):
        code, err = cli(capsys, "data", "sample", "mnist", "--data-path", need(MNIST_DIR), "--output", output)
        assert_one_error_line(code, err, fragment)
        assert "--output names the folder the PNG files go to" in err, err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.real_data
def test_cli_sample_never_writes_over_a_users_file(tmp_path, capsys):
    """`data sample --output s3` replaced a user's s3/test-00001-2.png (notes, or their own PNG) in
    silence: refused before anything is written; earlier samples are replaced, as a re-run expects; a
    folder data set's own folder is refused (the PNGs would become its images)."""
    from PIL import Image

    need(MNIST_DIR)
    out = tmp_path / "s3"
    assert cli(capsys, "data", "sample", "mnist", "--data-path", MNIST_DIR, "--count", "2", "--output", out)[0] == 0
    assert cli(capsys, "data", "sample", "mnist", "--data-path", MNIST_DIR, "--count", "3", "--output", out)[0] == 0
    for theirs in (b"my notes, not a PNG", (tmp_path / "s3" / "test-00000-7.png").read_bytes().replace(b"convzoo", b"someone")):
        (out / "test-00001-2.png").write_bytes(theirs)
        (out / "test-00002-1.png").unlink(missing_ok=True)
        code, err = cli(capsys, "data", "sample", "mnist", "--data-path", MNIST_DIR, "--count", "3", "--output", out)
        assert_one_error_line(code, err, "test-00001-2.png: exists and is not a sample convzoo wrote")
        assert (out / "test-00001-2.png").read_bytes() == theirs and not (out / "test-00002-1.png").exists()
    root = tmp_path / "folder"
    for name, value in (("a", 0), ("b", 255)):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8), value, np.uint8)).save(root / name / f"{i}.png")
    code, err = cli(capsys, "data", "sample", "folder", "--data-path", root, "--output", root / "a")
    assert_one_error_line(code, err, "is inside the data set's folder")
    assert sorted(p.name for p in (root / "a").iterdir()) == ["0.png", "1.png"]

@pytest.mark.real_data
def test_cli_sample_file_size_limit(tmp_path):
    """RLIMIT_FSIZE (no root needed): the kernel refuses the write with EFBIG."""
    import resource

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))

    proc = subprocess.run([sys.executable, "-m", "convzoo", "data", "sample", "mnist",
                           "--data-path", str(need(MNIST_DIR)), "--output", str(tmp_path)],
                          capture_output=True, text=True, preexec_fn=limit,
                          env=cli_env({"PYTHONDONTWRITEBYTECODE": "1"}), timeout=300)
    assert_user_error(proc, "test-00000-7.png: cannot write: File too large")
    assert list(tmp_path.iterdir()) == []


WRITER = """
import os, signal, sys
from convzoo.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_bytes(sys.argv[2].encode() * 100_000)
    if sys.argv[2] == "killed":
        os.kill(os.getpid(), signal.SIGKILL)
    print("writing", flush=True)
    sys.stdin.read()  # holds the temp file, and its lock, until stdin closes
"""


def test_killed_writes_are_removed_by_the_next_run_live_ones_kept(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for _ in range(3):  # as SIGKILL during checkpoint saves leaves them
        proc = subprocess.run([sys.executable, "-c", WRITER, str(run / "last.pt"), "killed"], cwd=ROOT)
        assert proc.returncode == -signal.SIGKILL
    live = subprocess.Popen([sys.executable, "-c", WRITER, str(run / "last.pt"), "live"], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "writing\n"
        temps = list(run.glob(".last.pt.*.tmp"))
        assert len(temps) == 4
        old = time.time() - 60
        for t in temps:
            os.utime(t, (old, old))
        rundir.prepare(run, resume=True, exist_ok=False)  # the next run in that folder
        left = list(run.glob(".last.pt.*.tmp"))
        assert len(left) == 1 and left[0].read_bytes()[:4] == b"live"  # the live writer's, locked
    finally:
        live.communicate("", timeout=60)
    assert live.returncode == 0
    assert [p.name for p in run.iterdir() if p.name != rundir.LOCK_FILE] == ["last.pt"]
    assert (run / "last.pt").read_bytes() == b"live" * 100_000


def test_remove_stale_temps_touches_only_our_pattern(tmp_path):
    names = [".last.pt.k2j_x9ab.tmp", ".model.onnx.0123abcd.onnx", ".t10k.gz.deadbeef.part", "last.pt", ".hidden",
             ".last.pt.tmp", "x.0123abcd.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        os.utime(tmp_path / name, (time.time() - 60,) * 2)
    removed = remove_stale_temps(tmp_path, ["last.pt", "model.onnx"])
    assert sorted(p.name for p in removed) == [".last.pt.k2j_x9ab.tmp", ".model.onnx.0123abcd.onnx"]
    assert sorted(p.name for p in remove_stale_temps(tmp_path)) == [".t10k.gz.deadbeef.part"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", ".last.pt.tmp", "last.pt", "x.0123abcd.tmp"]


def test_atomic_write_removes_only_its_own_leftovers(tmp_path):
    """A killed write's temp of the same target goes; a user's hidden file that merely looks like a
    temp name (or another target's temp) stays."""
    import os
    import time

    from convzoo.atomic import atomic_write_bytes

    leftover, other, users = (tmp_path / ".x.bin.abcd1234.tmp", tmp_path / ".y.bin.abcd1234.tmp",
                              tmp_path / ".vimrc.backup01.txt")
    for f in (leftover, other, users):
        f.write_bytes(b"old")
        os.utime(f, (time.time() - 60, time.time() - 60))
    atomic_write_bytes(tmp_path / "x.bin", b"new")
    assert (tmp_path / "x.bin").read_bytes() == b"new"
    assert not leftover.exists() and other.exists() and users.exists()
