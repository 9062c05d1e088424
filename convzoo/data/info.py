"""`convzoo data info` and `convzoo data sample`: what a located data set holds, and PNGs of it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from ..atomic import atomic_open, write_error
from ..errors import printable
from . import formats
from .catalog import decode_split
from .fetch import Located


def save_samples(located: Located, count: int, folder: Path, as_json: bool = False) -> int:
    """The first `count` test images as PNG files named by index and true class; each written
    atomically, so a full or read-only folder is one WriteError and never leaves half a PNG. Every
    name is checked first: a file there is replaced only if it is an earlier sample (a user's file of
    that name was overwritten), and a folder inside the data set is refused (the PNGs would join it)."""
    from PIL import Image, PngImagePlugin

    from ..errors import WriteError, not_a_file
    from ..report.plots import KIND_KEY, plot_kind

    if not folder.is_dir() and (folder.exists() or folder.is_symlink()):  # mkdir said "File exists" of them all
        raise WriteError(f"{not_a_file(folder, '', 'not a folder')}; --output names the folder the PNG files go to",
                         folder)
    images, labels, classes = decode_split(located, "test")
    if not located.spec.reader.official and formats.within_data_set(folder, located.root):
        raise WriteError(f"is inside the data set's folder {located.root}: the samples would become its images; "
                         "choose a folder outside it", folder)
    if count > len(labels):  # else --count 100 of a 6-image test split wrote 6 without a word
        print(f"warning: only {len(labels)} test images: writing {len(labels)} of the {count} asked for",
              file=sys.stderr)
    samples = []
    for i in range(min(count, len(labels))):
        image = images[i]
        label = classes[int(labels[i])].replace("/", "-").replace(" ", "_")
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        samples.append((i, folder / f"test-{i:05d}-{label}.png", pixels))
    for _, path, _ in samples:
        if (path.exists() or path.is_symlink()) and plot_kind(path) != "sample":
            raise WriteError("exists and is not a sample convzoo wrote: writing it would destroy it; choose another "
                             "--output folder (nothing was written)", path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(folder, exc) from None
    mark = PngImagePlugin.PngInfo()
    mark.add_text(KIND_KEY, "sample")  # what the check above looks for next time
    for i, path, pixels in samples:
        with atomic_open(path) as f:
            Image.fromarray(pixels).save(f, format="PNG", pnginfo=mark)
        print(json.dumps({"path": str(path), "index": i, "class": classes[int(labels[i])]}) if as_json
              else printable(str(path)))  # a class name with a newline stays on its line
    return 0


def class_label(name: str) -> str:
    """A class name as listed: quoted (repr) when it holds the list's separator, a quote, surrounding
    spaces or anything unprintable (a newline), so 'a,b' is one class, not two; plain otherwise."""
    plain = name and name.isprintable() and name == name.strip() and not any(c in name for c in ",'\"")
    return name if plain else repr(name)


def print_info(located: Located, as_json: bool) -> int:
    spec = located.spec
    splits = {s: decode_split(located, s)[1:] for s in ("train", "test")}  # (labels, classes); train first: see formats
    classes = splits["train"][1]  # an image folder's come from its sub-folders
    if spec.folder and (long := formats.long_class_names(classes)):  # listed here, then refused by train
        print(f"warning: {printable(str(located.root))}: {long[2:]}", file=sys.stderr)
    info = {
        "dataset": spec.name, "title": spec.title, "found_in": str(located.root), "source": located.source,
        # null for a folder of the user's own images: there are no official checksums to verify it against
        "verified": located.verified if spec.reader.official else None,
        "image_shape": list(spec.image_shape), "classes": list(classes),
        "counts": {s: len(labels) for s, (labels, _) in splits.items()},
        "official_counts": spec.sizes,
        "class_counts": {s: np.bincount(labels, minlength=len(classes)).tolist() for s, (labels, _) in splits.items()},
        # what it does not read: said in --json's, and in the warning above the listing (reading the
        # training split warns of it, as in train)
        "test_split": formats.describe_test_split(located.root, spec.folder, unread=as_json) if spec.folder else None,
        "files": {c.path.name: {"path": str(c.path), "status": c.status, "detail": c.detail} for c in located.checks},
    }
    if located.warning():
        print(located.warning(), file=sys.stderr)
    if as_json:
        print(json.dumps(info))  # one line, as every --json output
        return 0
    print(f"{spec.title} ({spec.name})")
    print(f"  found in     {located.root}  [{located.source}]")
    if spec.reader.official:
        verified = "yes: every file matches its official checksum" if located.verified else "NO (see warning)"
        print(f"  verified     {verified}")
    print(f"  image shape  {' x '.join(map(str, spec.image_shape))} (C x H x W), uint8")
    for s, n in info["counts"].items():
        official = f" (official: {spec.sizes[s]:,})" if s in spec.sizes else ""
        print(f"  {s:<12} {n:,} images{official}; per class {info['class_counts'][s]}")
    print(f"  classes      {', '.join(map(class_label, classes))}")
    if info["test_split"]:  # a folder's: say which folder (or share) is held out, e.g. val/ beside train/
        print(f"  test split   {info['test_split']}")
    if spec.mean:
        print(f"  mean / std   {spec.mean} / {spec.std}")
    for c in located.checks:
        print(f"  {c.status:>9}  {c.path.name}  ({c.detail})")
    return 0
