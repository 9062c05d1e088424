"""Users' digit and garment photos made as MNIST's and Fashion-MNIST's images were, with numpy and
Pillow only (serving needs no torch): light ink on black, the ink cropped, fitted in a 20x20 box and
centred by its centre of mass in 28x28 (a garment fitted in 28x28). A photo or scan of dark ink on light
paper is detected (its ink darker than its paper, however dim the light) and inverted. deploy/preprocess.py
runs it for predict and serve; data/tensors.py for an image folder scored by a digit or garment model.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter

from .images import PAPER_AND_INK, TRANSPARENT, flatten_alpha, standard_mode


def as_mnist(image: Image.Image, rule: str) -> np.ndarray:
    """A digit ('digit') or garment ('fashion') photo -> float32 28x28 in 0..255, made as MNIST's and
    Fashion-MNIST's images were (mnist_style)."""
    digit = rule == "digit"  # a digit's ink carries no shading; a garment's does, so its light is left as is
    image = standard_mode(image)
    # A light garment cut out of its photo (a white T-shirt, with a logo or folds or none): on white, its
    # product photos' background, only the transparency held its shape; it read as a blank image, or its
    # logo as the garment. Its silhouette on black is read then; a garment that shows on white reads as on
    # white, its shading kept.
    background = None if digit else 0.0 if little_shows_on_white(image) else TRANSPARENT
    grey = np.asarray(flatten_alpha(image, background).convert("L"), dtype=np.float32)
    return mnist_style(grey, box=20 if digit else 28, by_mass=digit, even_light=digit, frames=digit)


def little_shows_on_white(image: Image.Image) -> bool:
    """Whether an image with transparency shows on white only in a small part of its opaque region: its
    pixels darker than white by PAPER_AND_INK span under half of the opaque pixels' box (none at all: a
    white garment; a logo or a print on one)."""
    if image.mode not in ("RGBA", "LA"):
        return False
    alpha = np.asarray(image.getchannel("A")) > 127
    if alpha.all() or not alpha.any():
        return False
    dark = alpha & (np.asarray(image.convert("L")) < 255 - PAPER_AND_INK)
    return not dark.any() or box_area(dark) < 0.5 * box_area(alpha)


def box_area(mask: np.ndarray) -> int:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    return int((rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1))


def as_mnist_uint8(image: Image.Image, rule: str) -> np.ndarray:
    """as_mnist as a uint8 (1, 28, 28) data-set image (an image folder scored by a digit model)."""
    return np.clip(np.rint(as_mnist(image, rule)), 0, 255).astype(np.uint8)[None]


