"""Users' images -> model input, with numpy and Pillow only (serving needs no torch).

Digit models see what MNIST was made of: light ink on black, the ink cropped, fitted in a 20x20
box and centred by its centre of mass in 28x28. A photo or scan of dark ink on light paper is
detected (bright border) and inverted. Fashion models get the item fitted in 28x28; CIFAR models a
32x32 resize. Every decoding failure is an ImageError naming the file; any Pillow mode either
becomes 8-bit grey or RGB or is refused, so hostile pixels (NaN, odd modes) never reach numpy.
"""

from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConvzooError

MAX_PIXELS = 40_000_000
# The photo formats only: Pillow's other parsers (EPS runs Ghostscript, PSD, FITS, ...) see no user bytes.
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "AVIF", "PPM", "TGA", "QOI")
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
    """Read only the header of bytes or a path: a lazy image whose size has been checked."""
    if isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageError("empty file (0 bytes)", name)
        stream = io.BytesIO(source)
    else:
        try:
            with open(source, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise ImageError("file not found", source) from None
        except OSError as exc:
            raise ImageError(f"cannot read: {exc.strerror or exc}", source) from None
        return open_image(data, str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.init()  # registers every plugin (once), so FORMATS can be matched to what this Pillow reads
            image = Image.open(stream, formats=[f for f in FORMATS if f in Image.OPEN])
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


def decode_image(image: Image.Image, name: str = "image") -> Image.Image:
    """Decode an opened image: EXIF orientation applied, then standard_mode (8-bit, <= MAX_SIDE)."""
    try:
        # JPEG can decode at 1/2..1/8 scale: a large photo never exists at full size.
        image.draft(None, (min(image.width, MAX_SIDE), min(image.height, MAX_SIDE)))
        image.load()
        image = ImageOps.exif_transpose(image)
    except MemoryError:
        raise
    except Exception as exc:  # as above: truncated data and broken EXIF fail in format-specific ways
        raise ImageError(f"corrupt or truncated image ({exc or type(exc).__name__})", name) from None
    return standard_mode(image, name)


def to_array(image: Image.Image, meta: dict) -> np.ndarray:
    """A decoded image -> float32 (1, C, size, size), normalised per the model's metadata."""
    spec = meta["input"]
    rule = meta.get("preprocess", "resize")
    image = flatten_alpha(standard_mode(image))  # a no-op for what load_image returns
    if spec["channels"] == 1:
        grey = np.asarray(image.convert("L"), dtype=np.float32)
        if rule == "digit":
            pixels = mnist_style(grey, box=20, by_mass=True)
        elif rule == "fashion":
            pixels = mnist_style(grey, box=28, by_mass=False)
        else:
            pixels = resize(grey, 28 if spec["fit"] == "pad" else spec["size"])
        pixels = pixels[None]
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32)
        side = spec["size"] if spec["fit"] != "pad" else 28
        pixels = np.stack([resize(rgb[..., c], side) for c in range(3)])
    return normalise(fit(pixels / 255.0, spec)[None], spec)


# Pillow modes -> the few that the rest reads; 16/32-bit integers go through "F" (float) to 8 bits.
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
    """16/32-bit integer or float pixels -> 8-bit grey: 8- and 16-bit ranges scale as such,
    anything else (floats, negative or wider integers) stretches from its minimum to its maximum."""
    a = np.asarray(image, dtype=np.float64)
    if not np.isfinite(a).all():
        raise ImageError("image holds NaN or infinite pixel values", name)
    low, high = float(a.min()), float(a.max())
    if integer and low >= 0 and high <= 65535:
        top = 65535.0 if high > 255 else 255.0
        a = a / top * 255
    else:
        a = (a - low) / max(high - low, 1e-12) * 255
    return Image.fromarray(a.clip(0, 255).round().astype(np.uint8))


def flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparency onto a background that contrasts with the opaque ink ('L' or 'RGB' out)."""
    if image.mode not in ("RGBA", "LA"):
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    if alpha.min() > 0.99:
        return rgba.convert("RGB" if image.mode == "RGBA" else "L")
    lum = np.asarray(rgba.convert("L"), dtype=np.float32)
    ink = float((lum * alpha).sum() / max(alpha.sum(), 1e-6))
    background = 255 if ink < 128 else 0
    if image.mode == "LA":
        return Image.fromarray((lum * alpha + background * (1 - alpha)).clip(0, 255).astype(np.uint8))
    colour = np.asarray(rgba.convert("RGB"), dtype=np.float32) * alpha[..., None] + background * (1 - alpha[..., None])
    return Image.fromarray(colour.clip(0, 255).astype(np.uint8))


def mnist_style(grey: np.ndarray, *, box: int, by_mass: bool) -> np.ndarray:
    """Light-on-dark, cropped to the ink, fitted in box x box, placed in 28x28 (by mass or centred)."""
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    background = float(np.median(border))
    if background > 127:  # dark ink on light paper: invert
        grey, background = 255 - grey, 255 - background
    ink = np.clip(grey - background, 0, None)
    if ink.max() <= 0:
        return np.zeros((28, 28), np.float32)
    ink = ink / ink.max() * 255
    strong = ink > 0.25 * 255
    rows, cols = np.flatnonzero(strong.any(1)), np.flatnonzero(strong.any(0))  # the bounding box, not every pixel
    crop = ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = crop.shape
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = np.asarray(Image.fromarray(crop.astype(np.float32)).resize((nw, nh), Image.Resampling.LANCZOS))
    small = np.clip(small, 0, 255)
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    if by_mass and small.sum() > 0:
        ys, xs = np.indices(small.shape)
        cy, cx = (ys * small).sum() / small.sum(), (xs * small).sum() / small.sum()
        top = int(np.clip(round(14 - cy), 0, 28 - nh))
        left = int(np.clip(round(14 - cx), 0, 28 - nw))
    canvas[top: top + nh, left: left + nw] = small
    return canvas


def resize(channel: np.ndarray, side: int) -> np.ndarray:
    if channel.shape == (side, side):
        return channel.astype(np.float32)
    return np.asarray(Image.fromarray(channel.astype(np.float32)).resize((side, side), Image.Resampling.BILINEAR,
                                                                             reducing_gap=2.0), dtype=np.float32)


def fit(x: np.ndarray, spec: dict) -> np.ndarray:
    """Pad a 28x28 digit to the model's 32x32 the way training did (zeros = black)."""
    size = spec["size"]
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if spec["fit"] == "pad" and h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        return np.pad(x, ((0, 0), (top, size - h - top), (left, size - w - left)))
    return np.stack([resize(c * 255, size) / 255 for c in x])


def from_dataset(images: np.ndarray, meta: dict) -> np.ndarray:
    """uint8 (N, C, H, W) images from the data set itself -> model input, exactly as in training."""
    spec = meta["input"]
    return normalise(np.stack([fit(im.astype(np.float32) / 255, spec) for im in images]), spec)


def normalise(x: np.ndarray, spec: dict) -> np.ndarray:
    """(N, C, H, W) in 0..1 -> float32 standardised with the model's per-channel mean and std."""
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)
