"""Pictures of a run with matplotlib's Agg backend (no display): curves, confusion matrix, 5x5 grid."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Each plot carries a PNG text chunk naming its kind, so a later write can tell an earlier output of
# the same kind (safe to replace) from anything else (the run's curves.png, a user's photo).
KIND_KEY = "convzoo-plot"


def _pyplot():
    import warnings

    import matplotlib

    # A class name in a script the font lacks (CJK) is drawn as boxes; matplotlib's warning about it
    # (two lines with a source line, per glyph) told the user nothing they could act on.
    warnings.filterwarnings("ignore", message="Glyph .* missing from", category=UserWarning)
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_curves(runs: dict[str, list[dict]] | list[dict], out: Path) -> Path:
    """Loss and accuracy per epoch (lr on a second axis); several runs are overlaid."""
    plt = _pyplot()
    runs = {"": runs} if isinstance(runs, list) else runs
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    for label, history in runs.items():
        epochs = [int(h["epoch"]) for h in history]
        prefix = f"{label} " if label else ""
        ax_loss.plot(epochs, [h["train_loss"] for h in history], marker="o", label=f"{prefix}train loss")
        ax_acc.plot(epochs, [h["train_acc"] for h in history], marker="o", label=f"{prefix}train")
        for key, name in (("val_acc", "val"), ("test_acc", "test")):
            values = [h.get(key) for h in history]
            if any(v is not None for v in values):
                ax_acc.plot(epochs, values, marker="s", label=f"{prefix}{name}")
    if len(runs) == 1:
        history = next(iter(runs.values()))
        ax_lr = ax_loss.twinx()
        ax_lr.plot([int(h["epoch"]) for h in history], [h["lr"] for h in history], color="grey", linestyle="--",
                   label="lr (end of epoch)")
        ax_lr.set_ylabel("learning rate")
        ax_lr.legend(loc="center right", fontsize=8)
    ax_loss.set(title="Training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper right" if ax is ax_loss else "lower right")
    fig.tight_layout()
    return _save(fig, out, "curves")


MAX_CONFUSION_INCHES = 20
NO_IMAGES_GREY = "#d9d9d9"
MAX_CONFUSION_LABELS = 28  # classes named along an axis of the largest figure (0.7 inch each)


def plot_confusion(confusion, classes, out) -> Path:
    """Row-normalised confusion matrix with class names; cells show the fraction of each true class."""
    plt = _pyplot()
    matrix = np.asarray(confusion, dtype=np.float64)
    normalised = matrix / np.clip(matrix.sum(1, keepdims=True), 1, None)
    empty = np.flatnonzero(matrix.sum(1) == 0)  # a class with no test images: grey, not a row of zeros
    normalised[empty] = np.nan
    cmap = plt.get_cmap("Blues").with_extremes(bad=NO_IMAGES_GREY)
    k = len(classes)
    # 0.7 inch a class up to a 20-inch figure: one sized by the class count alone took 7.7 GB and a
    # 200-megapixel PNG for 200 classes, and failed for 1,000 (a 30 GiB canvas).
    side = min(0.7 * k, MAX_CONFUSION_INCHES)
    fig, ax = plt.subplots(figsize=(max(6, side + 2), max(5, side + 1.5)), dpi=100)
    image = ax.imshow(normalised, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    step = math.ceil(k / MAX_CONFUSION_LABELS)  # every class named while names fit, then every step-th
    ax.set_xticks(range(0, k, step), labels=classes[::step], rotation=45 if step == 1 else 90,
                  ha="right" if step == 1 else "center", fontsize=None if step == 1 else 6)
    ax.set_yticks(range(0, k, step), labels=classes[::step], fontsize=None if step == 1 else 6)
    ax.set(xlabel="predicted", ylabel="true", title=f"Confusion matrix (accuracy {np.trace(matrix) / matrix.sum():.4f})")
    if k <= MAX_CONFUSION_LABELS:  # the fractions only where a cell is wide enough to hold them
        for i, j in zip(*np.nonzero(normalised >= 0.005)):
            ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if normalised[i, j] > 0.5 else "black")
        for i in empty:
            ax.text((k - 1) / 2, i, "no test images", ha="center", va="center", fontsize=7, color="dimgrey")
    fig.tight_layout()
    return _save(fig, out, "confusion")


def plot_grid(images: np.ndarray, true: list[str], predicted: list[str], out, title: str = "") -> Path:
    """The seeds' 5x5 grid: each image with its true and predicted label, wrong ones in red; fewer
    images get a smaller grid (9: 3x3), not a mostly empty 5x5 one."""
    plt = _pyplot()
    n = min(25, len(images))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(max(3.2, 1.6 * cols), 1.6 * rows + 1), dpi=100, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = np.asarray(images[i])
        ax.imshow(img.transpose(1, 2, 0) if img.shape[0] == 3 else img[0], cmap=None if img.shape[0] == 3 else "gray")
        wrong = true[i] != predicted[i]
        ax.set_title(f"true {true[i]}\npred {predicted[i]}", fontsize=9, color="red" if wrong else "black",
                     fontweight="bold" if wrong else "normal")
    wrong = sum(t != p for t, p in zip(true[:n], predicted[:n]))
    fig.suptitle(title or f"{n} test images, {wrong} wrong (red)", fontsize=12)
    fig.tight_layout()
    return _save(fig, out, "grid")


def plot_kind(path) -> str | None:
    """The kind a convzoo plot records in its PNG text chunks ('confusion', 'grid', 'curves'); '' for
    a PNG without that record; None for a file that is not a PNG (or cannot be read). Pillow reads the
    chunks before the image data only."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return str(image.info.get(KIND_KEY, "")) if image.format == "PNG" else None
    except Image.DecompressionBombError:  # a huge PNG: not one of convzoo's plots
        return ""
    except Exception:  # noqa: BLE001 - Pillow raises many types for a file that is not an image
        return None