def mnist_style(grey: np.ndarray, *, box: int, by_mass: bool, even_light: bool = False,
                frames: bool = False) -> np.ndarray:
    """Light-on-dark, cropped to the ink, fitted in box x box, placed in 28x28 (by mass or centred);
    with even_light, a photo of paper has its lighting evened out first (even_lighting); with frames, a
    frame round it is cut off (without_frame: digits only, as a garment filling the image has edges
    of the background's brightness that are no frame: Fashion's test images lost 0.3 points).
    (np.maximum/np.minimum, not np.clip: the same values, a fraction of the call cost, which is
    most of a served request's CPU for a 28x28 digit.)"""
    if grey.shape == (28, 28) and made_as_the_data_set(grey, box, by_mass):
        return grey.astype(np.float32)  # what --from-test and training see, to the pixel
    sheet = None
    if even_light:
        grey, sheet = on_desk(grey)
    if sheet is not None:  # paper on a desk: its light evened out (dark ink on white, what even_lighting returns)
        grey, background, faintest = even_lighting(grey, sheet), 255.0, FAINTEST_PHOTO_INK
        dark_ink, light_ink = True, False
    else:
        background = edge_brightness(grey)
        framed = without_frame(grey) if frames else grey
        if framed is not grey:
            grey, background = framed, edge_brightness(framed)
        # A photo or scan of paper, told by its edges or by all of it (a vignette darkens every edge, a
        # shadow half of it).
        dark_ink = darker_ink(grey, background)
        sample = grey[::4, ::4].ravel()
        bulk = float(np.partition(sample, len(sample) // 2)[len(sample) // 2])  # the median; np.median costs 4x
        # Marks brighter than the image's bulk: light ink, whatever the background's brightness (chalk on
        # a grey board, a white digit on mid-grey: read as dark-on-paper, they were all blank).
        light_ink = float(grey.max()) - bulk > bulk - float(grey.min())
        if light_ink and even_light and max(grey.shape) > EVEN_LIGHTING_ABOVE and marks_are_dark(grey):
            # Dark ink on paper that a shadow covers most of: its lit part was "light ink"
            light_ink, dark_ink = False, True
        paper = max(grey.shape) > EVEN_LIGHTING_ABOVE and (dark_ink or not light_ink and max(background, bulk) > 127)
        faintest = FAINTEST_INK
        if paper and even_light:
            grey, background, faintest, dark_ink = even_lighting(grey), 255.0, FAINTEST_PHOTO_INK, True
        elif paper and not has_ink(255 - even_lighting(grey, local=False), 0.0, FAINTEST_PHOTO_INK):
            # An empty page under uneven light: a garment's shading is kept as it is, so only this test
            # evens the light (read as it is, the light's gradient was a confident T-shirt).
            return np.zeros((28, 28), np.float32)
    if dark_ink or background > 127 and not light_ink:  # dark ink on lighter paper: invert
        grey, background = 255 - grey, 255 - background
    if not has_ink(grey, background, faintest):
        return np.zeros((28, 28), np.float32)
    ink = np.maximum(grey - background, 0)
    peak = ink.max()
    ink = ink / peak * 255
    strong = ink > 0.25 * 255
    rows, cols = bounding_rows_cols(strong)
    crop = ink[rows[0]: rows[-1] + 1, cols[0]: cols[-1] + 1]
    h, w = crop.shape
    if max(h, w) <= 2 or max(h, w) < max(grey.shape) / 50:  # one pixel, a speck of dust: no digit to read
        return np.zeros((28, 28), np.float32)
    scale = box / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    if (nh, nw) == (h, w):  # already fits (every MNIST digit does): Pillow's resize would return a copy
        small = crop
    else:
        small = np.asarray(Image.fromarray(crop.astype(np.float32)).resize((nw, nh), Image.Resampling.LANCZOS))
        small = np.minimum(np.maximum(small, 0), 255)
    canvas = np.zeros((28, 28), np.float32)
    top, left = (28 - nh) // 2, (28 - nw) // 2
    total = small.sum()
    if by_mass and total > 0:  # row and column sums in float64, as the weighted sums over np.indices were
        cy = small.sum(1, dtype=np.float64) @ np.arange(nh) / total
        cx = small.sum(0, dtype=np.float64) @ np.arange(nw) / total
        top = min(max(round(14 - cy), 0), 28 - nh)
        left = min(max(round(14 - cx), 0), 28 - nw)
    canvas[top: top + nh, left: left + nw] = small
    return canvas


def made_as_the_data_set(grey: np.ndarray, box: int, by_mass: bool) -> bool:
    """Whether a 28x28 image is already what the recipe below makes, as MNIST and Fashion-MNIST made
    theirs (a test image saved as PNG): light on black, the ink's box `box` px on its longer side, and
    centred as the data set centres it (digits: centre of mass within half a pixel of the middle; a
    garment's box by (28 - n) // 2, rounded either way). Re-made, such images lost their faint edges to
    the crop and moved a pixel: 29 of 1,000 Fashion test PNGs changed class, 932 -> 917 right."""
    if edge_brightness(grey) or grey.max() < 254:  # every test image of both sets peaks at 254-255
        return False
    rows, cols = bounding_rows_cols(grey)
    h, w = rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1
    if by_mass:
        total = float(grey.sum(dtype=np.float64))
        cy = grey.sum(1, dtype=np.float64) @ np.arange(28) / total
        cx = grey.sum(0, dtype=np.float64) @ np.arange(28) / total
        return max(h, w) == box and abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    return (max(h, w) in (box - 1, box) and rows[0] in ((28 - h) // 2, (29 - h) // 2)
            and cols[0] in ((28 - w) // 2, (29 - w) // 2))


def darker_ink(grey: np.ndarray, background: float) -> bool:
    """Whether the marks go further below the background than above it: dark ink on paper, also where the
    paper itself is darker than mid-grey (a dim photo, a scan of grey card), which brightness alone read
    as light-on-dark with no ink at all ('blank')."""
    return background - float(grey.min()) > float(grey.max()) - background


def has_ink(grey: np.ndarray, background: float, faintest: float) -> bool:
    """Whether light-on-dark pixels hold anything brighter than their background: not when blank, when
    nothing is `faintest` grey levels above it, or only noise (a JPEG's or a sensor's on a blank page),
    which scaled up would be read as ink."""
    peak = float(np.max(grey)) - background
    return not (peak < faintest or (peak < 64 and peak < 6 * noise_level(grey)))


def noise_level(grey: np.ndarray) -> float:
    """The pixels' noise (a robust standard deviation: 1.4826 x the median absolute deviation), on a
    copy at most ~64 px wide."""
    step = max(1, max(grey.shape) // 64)
    sample = grey[::step, ::step]
    return 1.4826 * float(np.median(np.abs(sample - np.median(sample))))


def edge_brightness(grey: np.ndarray) -> float:
    border = np.sort(np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]]))
    half = len(border) // 2  # the median (np.median's value; its call costs as much as the rest together)
    return float(border[half] if len(border) % 2 else (border[half - 1] + border[half]) / 2)


def without_frame(grey: np.ndarray) -> np.ndarray:
    """The image inside a frame: lines nearly all of the other brightness than the image's bulk within
    1/20 of the side from an edge, such as a drawing program's canvas edge round a
    white-on-black digit, a scanner's dark edge round paper, or a frame drawn a few pixels in. Each side
    is cut past its innermost such line when its outermost line is one (an edge on any number of sides)
    or when every side has one (a frame with a margin outside it). A single line in one side's band,
    such as a 7's bar, is left alone. Read as ink or background, a frame had inverted or shrunk the
    digit. Returns `grey` itself when there is no frame."""
    h, w = grey.shape
    limit = min(h, w) // 20
    if not limit:
        return grey
    step = max(1, max(h, w) // 64)
    bulk = grey[::step, ::step]
    light = np.count_nonzero(bulk > 127) * 2 > bulk.size  # the median's side of 127, without its sort

    def lines(band, axis) -> np.ndarray:  # positions, from the edge inwards, of the band's frame lines
        return np.flatnonzero(np.count_nonzero((band > 127) != light, axis=axis) > 0.9 * band.shape[axis])

    sides = [lines(grey[:limit], 1), lines(grey[::-1][:limit], 1), lines(grey[:, :limit], 0),
             lines(grey[:, ::-1][:, :limit], 0)]  # top, bottom, left, right
    everywhere = all(len(found) for found in sides)
    cut = [found[-1] + 1 if len(found) and (everywhere or found[0] == 0) else 0 for found in sides]
    def resumes(side: int, depth: int) -> bool:  # the bulk's brightness on most of the line `depth` in
        line = (grey[min(depth, h - 1)], grey[max(h - 1 - depth, 0)], grey[:, min(depth, w - 1)],
                grey[:, max(w - 1 - depth, 0)])[side]
        return np.count_nonzero((line > 127) != light) <= 0.5 * line.size

    # A frame ends: just past it, or a band further in (a scanner's edge a degree askew), the image's
    # bulk brightness resumes. Where it does not, the band is the dark side of a lighting gradient or of
    # a shadow over the paper, not a frame.
    cut = [c if not c or resumes(side, c) or resumes(side, c + limit) else 0 for side, c in enumerate(cut)]
    if not any(cut):
        return grey
    return grey[cut[0]: h - cut[1], cut[2]: w - cut[3]]


DESK_FIT_SIDE = 128  # px: the sheet is found on a copy at most this wide
DESK_STEP = 25  # grey levels across the sheet's edge (3 px of the copy): a desk's edge is a step, a shadow's a ramp


def on_desk(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """A photo of a sheet of paper lying on a darker surface (a desk, a table, a scanner's open lid), the
    sheet any shape a rectangle takes in a photo: (the image cropped to the sheet, a mask of the sheet's
    pixels), so the surface is neither ink nor the paper's light; (grey, None) where there is no such
    sheet. Read whole, a desk round the page was ink: 3-11 of 40 real test digits read right with 8-25%
    of the side on each edge or the sheet askew (tests/test_photos.py). The sheet is the light side of
    Otsu's threshold, filled between its first and last pixel along each row and each column (the ink
    inside it), and must be most of its own outline, a fifth of the image and over a third of each side,
    with only the surface outside it: a light digit drawn on a dark canvas is none of these."""
    h, w = grey.shape
    if max(h, w) <= EVEN_LIGHTING_ABOVE:
        return grey, None
    step = max(1, max(h, w) // DESK_FIT_SIDE)
    small = np.asarray(Image.fromarray(grey).resize((max(1, w // step), max(1, h // step)), Image.Resampling.BOX))
    light = small > otsu(small)
    if not light.any() or light.all():
        return grey, None
    along = np.maximum.accumulate(light, 1) & np.maximum.accumulate(light[:, ::-1], 1)[:, ::-1]
    down = np.maximum.accumulate(light, 0) & np.maximum.accumulate(light[::-1], 0)[::-1]
    sheet = along & down
    rows, cols = bounding_rows_cols(sheet)
    sh, sw = small.shape
    if (sheet.mean() > 0.97 or sheet.mean() < 0.2 or len(rows) < sh / 3 or len(cols) < sw / 3
            or light[sheet].mean() < 0.8 or light[~sheet].mean() > 0.05 or edge_step(small, sheet) < DESK_STEP):
        return grey, None
    # A sheet is a quadrilateral, unless the photo cuts it off: a bold light digit's filled outline is no
    # rectangle (0.88 at most of the rectangle round it, over 600 bold test digits; sheets 0.97-1.0, 0.84 cut off)
    touches = sum(map(np.any, (sheet[0], sheet[-1], sheet[:, 0], sheet[:, -1])))
    if rectangularity(sheet) < (0.8 if touches >= 2 else 0.92):
        return grey, None
    # Ink running off the sheet's edge: the darker "surface" is the same paper in a hard shadow (its edge
    # across the digit), not a desk, which no digit on the sheet reaches.
    band = shrunk(sheet, 2) & ~shrunk(sheet, 4)
    band[:4], band[-4:], band[:, :4], band[:, -4:] = False, False, False, False  # the photo's own edges
    if band.any() and (~light[band]).mean() > 0.02:
        return grey, None
    sheet = shrunk(sheet, 2)  # the sheet's blurred edge is neither paper nor surface
    full = resized_mask(sheet, (w, h))
    rows, cols = bounding_rows_cols(full)
    if not len(rows):
        return grey, None
    crop = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    return grey[crop], full[crop]


def bounding_rows_cols(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows and the columns holding any of the mask (their first and last: its bounding box)."""
    return np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))


def resized_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask at (width, height), each pixel its nearest one's."""
    return np.asarray(Image.fromarray(mask.view(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0


def rectangularity(mask: np.ndarray) -> float:
    """The mask's share of the smallest rectangle round it, at any angle (in steps of 3 degrees)."""
    y, x = np.nonzero(mask)
    smallest = min((np.ptp(x * c + y * s) + 1) * (np.ptp(y * c - x * s) + 1)
                   for c, s in zip(*(f(np.deg2rad(np.arange(0, 90, 3))) for f in (np.cos, np.sin))))
    return float(len(x) / smallest)


def otsu(pixels: np.ndarray) -> float:
    """Otsu's threshold between two classes of grey levels (the one that most separates their means)."""
    hist = np.bincount(np.minimum(np.maximum(pixels, 0), 255).astype(np.uint8).ravel(), minlength=256)
    p = hist / hist.sum()
    below, mass = np.cumsum(p), np.cumsum(p * np.arange(256))
    return float(np.argmax((mass[-1] * below - mass) ** 2 / np.maximum(below * (1 - below), 1e-12)))


def edge_step(small: np.ndarray, sheet: np.ndarray, reach: int = 3) -> float:
    """The median drop in brightness from the mask's edge to `reach` pixels outside it, along rows and
    columns: tens of grey levels at a sheet's edge on a desk, a few across a shadow's gradual edge."""
    drops = []
    for image, mask in ((small, sheet), (small.T, sheet.T)):
        for img, m in ((image, mask), (image[:, ::-1], mask[:, ::-1])):
            edge = m[:, :-reach] & ~m[:, reach:]  # inside, and outside `reach` pixels on
            drops.append((img[:, :-reach] - img[:, reach:])[edge])
    drops = np.concatenate(drops)
    return float(np.median(drops)) if drops.size else 0.0


def shrunk(mask: np.ndarray, by: int) -> np.ndarray:
    """The mask less `by` pixels along its edge (and the image's)."""
    out = mask.copy()
    for _ in range(by):
        out[1:] &= out[:-1].copy()
        out[:-1] &= out[1:].copy()
        out[:, 1:] &= out[:, :-1].copy()
        out[:, :-1] &= out[:, 1:].copy()
    out[:by], out[-by:], out[:, :by], out[:, -by:] = False, False, False, False
    return out


FAINTEST_INK = 8  # grey levels from the background: below, an image holds no ink and is read as blank
# The same for a photo of paper with its light evened out: its grain leaves specks of up to ~10 levels
# (a sensor's noise blurred into blobs), while ink, even pencil, is tens of levels darker.
FAINTEST_PHOTO_INK = 16
EVEN_LIGHTING_ABOVE = 64  # px: a larger image of paper is a photo or scan, whose lighting may be uneven
LIGHTING_FIT_SIDE = 64  # px: the desk's stand-in (below) varies slowly, so it is fitted on a copy this wide
LIGHTING_DEGREE = 3  # of that polynomial surface in x and y
PAPER_LIGHT_SIDE = 160  # px: the paper's light is read on a copy at most this wide (a hard shadow's edge kept)


def even_lighting(grey: np.ndarray, sheet: np.ndarray | None = None, *, local: bool = True) -> np.ndarray:
    """Dark ink on unevenly lit paper (a phone photo: vignetting, a hand's shadow) -> the same ink on
    evenly white paper. Each pixel becomes its share of the light its patch of paper got, so a stroke in
    shadow is as dark as one in light and the shadow itself is not ink (with one global background, 17
    of 30 such photos of real test digits were misread, mostly as 6: the shadow's edge joined the digit).
    `sheet` (on_desk's mask): the paper's pixels; the rest, taken to be lit paper (filled with a smooth
    surface fitted to the sheet, so no edge is drawn from it), becomes white. `local`: the light read near
    each pixel (paper_light: a hard shadow's edge kept; marks must be thinner than a quarter of the side, as
    a digit's strokes are); else a smooth surface fitted to all of it (paper_brightness: for a garment,
    which may fill most of the image)."""
    if sheet is not None:
        grey = np.where(sheet, grey, paper_brightness(grey, sheet))
    smooth = Image.fromarray(np.minimum(np.maximum(grey, 0), 255).astype(np.uint8))
    smooth = np.asarray(smooth.filter(ImageFilter.BoxBlur(max(1, max(grey.shape) // 200))), np.float32)  # sensor noise
    paper = paper_light(smooth) if local else paper_brightness(smooth, sheet)
    dark = (paper - smooth) / np.maximum(paper, 1)
    if sheet is not None:
        dark[~sheet] = 0
    # What is left of the paper's grain is not ink; kept signed, so has_ink can still measure the noise
    # (clipped at the paper, a sensor's speckle on an empty sheet read as faint ink: not blank).
    dark = dark - np.median(dark[::4, ::4])
    margin = max(1, max(grey.shape) // 100)  # the fit is worst at the edges (a shadow's steepest part is there)
    dark[:margin], dark[-margin:], dark[:, :margin], dark[:, -margin:] = 0, 0, 0, 0
    return 255 - 255 * dark


def paper_light(grey: np.ndarray) -> np.ndarray:
    """The light on the paper under each pixel of dark ink on paper: a grey-level closing (each pixel the
    brightest value near it, then the darkest such value near it) with a window a quarter of the image's
    side, wider than any stroke. The ink is gone, while the light's edges stay where they are, a hard
    shadow's included (the smooth surface this replaced bent across a shadow's edge: half the paper at half
    the light, the edge across the digit, read 2-5 of 20 real test digits)."""
    small = light_copy(grey)
    light = grey_closing(small, max(3, max(small.shape) // 4) | 1)
    return np.asarray(Image.fromarray(light).resize(grey.shape[::-1], Image.Resampling.BILINEAR), np.float32)


def light_copy(grey: np.ndarray) -> np.ndarray:
    """`grey` averaged down to at most PAPER_LIGHT_SIDE wide (float32)."""
    h, w = grey.shape
    scale = min(1.0, PAPER_LIGHT_SIDE / max(h, w))
    size = max(1, round(w * scale)), max(1, round(h * scale))
    return np.asarray(Image.fromarray(grey.astype(np.float32)).resize(size, Image.Resampling.BOX), np.float32)


def grey_closing(a: np.ndarray, k: int) -> np.ndarray:
    """Each pixel the brightest value in the k x k window round it, then the darkest of those: dark marks
    narrower than k are filled in, and any region holding k x k squares keeps its edges. Windows are
    centred beyond the image too, each holding only the image's part: a shadow meeting the border in a
    narrow wedge is kept (with windows centred inside only, it read as ink)."""
    half = k // 2
    padded = np.pad(a, half, constant_values=-np.inf)
    return window_extreme(window_extreme(padded, k, np.maximum, -np.inf), k, np.minimum, np.inf)[half:-half, half:-half]


def marks_are_dark(grey: np.ndarray) -> bool:
    """Whether an image's thin marks (narrower than a quarter of its side) are darker than what is round
    them rather than lighter: what a closing fills in outweighs, twice over, what an opening cuts off (the
    99th percentile of each). Unlike the brightest and darkest values, a lit patch of paper is no mark."""
    small = light_copy(grey)
    k = max(3, max(small.shape) // 8) | 1
    dark = np.percentile(grey_closing(small, k) - small, (95, 99))
    light = np.percentile(small + grey_closing(-small, k), (95, 99))  # the opening, as the closing of the negative
    return bool(np.any(dark > 2 * light))


def window_extreme(a: np.ndarray, k: int, extreme: np.ufunc, fill: float) -> np.ndarray:
    """The max (or min) over the k x k window centred on each pixel (cells outside `a` = fill), by van Herk's
    running extremes within blocks of k: a few array passes whatever k is (sliding windows cost k times more)."""
    for axis in (0, 1):
        a = np.moveaxis(a, axis, -1)
        n = a.shape[-1]
        blocks = -(-(n + k - 1) // k) + 1
        padded = np.full(a.shape[:-1] + (blocks * k,), fill, np.float32)
        padded[..., k // 2: k // 2 + n] = a
        cells = padded.reshape(a.shape[:-1] + (blocks, k))
        ahead = extreme.accumulate(cells, axis=-1).reshape(padded.shape)  # from each block's start
        behind = extreme.accumulate(cells[..., ::-1], axis=-1)[..., ::-1].reshape(padded.shape)  # to its end
        a = np.moveaxis(extreme(behind[..., :n], ahead[..., k - 1: k - 1 + n]), -1, axis)
    return a


def paper_brightness(grey: np.ndarray, sheet: np.ndarray | None = None) -> np.ndarray:
    """The paper's brightness under each pixel: a smooth surface (a polynomial in x and y) fitted to the
    image (to the `sheet` mask's pixels where given), refitted to the pixels not much darker than the last
    fit until the ink no longer pulls it."""
    h, w = grey.shape
    scale = min(1.0, LIGHTING_FIT_SIDE / max(h, w))
    sw, sh = max(1, round(w * scale)), max(1, round(h * scale))
    small = np.asarray(Image.fromarray(grey).resize((sw, sh), Image.Resampling.BOX), np.float64).ravel()
    y, x = (a.ravel() for a in np.meshgrid(np.linspace(-1, 1, sh), np.linspace(-1, 1, sw), indexing="ij"))
    terms = np.stack([x**i * y**j for i in range(LIGHTING_DEGREE + 1) for j in range(LIGHTING_DEGREE + 1 - i)], 1)
    on_sheet = np.ones(len(small), bool) if sheet is None else resized_mask(sheet, (sw, sh)).ravel()
    paper = on_sheet
    for _ in range(4):
        coef = np.linalg.lstsq(terms[paper], small[paper], rcond=None)[0]
        residual = small - terms @ coef
        paper = on_sheet & (residual > -2 * max(float(np.std(residual[paper])), 1.0))  # ink: well below the fit
    surface = (terms @ coef).reshape(sh, sw).astype(np.float32)
    return np.asarray(Image.fromarray(surface).resize((w, h), Image.Resampling.BILINEAR), np.float32)
