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


def psd(grey: np.ndarray) -> bytes:
    """A one-channel, uncompressed Photoshop file (Pillow reads PSD but cannot write it)."""
    import struct

    h, w = grey.shape
    header = b"8BPS" + struct.pack(">H6xHLLHH", 1, 1, h, w, 8, 1)  # version 1, 1 channel, 8 bits, greyscale
    return header + struct.pack(">LLLH", 0, 0, 0, 0) + grey.tobytes()  # no palette, resources or layers; raw


# Format -> (suffix, side saved at): an icon is saved at one of its standard sizes.
OTHER_FORMATS = {"ICO": (".ico", 64), "JPEG2000": (".jp2", 28), "ICNS": (".icns", 64), "DDS": (".dds", 28),
                 "PCX": (".pcx", 28), "SGI": (".sgi", 28), "PSD": (".psd", 28)}


@pytest.mark.real_data
def test_icons_jpeg_2000_and_editors_files_are_read(tmp_path):
    """ICO and JPEG 2000, which Pillow reads, were refused as 'not an image (unrecognised format)'; so
    were ICNS, DDS, PCX, SGI and PSD. Each is read by content (as the server reads an untyped body) and
    its 7 read as one; a folder picks up the image formats by their suffix, not editors' and tools' source
    files (PSD, DDS, ICNS: beside the PNGs exported from them they were training images twice, and an
    earlier run's folder changed its test split)."""
    from convzoo.data.images import open_image
    from convzoo.deploy.predict import expand_image_paths

    digit = mnist_digits()[0]
    paper = Image.fromarray(255 - digit)  # dark ink on white, as an icon or a scan has it
    files = []
    for fmt, (suffix, side) in OTHER_FORMATS.items():
        files.append(tmp_path / f"seven{suffix}")
        image = paper.resize((side, side), Image.Resampling.BICUBIC)
        if fmt == "PSD":
            files[-1].write_bytes(psd(np.asarray(image)))
        else:
            image.convert("RGB").save(files[-1], fmt)
        assert open_image(files[-1].read_bytes(), files[-1].name).format == fmt
    assert sorted(expand_image_paths([tmp_path])) == sorted(f for f in files if f.suffix not in (".psd", ".dds", ".icns"))
    assert read_digits(files) == ["7"] * len(files)


def test_icon_holding_a_larger_image_is_refused_before_decoding(tmp_path):
    """An icon's header gives 1024 px; the PNG inside it is 48 MP (of 5 kB): refused by the 40-MP
    limit as the header-checked formats are, not decoded (Pillow's own bomb check starts at 89 MP)."""
    import io
    import struct

    from convzoo.data.images import ImageTooLarge, load_image

    inner = io.BytesIO()
    Image.new("1", (8000, 6000)).save(inner, "PNG")
    entry = b"ic10" + struct.pack(">L", 8 + len(inner.getvalue())) + inner.getvalue()
    (tmp_path / "bomb.icns").write_bytes(b"icns" + struct.pack(">L", 8 + len(entry)) + entry)
    with pytest.raises(ImageTooLarge, match="bomb.icns.*megapixel"):
        load_image(tmp_path / "bomb.icns")


def ico(inner: bytes) -> bytes:
    """An ICO file whose one entry (256 px by its directory) holds `inner`, a PNG."""
    import struct

    return struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHLL", 0, 0, 0, 0, 1, 32, len(inner), 22) + inner


def test_ico_is_opened_without_decoding_its_inner_image():
    """Pillow decodes an ICO while opening it, under its own 89-MP limit and holding quiet()'s lock (on the
    server's event loop for a small body): a 36-MP PNG in a few kB took a second to open, then was decoded
    again. Its inner PNG is now opened lazily as any PNG (decoded once, later), a 48-MP one refused from its
    header; the server sends icons to a thread, never decoding them on its event loop."""
    import io

    from convzoo.data.images import ImageTooLarge, decode_image, is_container, open_image
    from convzoo.deploy.server import any_container, parse_requests

    inner = io.BytesIO()
    Image.new("1", (6000, 6000), 1).save(inner, "PNG")
    image = open_image(ico(inner.getvalue()), "big.ico")
    assert image.format == "ICO" and image.size == (6000, 6000)
    assert image._im is None  # not decoded yet
    assert decode_image(image, "big.ico").size == (2000, 2000)
    inner = io.BytesIO()
    Image.new("1", (8000, 6000)).save(inner, "PNG")
    with pytest.raises(ImageTooLarge, match="bomb.ico.*8000x6000"):
        open_image(ico(inner.getvalue()), "bomb.ico")

    small = io.BytesIO()
    Image.new("L", (28, 28)).save(small, "PNG")
    assert is_container(ico(small.getvalue())) and not is_container(small.getvalue())
    parsed = parse_requests([lambda: ([("a.png", small.getvalue())], 1), lambda: ([("b.ico", ico(small.getvalue()))], 1)])
    assert any_container(parsed) and not any_container(parsed[:1])


def on_transparent(digit: np.ndarray, kind: str) -> Image.Image:
    """A digit as a user's editor saves it with transparency: a white card holding the black digit, in a
    40-px transparent margin; a photo of it on grey paper, rotated 5 degrees (transparent corners); or
    the digit's strokes alone, drawn in black or white on a transparent canvas."""
    ink = np.asarray(Image.fromarray(digit).resize((200, 200), Image.Resampling.BICUBIC))
    if kind.startswith("strokes"):
        colour = 0 if "black" in kind else 255
        return Image.fromarray(np.dstack([np.full_like(ink, colour)] * 3 + [ink]), "RGBA")
    if kind == "card":
        rgba = np.zeros((280, 280, 4), np.uint8)
        rgba[40:240, 40:240, :3], rgba[40:240, 40:240, 3] = (255 - ink)[..., None], 255
        return Image.fromarray(rgba, "RGBA")
    paper = np.full((480, 640), 225.0)
    paper[140:340, 220:420] = 225 - 185 * (ink / 255.0)
    photo = Image.fromarray(paper.astype(np.uint8)).convert("RGBA")
    return photo.rotate(5, expand=True, resample=Image.Resampling.BICUBIC)


