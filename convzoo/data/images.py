"""Users' image files -> 8-bit grey or RGB Pillow images, with Pillow and numpy only (serving needs
no torch): decoding for `predict` and `serve` (deploy/preprocess.py) and for image-folder data sets
(data/formats.py), so both read a file the same way.

Every decoding failure is an ImageError naming the file; any Pillow mode either becomes 8-bit grey
or RGB or is refused, so hostile pixels (NaN, odd modes) never reach numpy; images over 40 MP are
refused from their header, before decoding. A path is read only if it is a regular file of at
most MAX_FILE_BYTES (checked from its stat, before reading: /dev/zero or a FIFO would never end).
Pillow's warnings are caught, never printed; an image whose EXIF block is corrupt is read unturned.

Transparency: to_pixels (image folders for training, and any model but a digit one at predict time,
garment models too) composites it onto white, as a web page or a product photo shows it, whatever the
pixels (a background chosen from them flipped between two cut-outs one grey level apart). Digit
models (deploy/preprocess.py) take digit_background's: the paper's, or one contrasting with strokes
drawn on a transparent canvas.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import io
import math
import os
import stat
import threading
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConvzooError

MAX_PIXELS = 40_000_000
# Bytes an image file may have, refused from its size before reading: 40 MP as uncompressed 16-bit
# RGB (TIFF, PPM) is 240 MB; anything larger is not a photo.
MAX_FILE_BYTES = 256 << 20
# The still-image formats users save pictures in, icons and editors' files included; Pillow's other
# parsers (EPS runs Ghostscript, FITS, animation and scientific formats, ...) see no user bytes.
# Format -> its Pillow plugin, imported alone: Image.init() would import all ~45 (a tenth of a second).
PLUGINS = {"PNG": "Png", "JPEG": "Jpeg", "BMP": "Bmp", "GIF": "Gif", "TIFF": "Tiff", "WEBP": "WebP", "AVIF": "Avif",
           "PPM": "Ppm", "TGA": "Tga", "QOI": "Qoi", "JPEG2000": "Jpeg2K", "ICO": "Ico", "ICNS": "Icns",
           "PSD": "Psd", "DDS": "Dds", "PCX": "Pcx", "SGI": "Sgi", "DIB": "Bmp"}  # DIB: a BMP without its file header
FORMATS = tuple(PLUGINS)
MAX_SIDE = 2048  # larger images are box-reduced first: the model sees 32x32, numpy need not see 40 MP


class ImageError(ConvzooError):
    """A file or upload that is not a usable image."""


class NotAnImage(ImageError):
    """Bytes that no Pillow plugin recognises."""


class ImageTooLarge(ImageError):
    """More pixels than MAX_PIXELS (found from the header, before decoding)."""


def load_image(source, name: str = "image") -> Image.Image:
    """Open bytes or a path; refuse empty, non-image, corrupt and > 40 MP images (before decoding)."""
    if not isinstance(source, (bytes, bytearray)):
        name = str(source)
    return decode_image(open_image(source, name), name)


def open_image(source, name: str = "image") -> Image.Image:
    """Read only the header of bytes or a path: a lazy image whose size has been checked. An icon file
    (ICO, ICNS) gives the image inside it that Pillow would show, opened as any file is (a PNG or JPEG 2000
    one lazily, its own header checked against MAX_PIXELS): Pillow decodes an ICO's while opening it,
    under its own limit (twice MAX_PIXELS), and an icon's header does not give the inner image's size."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file (0 bytes)", name)
    else:
        return open_image(read_image_file(source), str(source))
    return opened(source, name, readable_formats())


def is_container(data) -> bool:
    """Whether bytes are an icon file (ICO, ICNS), whose inner image is decoded by Pillow while opening
    it or whose pixel count its header does not give: the server opens these off its event loop."""
    return bytes(data[:4]) in (ICO_MAGIC, b"icns")