def check_plot_target(path, kind: str, *, default: str, inputs=(), protected=()) -> Path:
    """An output path for a `kind` plot, refused (one WriteError line) before any work when it is one
    of `inputs`, lies inside a `protected` folder (the model's data set: a PNG there becomes a
    training or test image), or is an existing file other than an earlier `kind` plot of convzoo's. A
    PNG without convzoo's record (written before it existed) is replaced only under its `default` name
    in a run folder."""
    from ..atomic import check_target, check_writable_folder
    from ..data.formats import within_data_set
    from ..errors import WriteError

    path = check_target(path, inputs=inputs, suffixes=(".png",))
    check_writable_folder(path)
    for folder in protected:
        if folder and Path(folder).is_dir() and within_data_set(path, folder):
            raise WriteError(f"is inside the model's data set folder {folder}: a PNG there would become one of its "
                             "images; choose a path outside it", path)
    if path.exists():
        found = plot_kind(path)
        if found is None:
            raise WriteError(f"exists and is not a PNG image (not an earlier {kind} plot); choose another path", path)
        # An unmarked PNG under the default name is an older convzoo's plot only inside a run folder;
        # elsewhere (beside a model file from anywhere) it may be a user's own confusion.png.
        older = found == "" and path.name == default and is_run_folder(path.parent)
        if found != kind and not older:
            what = f"convzoo's {found} plot" if found else "a PNG convzoo did not write"
            raise WriteError(f"exists and is {what}, not an earlier {kind} plot: writing it would destroy that; "
                             "choose another path", path)
    return path


def is_run_folder(folder: Path) -> bool:
    return (folder / "config.yaml").is_file() or (folder / "metrics.csv").is_file()


def _save(fig, out, kind: str) -> Path:
    from ..atomic import atomic_path

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(out, ".png") as tmp:
            fig.savefig(tmp, format="png", metadata={KIND_KEY: kind})
    finally:
        _pyplot().close(fig)
    return out
