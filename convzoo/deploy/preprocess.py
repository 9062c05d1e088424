"""Users' images -> model input, with numpy and Pillow only (serving needs no torch).

Digit models see what MNIST was made of, fashion models what Fashion-MNIST was (data/photos.py:
the ink cropped, fitted and centred; dark ink on light paper inverted); any other model
gets the image resized to the side its data set's images had (CIFAR-10's 32, an image folder's
--image-size), exactly as an image folder is decoded, then fitted to the model's input as in
training. Files are decoded by data/images.py (errors name the file; any Pillow mode is handled).
Transparency is white for those other models, as their training images' was (images.to_pixels), and
for garments, as the product photos Fashion-MNIST was made from had (a cut-out garment is read as on
white); a digit's is its paper's brightness, or contrasts with strokes on a transparent canvas
(images.digit_background).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..data.catalog import image_side
from ..data.photos import as_mnist
from ..errors import first_line
# Re-exported: predict and serve decode users' files through this module.
from ..data.images import (ImageError, ImageTooLarge, NotAnImage, decode_image, load_image,  # noqa: F401
                           open_image, to_pixels)


def read_pixels(image: Image.Image, name: str) -> Image.Image:
    """A caller's PIL image with its pixels read now: Pillow reads a file's pixels lazily, so a closed
    or truncated image would fail later with Pillow's own bare AssertionError, ValueError or OSError."""
    try:
        image.load()
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - the types above, and whatever a format's decoder raises
        if isinstance(exc, AssertionError) or "closed" in str(exc):  # AssertionError: its file object is gone
            raise ImageError("the image is closed, or its file was closed before its pixels were read (use it "
                             "inside the `with Image.open(...)` block, or call .load() there)", name) from None
        raise ImageError(f"corrupt or truncated image ({first_line(exc)})", name) from None
    return image


def to_array(image: Image.Image, meta: dict) -> np.ndarray:
    """A decoded image -> float32 (1, C, size, size), normalised per the model's metadata."""
    spec = meta["input"]
    rule = meta.get("preprocess", "resize")
    if spec["channels"] == 1 and rule in ("digit", "fashion"):
        pixels = as_mnist(image, rule)[None] / 255.0
    else:
        if spec.get("crop"):  # a model made elsewhere (foreign.py): the centre square, as timm's crop_pct
            image = centre_square(image, spec["crop"])
        pixels = to_pixels(image, image_side(meta), spec["channels"], spec.get("interpolation", "bilinear"))
        pixels = pixels.astype(np.float32) / 255.0
    return normalise(fit(pixels, spec)[None], spec)


def centre_square(image: Image.Image, fraction: float) -> Image.Image:
    """The centre square of side `fraction` of the shorter side: resized to the input afterwards, as
    torchvision's Resize(size / fraction) then CenterCrop(size)."""
    w, h = image.size
    left, top, side = centre_box(w, h, fraction)
    return image.crop((left, top, left + side, top + side)) if (side, side) != (w, h) else image


def centre_box(width: int, height: int, fraction: float) -> tuple[int, int, int]:
    """(left, top, side) of the centre square of side `fraction` x the shorter side."""
    side = max(1, round(min(width, height) * fraction))
    return (width - side) // 2, (height - side) // 2, side


def resize(channel: np.ndarray, side: int, resample: str = "bilinear") -> np.ndarray:
    if channel.shape == (side, side):
        return channel.astype(np.float32)
    return np.asarray(Image.fromarray(channel.astype(np.float32)).resize(
        (side, side), Image.Resampling[resample.upper()], reducing_gap=2.0), dtype=np.float32)


def fit(x: np.ndarray, spec: dict) -> np.ndarray:
    """Pad a 28x28 digit to the model's 32x32 the way training did (zeros = black)."""
    size = spec["size"]
    h, w = x.shape[-2:]
    if (h, w) == (size, size):
        return x
    if spec["fit"] == "pad" and h <= size and w <= size:
        top, left = (size - h) // 2, (size - w) // 2
        canvas = np.zeros(x.shape[:-2] + (size, size), x.dtype)  # np.pad's result, at a tenth of its cost
        canvas[..., top: top + h, left: left + w] = x
        return canvas
    return np.stack([resize(c * 255, size, spec.get("interpolation", "bilinear")) / 255 for c in x])


def from_dataset(images: np.ndarray, meta: dict) -> np.ndarray:
    """uint8 (N, C, H, W) images from the data set itself -> model input, exactly as in training."""
    spec = meta["input"]
    crop = spec.get("crop", 1)  # a model made elsewhere (foreign.py): the centre square as for users' photos
    if crop < 1:
        left, top, side = centre_box(images.shape[-1], images.shape[-2], crop)
        images = images[..., top: top + side, left: left + side]
    return normalise(np.stack([fit(im.astype(np.float32) / 255, spec) for im in images]), spec)


def normalise(x: np.ndarray, spec: dict) -> np.ndarray:
    """(N, C, H, W) in 0..1 -> float32 standardised with the model's per-channel mean and std."""
    mean = np.asarray(spec["mean"], np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(spec["std"], np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)