def opened(data, name: str, formats) -> Image.Image:
    """open_image's work on bytes: Pillow's parsers (restricted to `formats`) under quiet(),
    errors as ImageErrors, an icon's inner image taken out, the size checked."""
    try:
        if bytes(data[:4]) == ICO_MAGIC and "ICO" in formats:
            image = ico_inner(data, name)
        else:
            with quiet():
                image = Image.open(io.BytesIO(data), formats=list(formats))
            if image.format == "ICNS":
                image = icns_inner(image, data, name)
    except ImageError:
        raise
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image exceeds the {MAX_PIXELS / 1e6:.0f}-megapixel limit", name) from None
    except Image.UnidentifiedImageError:
        raise NotAnImage("not an image (unrecognised format)", name) from None
    except Exception as exc:  # Pillow's format parsers raise many types on hostile bytes
        raise ImageError(f"corrupt or truncated image ({exc or type(exc).__name__})", name) from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                            f"{MAX_PIXELS / 1e6:.0f}", name)
    if width * height == 0:
        raise ImageError(f"image is {width}x{height}: no pixels", name)
    return image


PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ICO_MAGIC = b"\0\0\1\0"  # an ICO directory's reserved word and type 1


def ico_inner(data, name: str) -> Image.Image:
    """The image Pillow's IcoImageFile shows (its directory's largest entry), without IcoImageFile: it
    decodes while opening, under Pillow's limit, holding quiet()'s lock. A PNG entry is opened lazily as
    any PNG (decoded once, later, by decode_image); a bitmap one (classic icons) is decoded here once
    its own header's size has passed MAX_PIXELS."""
    from PIL import IcoImagePlugin

    icon = IcoImagePlugin.IcoFile(io.BytesIO(data))  # the directory only
    if not icon.entry:
        raise ImageError("corrupt icon (no images in it)", name)
    offset = icon.entry[0].offset
    if bytes(data[offset:offset + 8]) == PNG_MAGIC:
        image = opened(data[offset:], name, ("PNG",))
    else:  # a DIB: its header's height counts the AND mask's rows too
        header = bytes(data[offset:offset + 12])
        if len(header) < 12:
            raise ImageError("corrupt or truncated icon", name)
        width, height = abs(int.from_bytes(header[4:8], "little", signed=True)), \
            abs(int.from_bytes(header[8:12], "little", signed=True)) // 2
        if width * height > MAX_PIXELS:
            raise ImageTooLarge(f"icon image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the "
                                f"limit is {MAX_PIXELS / 1e6:.0f}", name)
        with quiet():  # small in practice (a bitmap icon is at most 256 px a side by its directory)
            image = icon.frame(0)
    image.format = "ICO"
    return image


def icns_inner(image: Image.Image, data, name: str) -> Image.Image:
    """An ICNS file's largest image when it is a PNG or JPEG 2000 (as recent icons are), opened lazily
    as such a file is, so its own header is checked; else the IcnsImageFile (packed RGB, at most 1024 px
    a side), decoded by decode_image."""
    from PIL import IcnsImagePlugin

    icns, size = image.icns, image.best_size
    for code, reader in icns.SIZES[size]:
        if code in icns.dct and reader is IcnsImagePlugin.read_png_or_jpeg2000:
            start, length = icns.dct[code]
            inner = opened(data[start:start + length], name, ("PNG", "JPEG2000"))
            inner.format = "ICNS"
            return inner
    return image


# catch_warnings swaps process-wide state: two threads (the server decodes in two) would restore each
# other's filters, so Pillow's warnings are caught under one lock.
PILLOW_WARNINGS = threading.RLock()


