"""Decoding users' image files (data/images.py): bit depths, formats, transparency and broken metadata,
with real MNIST test digits saved by Pillow as users' tools save them."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from conftest import MNIST_DIR, need, run_cli


def mnist_digits(count: int = 1) -> np.ndarray:
    """The first `count` MNIST test digits, uint8 (count, 28, 28), light ink on black (the first is a 7)."""
    from convzoo.data import formats

    return formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:count, 0]


def read_digits(files) -> list[str]:
    from convzoo.deploy.predict import Predictor
    from convzoo.models.pretrained import pretrained_path

    return [r["class"] for r in Predictor(pretrained_path("lenet5:mnist")).predict_files(list(map(str, files)), topk=1)]


@pytest.mark.real_data
@pytest.mark.parametrize("bits", [10, 12, 14])
def test_16_bit_file_holding_fewer_bits_keeps_its_contrast(tmp_path, bits):
    """A 10-bit sensor's 0..1023 in a 16-bit PNG was scaled by 65535: 4 grey levels, read as blank."""
    from convzoo.data.images import load_image

    digit = mnist_digits()[0]
    path = tmp_path / f"sensor{bits}.png"
    Image.fromarray((digit.astype(np.uint32) * (2**bits - 1) // 255).astype(np.uint16)).save(path)
    assert Image.open(path).mode == "I;16"
    grey = np.asarray(load_image(path), dtype=np.int16)
    assert np.abs(grey - digit).max() <= 1
    assert read_digits([path]) == ["7"]


def corrupt_exif(kind: str) -> bytes:
    """An EXIF block cut short after its header (as a user's file had), or one whose Orientation 6 is
    followed by a tag whose data lies past the block's end."""
    import struct

    if kind == "truncated":
        return b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff" + b"\x00" * 10
    ifd = (struct.pack(">H", 2) + struct.pack(">HHLHH", 0x0112, 3, 1, 6, 0)
           + struct.pack(">HHLL", 0x010E, 2, 100, 1000) + struct.pack(">L", 0))
    return b"Exif\x00\x00MM\x00*" + struct.pack(">L", 8) + ifd


@pytest.mark.real_data
@pytest.mark.parametrize("kind", ["truncated", "orientation, then a tag past the end"])
def test_corrupt_exif_is_read_without_warnings_or_orientation(tmp_path, kind):
    """Pillow's 'Corrupt EXIF data' UserWarning was printed by predict, train and serve; the image is
    still read, and what was read of a corrupt block (here an Orientation 6) is not applied."""
    import warnings

    from convzoo.data.images import load_image

    digit = mnist_digits()[0]
    path = tmp_path / "seven.jpg"
    Image.fromarray(digit).save(path, quality=95, exif=corrupt_exif(kind))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        grey = np.asarray(load_image(path), dtype=np.int16)
    assert not caught, [str(w.message) for w in caught]
    assert np.abs(grey - digit).mean() < 3  # as saved, not turned
    proc = run_cli("predict", "--model", "lenet5:mnist", path, env={"PYTHONWARNINGS": "default"}, check=0)
    assert proc.stderr == "", proc.stderr
    assert f"{path}: 7 (" in proc.stdout, proc.stdout
