"""IDX and CIFAR-10 (binary and Python pickle) formats: real files, round trips, and every kind of corruption."""

from __future__ import annotations

import gzip
import pickle
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from convzoo.data import formats
from convzoo.errors import DataError

from conftest import CIFAR_DIR, FASHION_DIR, MNIST_DIR, RunsCode, cifar_pickle, need


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
    (lambda: cifar_pickle(np.zeros((2, 3, 32, 32), np.uint8), [0, 1, 2]), "2 images but labels of shape (3,)"),
    (lambda: cifar_pickle(np.zeros((2, 3, 32, 32), np.uint8), [0, 10]), "label 10 at index 1"),
])
def test_cifar_pickle_corruptions(tmp_path, payload, message):
    path = write_raw(tmp_path / "test_batch", payload())
    with pytest.raises(DataError, match=re.escape(message)):
        formats.read_cifar_batch(path)