@contextlib.contextmanager
def quiet(max_pixels: int | None = None):
    """Pillow's warnings (corrupt EXIF, an icon's odd size) recorded into the list yielded, never printed:
    a user sees one line or none, not a library's text; a decompression-bomb warning is raised, from
    `max_pixels` when given. Only short steps run here: the server's event loop may wait on the lock.
    Each record has the `thread` that warned: the filters are process-wide, so a warning from another
    thread (decoding unlocked) lands here too."""
    with PILLOW_WARNINGS, warnings.catch_warnings():
        caught: list[warnings.WarningMessage] = []

        def record(message, category, filename, lineno, file=None, line=None):
            caught.append(warnings.WarningMessage(message, category, filename, lineno, file, line))
            caught[-1].thread = threading.get_ident()

        warnings.showwarning = record  # restored by catch_warnings
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels or saved
        try:
            yield caught
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def read_image_file(path) -> bytes:
    """A regular file's bytes, at most MAX_FILE_BYTES: a device (/dev/zero), FIFO or socket would
    block or never end, so it is refused from its stat, as is a file too large, before reading."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ImageError("not a regular file", path)
        # O_NONBLOCK: should a FIFO replace the file after the stat, opening it still returns at once.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
        with open(fd, "rb") as f:
            info = os.fstat(f.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise ImageError("not a regular file", path)
            if info.st_size > MAX_FILE_BYTES:
                raise ImageTooLarge(f"{info.st_size:,} bytes, more than the {MAX_FILE_BYTES >> 20} MB an image "
                                    "file may have", path)
            data = f.read(MAX_FILE_BYTES + 1)  # a file still growing stops here too
    except FileNotFoundError:
        raise ImageError("file not found", path) from None
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or exc}", path) from None
    if len(data) > MAX_FILE_BYTES:
        raise ImageTooLarge(f"more than the {MAX_FILE_BYTES >> 20} MB an image file may have", path)
    return data


def decode_image(image: Image.Image, name: str = "image") -> Image.Image:
    """Decode an opened image: EXIF orientation applied, then standard_mode (8-bit, <= MAX_SIDE)."""
    # Decoded unlocked: open_image has checked the size of what is decoded (an icon's inner image too).
    try:
        # JPEG can decode at 1/2..1/8 scale: a large photo never exists at full size.
        image.draft(None, (min(image.width, MAX_SIDE), min(image.height, MAX_SIDE)))
        image.load()
    except MemoryError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageTooLarge(f"image exceeds the {MAX_PIXELS / 1e6:.0f}-megapixel limit", name) from None
    except Exception as exc:  # as above: truncated data fails in format-specific ways
        raise ImageError(f"corrupt or truncated image ({exc or type(exc).__name__})", name) from None
    return standard_mode(orient(image, name), name)


CONVERT = {"1": "L", "La": "LA", "P": "RGBA", "PA": "RGBA", "RGBa": "RGBA", "RGBX": "RGB", "CMYK": "RGB",
           "YCbCr": "RGB", "LAB": "RGB", "HSV": "RGB"}


def standard_mode(image: Image.Image, name: str = "image") -> Image.Image:
    """Any Pillow mode -> 'L', 'LA', 'RGB' or 'RGBA' at most MAX_SIDE pixels a side; ImageError for
    pixels that cannot be interpreted (an unknown mode, NaN or infinite floats)."""
    mode = image.mode
    integer = mode == "I" or mode.startswith("I;16")
    target = "F" if integer else CONVERT.get(mode, mode)
    if target not in ("L", "LA", "RGB", "RGBA", "F"):
        raise ImageError(f"unsupported image mode {mode}", name)
    if target != mode:
        image = image.convert(target)
    factor = math.ceil(max(image.size) / MAX_SIDE)
    if factor > 1:
        image = image.reduce(factor)
    return image if image.mode != "F" else high_bit_depth_to_grey(image, integer, name)


def high_bit_depth_to_grey(image: Image.Image, integer: bool, name: str) -> Image.Image:
    """16/32-bit integer or float pixels -> 8-bit grey: non-negative integers scale by the smallest
    of the 8-, 10-, 12-, 14- and 16-bit ranges that holds their maximum (a 10-bit sensor's 0..1023 in a
    16-bit PNG scaled by 65535 was 4 grey levels, read as blank); anything else (floats, negative or
    wider integers) stretches from its minimum to its maximum."""
    a = np.asarray(image, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ImageError("image holds NaN or infinite pixel values", name)
    low, high = float(a.min()), float(a.max())
    if integer and low >= 0 and high <= 65535:
        top = next(2.0**bits - 1 for bits in (8, 10, 12, 14, 16) if high <= 2**bits - 1)
        a = a / top * 255
    else:
        a = (a - low) / max(high - low, 1e-12) * 255
    return Image.fromarray(a.clip(0, 255).round().astype(np.uint8))


def flatten_alpha(image: Image.Image, background: float | None = None) -> Image.Image:
    """Composite transparency onto `background` (0..255 grey), or when None onto digit_background's
    ('L' or 'RGB' out)."""
    if image.mode not in ("RGBA", "LA"):
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    if alpha.min() > 0.99:
        return rgba.convert("RGB" if image.mode == "RGBA" else "L")
    lum = np.asarray(rgba.convert("L"), dtype=np.float32)
    if background is None:
        background = digit_background(lum, alpha)
    if image.mode == "LA":
        return Image.fromarray((lum * alpha + background * (1 - alpha)).clip(0, 255).astype(np.uint8))
    colour = np.asarray(rgba.convert("RGB"), dtype=np.float32) * alpha[..., None] + background * (1 - alpha[..., None])
    return Image.fromarray(colour.clip(0, 255).astype(np.uint8))


TRANSPARENT = 255.0  # what transparency is for any model but a digit's (to_pixels, garments): white
PAPER_AND_INK = 64  # grey levels from the opaque pixels' median: a pixel this far off is ink on paper


def digit_background(lum: np.ndarray, alpha: np.ndarray) -> float:
    """What a digit's transparent pixels are, from its opaque ones. Paper (a card on a transparent canvas,
    a photo rotated in an editor, its corners transparent), told by holding ink too and by its edge, the
    opaque pixels bordering the transparency, being paper as well (near the opaque pixels' median), or by
    covering most of the image: the paper's brightness, their median (a background contrasting with their
    mean, black for white paper, read the margin as ink: confident wrong digits). Strokes drawn on a
    transparent canvas (uniform, a fraction of it), or cut out with a magic wand (a black core, an opaque
    grey fringe: 'paper and ink', the fringe its edge): a background contrasting with them. Ink is told by
    its count, not by percentiles: a 7 on a photo's page is 5% of its pixels."""
    solid = alpha > 0.98  # edges of anti-aliased strokes are half transparent, their colour unsure
    opaque = lum[solid]
    if opaque.size:
        paper = float(np.median(opaque))
        inked = np.count_nonzero(np.abs(opaque - paper) > PAPER_AND_INK) > 0.001 * opaque.size
        if opaque.size > 0.5 * lum.size:  # no digit's strokes cover half the image: a page, blank or not
            return paper
        rim = lum[edge(solid)]  # a card's or a photo's edge is paper; a stroke's fringe is not
        if inked and abs(float(np.median(rim if rim.size else opaque)) - paper) <= PAPER_AND_INK:
            return paper
    ink = float((lum * alpha).sum() / max(alpha.sum(), 1e-6))
    return 255.0 if ink < 128 else 0.0