@pytest.mark.real_data
@pytest.mark.parametrize("kind", ["card", "rotated photo", "strokes, black", "strokes, white"])
def test_digit_with_transparent_margins_reads_as_on_its_paper(tmp_path, kind):
    """Transparency took a background contrasting with the opaque pixels' mean: black round a white card
    or a photo's transparent corners, read as ink ('0 (0.34)', '2 (0.77)' for a 7). It now takes the
    paper's brightness when the opaque pixels hold paper and ink; strokes alone still get a contrasting one."""
    digits = mnist_digits(10)
    files = []
    for i, digit in enumerate(digits):
        files.append(tmp_path / f"{i}.png")
        on_transparent(digit, kind).save(files[-1])
    from convzoo.data import formats

    labels = formats.read_idx_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 10)[:10]
    read = read_digits(files)
    assert sum(r == str(t) for r, t in zip(read, labels)) >= 9, (read, labels.tolist())


@pytest.mark.parametrize("kind", ["card", "rotated photo"])
def test_blank_page_with_transparent_margins_is_blank(tmp_path, kind):
    """A page without ink, its margins or corners transparent, is blank: not a frame of ink round it."""
    from convzoo.deploy.predict import Predictor
    from convzoo.models.pretrained import pretrained_path

    on_transparent(np.zeros((28, 28), np.uint8), kind).save(tmp_path / "page.png")
    [result] = Predictor(pretrained_path("lenet5:mnist")).predict_files([str(tmp_path / "page.png")], topk=1)
    assert result.get("blank"), result


@pytest.mark.real_data
@pytest.mark.parametrize("channels", [1, 3])
def test_cut_outs_one_grey_level_apart_get_the_same_white_background(channels):
    """For folder and CIFAR models (to_pixels, in training and at predict time), transparency took a
    background contrasting with the opaque pixels: a grey-127 cut-out of a 7 got white, a grey-128 one
    black, and the model saw opposite images. It is now white for both, at training and prediction alike."""
    from convzoo.data.images import to_pixels
    from convzoo.deploy.preprocess import normalise, to_array

    shape = mnist_digits()[0] > 60
    meta = {"dataset": "cifar10", "preprocess": "resize",
            "input": {"channels": channels, "size": 32, "fit": "resize", "mean": [0.5] * channels,
                      "std": [0.25] * channels}}
    pixels = []
    for level in (127, 128):
        rgba = np.zeros((28, 28, 4), np.uint8)
        rgba[..., :3], rgba[..., 3] = level, np.where(shape, 255, 0)
        cut_out = Image.fromarray(rgba, "RGBA")
        pixels.append(to_pixels(cut_out, 32, channels).astype(np.int16))  # as an image folder is decoded
        assert pixels[-1][:, 0, 0].tolist() == [255] * channels  # a corner: transparent
        trained = normalise(pixels[-1][None].astype(np.float32) / 255, meta["input"])
        np.testing.assert_allclose(to_array(cut_out, meta), trained, atol=1e-6)  # predict sees the same
    assert np.abs(pixels[0] - pixels[1]).max() <= 1


def test_magic_wand_cut_out_digit_keeps_a_contrasting_background():
    """A black 7 cut out of a scan with a magic wand: a black core, an opaque grey anti-aliased fringe, the
    rest transparent. It counted as paper and ink, the paper their median (black), and the margins turned
    black like the ink: the digit disappeared. The fringe round it is not paper: a contrasting background."""
    from PIL import ImageDraw

    from convzoo.data.images import digit_background, flatten_alpha

    rgba = Image.new("RGBA", (100, 100), (0, 0, 0, 0))
    draw = ImageDraw.Draw(rgba)
    for width, grey in ((10, 170), (6, 0)):
        draw.line([(20, 20), (80, 20), (40, 85)], fill=(grey, grey, grey, 255), width=width)
    lum = np.asarray(rgba.convert("L"), np.float32)
    assert digit_background(lum, np.asarray(rgba.getchannel("A"), np.float32) / 255) == 255
    flat = np.asarray(flatten_alpha(rgba).convert("L"))
    assert flat[5, 5] == 255 and flat[20, 50] == 0


def test_another_threads_warning_does_not_make_a_valid_exif_corrupt(monkeypatch):
    """Warnings are recorded process-wide: a Pillow warning from another server thread (decoding unlocked)
    while a photo's EXIF was parsed called it corrupt, and its orientation was dropped."""
    import threading
    import warnings

    from convzoo.data import images

    exif = Image.Exif()
    exif[0x0112] = 6
    photo = Image.new("L", (4, 2))
    photo.info["exif"] = exif.tobytes()
    real_load = Image.Exif.load

    def load_while_another_thread_warns(self, data):
        other = threading.Thread(target=lambda: warnings.warn("Possibly corrupt EXIF data (another file)"))
        other.start()
        other.join()
        return real_load(self, data)

    monkeypatch.setattr(Image.Exif, "load", load_while_another_thread_warns)
    assert not images.exif_is_corrupt(photo)
    monkeypatch.setattr(Image.Exif, "load", real_load)
    assert images.orient(photo).size == (2, 4)  # turned by its Orientation 6
