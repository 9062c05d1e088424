"""Users' images -> model input, with numpy and Pillow only (serving needs no torch).

Digit models see what MNIST was made of: light ink on black, the ink cropped, fitted in a 20x20
box and centred by its centre of mass in 28x28. A photo or scan of dark ink on light paper is
detected (bright border) and inverted. Fashion models get the item fitted in 28x28; CIFAR models a
32x32 resize. Every decoding failure is an ImageError naming the file.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps

from ..errors import ConvzooError

MAX_PIXELS = 40_000_000


class ImageError(ConvzooError):
    """A file or upload that is not a usable image."""


def load_image(source, name: str = "image") -> Image.Image:
    """Open bytes or a path; refuse empty, non-image, corrupt and > 40 MP images (before decoding)."""
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
        return load_image(data, str(source))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
            width, height = image.size
            if width * height > MAX_PIXELS:
                raise ImageError(f"image is {width}x{height} = {width * height / 1e6:.0f} megapixels; the limit is "
                                 f"{MAX_PIXELS / 1e6:.0f}", name)
            image.load()
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"image exceeds the {MAX_PIXELS / 1e6:.0f}-megapixel limit", name) from None
    except Image.UnidentifiedImageError:
        raise ImageError("not an image (unrecognised format)", name) from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"corrupt or truncated image ({exc})", name) from None
    return ImageOps.exif_transpose(image)


def to_array(image: Image.Image, meta: dict) -> np.ndarray:
    """A decoded image -> float32 (1, C, size, size), normalised per the model's metadata."""
    spec = meta["input"]
    rule = meta.get("preprocess", "resize")
    if spec["channels"] == 1:
        grey = to_grey(image)
        if rule == "digit":
            pixels = mnist_style(grey, box=20, by_mass=True)
        elif rule == "fashion":
            pixels = mnist_style(grey, box=28, by_mass=False)
        else:
            pixels = resize(grey, 28 if spec["fit"] == "pad" else spec["size"])
        pixels = pixels[None]
    else:
        rgb = np.asarray(flatten_alpha(image).convert("RGB"), dtype=np.float32)
        side = spec["size"] if spec["fit"] != "pad" else 28
        pixels = np.stack([resize(rgb[..., c], side) for c in range(3)])
    return normalise(fit(pixels / 255.0, spec)[None], spec)


def to_grey(image: Image.Image) -> np.ndarray:
    """Luminance 0..255 as float32 from any mode: 16-bit, palette, alpha, CMYK, ..."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(image, dtype=np.float64)
        top = 65535.0 if a.max() > 255 else 255.0
        return (a / top * 255).astype(np.float32)
    if image.mode == "F":
        a = np.asarray(image, dtype=np.float32)
        return (a - a.min()) / max(float(a.max() - a.min()), 1e-6) * 255
    return np.asarray(flatten_alpha(image).convert("L"), dtype=np.float32)


def flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparency onto a background that contrasts with the opaque ink."""
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode not in ("RGBA", "LA", "PA"):
        return image
    rgba = image.convert("RGBA")
    alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255
    if alpha.min() > 0.99:
        return rgba.convert("RGB")
    lum = np.asarray(rgba.convert("L"), dtype=np.float32)
    ink = float((lum * alpha).sum() / max(alpha.sum(), 1e-6))
    background = 255 if ink < 128 else 0
    out = lum * alpha + background * (1 - alpha)
    colour = np.asarray(rgba.convert("RGB"), dtype=np.float32) * alpha[..., None] + background * (1 - alpha[..., None])
    return Image.fromarray(colour.clip(0, 255).astype(np.uint8)) if image.mode != "LA" else \
        Image.fromarray(out.clip(0, 255).astype(np.uint8))


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
    rows, cols = np.nonzero(ink > 0.25 * 255)
    crop = ink[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1]
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