def edge(solid: np.ndarray) -> np.ndarray:
    """The `solid` pixels with a non-solid one beside them (4-neighbours; the image's border is not one)."""
    clear = ~solid
    beside = np.zeros_like(solid)
    beside[1:] |= clear[:-1]
    beside[:-1] |= clear[1:]
    beside[:, 1:] |= clear[:, :-1]
    beside[:, :-1] |= clear[:, 1:]
    return solid & beside


# Editors' and tools' source files (.psd, .dds textures, .icns app icons), read by content but not picked up
# by a folder's scan: they lie beside the PNGs exported from them, and picked up they would be training
# images twice (and a folder's test split would change, so an earlier run no longer resumes). `train` and
# `data info` say how many a folder holds (formats.walk_notes); `predict` reads one named by its path.
SOURCE_FORMATS = ("PSD", "DDS", "ICNS")
# SGI's other extensions name raw pixel dumps too: read, a folder holding one failed whole ("not an image").
RAW_DUMP_SUFFIXES = (".rgb", ".rgba", ".bw")


@functools.cache
def readable_formats() -> tuple[str, ...]:
    """FORMATS that this Pillow has a plugin for (imported, so registered). Each decodes to pixels that
    standard_mode makes grey or RGB (or refuses, naming the file): none is listed that only identifies."""
    for name in PLUGINS.values():
        try:
            importlib.import_module(f"PIL.{name}ImagePlugin")
        except ImportError:  # an older Pillow without that plugin (AVIF came in 11.2)
            pass
    return tuple(f for f in FORMATS if f in Image.OPEN)


@functools.cache
def image_suffixes() -> tuple[str, ...]:
    """The extensions (lower case) that a folder's scan reads: every one Pillow registers for a readable
    format (.jpe, .dib, .apng, ... as well as .png and .jpg), SOURCE_FORMATS' and RAW_DUMP_SUFFIXES aside; in FORMATS'
    order, so messages listing them start with the usual ones. From Pillow's own table (Image.EXTENSION,
    filled as readable_formats imports the plugins), so it cannot drift from what Pillow opens."""
    formats = [f for f in readable_formats() if f not in SOURCE_FORMATS]
    found = [(formats.index(fmt), ext) for ext, fmt in Image.EXTENSION.items()
             if fmt in formats and ext not in RAW_DUMP_SUFFIXES]
    return tuple(ext for _, ext in sorted(found))


def source_suffixes() -> tuple[str, ...]:
    """The extensions of SOURCE_FORMATS (.psd, .dds, .icns) that this Pillow registers."""
    return tuple(sorted(ext for ext, fmt in Image.EXTENSION.items() if fmt in SOURCE_FORMATS))


def walk_files(folder, error=ImageError, hidden: bool = False) -> list[Path]:
    """Every entry under `folder` that is not a folder (files, links to files, broken links), sub-folders
    included, hidden names skipped unless `hidden`; linked folders are not entered, as with os.walk.
    Walked with a stack, not recursion: os.walk and Path.rglob recurse once per level, and a tree
    ~1,000 levels deep (a runaway script, a recursive backup) raised RecursionError. A folder that
    cannot be listed (no permission, a path longer than the system allows) is `error` naming it."""
    found, stack = [], [str(folder)]
    while stack:
        here = stack.pop()
        try:
            with os.scandir(here) as entries:
                for entry in entries:
                    if entry.name.startswith(".") and not hidden:
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
                    else:
                        found.append(Path(entry.path))
        except OSError as exc:
            raise error(f"cannot read folder: {exc.strerror or exc}", here) from None
    return found


def orient(image: Image.Image, name: str = "image") -> Image.Image:
    """`image` turned upright by its EXIF orientation (as phones save photos), for files and callers'
    PIL images alike, so both predict the same. A corrupt EXIF block (Pillow warns, or fails, reading it)
    gives no orientation: what was read of it cannot be trusted, and the pixels are still good."""
    if exif_is_corrupt(image):
        return image
    try:
        with quiet():  # parsed here, and kept: a TIFF's tags may warn
            image.getexif()
        return ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:  # broken EXIF fails in format-specific ways
        raise ImageError(f"corrupt EXIF orientation ({exc or type(exc).__name__})", name) from None


def exif_is_corrupt(image: Image.Image) -> bool:
    """Whether the image's EXIF block (JPEG, PNG, WebP: bytes in its info) makes Pillow warn or fail.
    Parsed afresh: Pillow parses it while opening a JPEG (for its dpi) and keeps what it read, warning once.
    Only this thread's warnings from Pillow's EXIF parser count: another server thread's (decoding a
    file unlocked) land in the same record, and a valid EXIF was called corrupt, its orientation dropped."""
    raw = image.info.get("exif")
    if not isinstance(raw, (bytes, bytearray)):
        return False
    with quiet() as caught:
        try:
            Image.Exif().load(bytes(raw))
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - broken EXIF fails in format-specific ways
            return True
    return any(exif_warning(w) for w in caught)


EXIF_PARSERS = ("TiffImagePlugin.py", "Image.py")  # Pillow's modules that parse EXIF (Image.Exif, its IFDs)


def exif_warning(caught: warnings.WarningMessage) -> bool:
    """Whether a warning quiet() recorded is Pillow's EXIF parser's, in this thread: one from its EXIF or
    TIFF-tag reading ('Possibly corrupt EXIF data', 'Tag offset too large', 'Metadata Warning, tag ...')."""
    if getattr(caught, "thread", None) != threading.get_ident():
        return False
    here = Path(caught.filename or "")
    if here.name not in EXIF_PARSERS or here.parent != Path(Image.__file__).parent:
        return False
    text = str(caught.message).lower()
    return "exif" in text or "tag" in text


def to_pixels(image: Image.Image, side: int, channels: int, resample: str = "bilinear") -> np.ndarray:
    """A decoded image -> uint8 (channels, side, side): transparency flattened onto white, grey (1) or
    RGB (3), resized with Pillow's antialiased bilinear filter (or the `resample` one a model made elsewhere
    was trained with). How an image folder is decoded for training, and how `predict` and `serve` fit
    users' images for a model trained at that size."""
    image = flatten_alpha(standard_mode(image), TRANSPARENT).convert("L" if channels == 1 else "RGB")
    if image.size != (side, side):
        image = image.resize((side, side), Image.Resampling[resample.upper()], reducing_gap=2.0)
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
