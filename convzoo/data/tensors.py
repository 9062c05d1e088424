"""Decoded data sets as uint8 tensors held once on the device, and whole-batch preprocessing.

Batches are slices of a seeded permutation; fitting to the model's input size, augmentation and
normalisation run on the whole batch on the device. Every random draw is seeded from
(seed, epoch, step), so a run resumed at step k sees exactly the batches it would have seen.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError, DataError, closest
from . import formats
from .catalog import FolderRule, check_class_indices, decode_split, get_spec, preprocess_rule
from .fetch import Located, locate


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W)
    labels: torch.Tensor  # int64 (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device), self.classes)

    def subset(self, index) -> "Split":
        return Split(self.images[index], self.labels[index], self.classes)


@dataclass(frozen=True)
class InputSpec:
    """How uint8 images become model input; travels in checkpoints and ONNX metadata."""

    channels: int
    size: int  # model input is size x size
    fit: str  # pad (centre on a zero canvas, as MNIST -> 32x32) | resize (bilinear) | none
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "InputSpec":
        return cls(int(d["channels"]), int(d["size"]), str(d["fit"]), tuple(d["mean"]), tuple(d["std"]))


def load_dataset(name: str, data_path=None, *, download: bool = True, mirrors=None, quiet: bool = False,
                 folder: FolderRule | None = None, test_only: bool = False):
    """(train Split, test Split, Located) on the CPU; prints the non-official-files warning once.
    An image folder is read by `folder` (default FolderRule()); its Located.spec then holds the
    classes, mean and std found in it. test_only: a catalog data set's test files are located, checked
    and read alone (train is None), so scoring needs no training files; an image folder is read whole."""
    spec = get_spec(name)
    if spec.folder and folder:
        spec = spec.reading(folder)
    test_only = test_only and spec.reader.official
    located = locate(spec, data_path, download=download, mirrors=mirrors, splits=("test",) if test_only else None)
    if located.warning() and not quiet:
        print(located.warning(), file=sys.stderr)
    train = None if test_only else read_split(located, "train")
    test = read_split(located, "test")
    if spec.folder:  # statistics of the user's own images: their training split's (all of them: every_image)
        mean, std = formats.channel_stats((train if len(train) else test).images.numpy())
        located.spec = replace(spec, classes=train.classes, mean=mean, std=std, title=f"image folder {located.root}")
    return train, test, located


def read_split(located: Located, split: str) -> Split:
    """One split decoded by its format's reader (the catalog's READERS), every file checked before
    its records are allocated."""
    images, labels, classes = decode_split(located, split)
    # Copies only what torch could not own as it is (CIFAR's record slices, read-only buffers).
    images, labels = (np.require(a, requirements=["C", "W"]) for a in (images, labels))
    return Split(torch.from_numpy(images), torch.from_numpy(labels), tuple(classes))


def select_classes(split: Split, classes: list[int] | None) -> Split:
    """Keep only `classes` (indices), relabelled 0..k-1 in the order given."""
    if not classes:
        return split
    check_class_indices(classes, len(split.classes))
    lookup = torch.full((len(split.classes),), -1, dtype=torch.long)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    mask = lookup[split.labels] >= 0
    return Split(split.images[mask], lookup[split.labels[mask]], tuple(split.classes[c] for c in classes))


def select_classes_by_name(split: Split, names, path, command: str, fewer: bool = False) -> Split:
    """The part of `split` whose classes a model was trained on, relabelled to the model's order; with
    `fewer` (scoring), a data set of only some of the model's classes is taken whole, each image labelled
    by its class's place among the model's."""
    if list(split.classes) == list(names):
        return split
    check_class_names(names, split.classes, path, command, fewer)
    if all(n in split.classes for n in names):
        return select_classes(split, [split.classes.index(n) for n in names])
    lookup = torch.tensor([list(names).index(c) for c in split.classes], dtype=torch.long)
    return Split(split.images, lookup[split.labels], tuple(names))


def check_class_names(names, have, path, command: str, fewer: bool = False) -> None:
    """Every one of a model's class `names` among a data set's classes `have`, or with `fewer` (scoring:
    eval, predict --from-test) every one of `have` among `names`; `command`, the one run (eval, export
    --int8, ...), is named in the refusal."""
    missing = [n for n in names if n not in have]
    if not missing:
        return
    if fewer and any(c in names for c in have):  # some of the model's classes (photos of 1s and 7s): no others
        refuse_other_classes(names, have, path, command)
        return
    need = "images of the model's classes" if fewer else "a data set that holds every one of them"
    raise DataError(f"the model's classes {few(missing)} are not in this data set ({some(have)}): {command} needs "
                    f"{need}", path)


def model_class_of(folder: str, names) -> str:
    """The model's class a class folder stands for: its own name, or the name with '/' (which no folder
    name can hold) written '-' as `data sample` writes it: T-shirt-top/ for Fashion's 'T-shirt/top'."""
    if folder in names:
        return folder
    return next((n for n in names if "/" in n and n.replace("/", "-") == folder), folder)


def refuse_other_classes(names, have, path, command: str) -> None:
    """A data set's classes `have` that a model's `names` lack: their images cannot be scored."""
    extra = [c for c in have if c not in names]
    if extra:
        raise DataError(f"the data set's classes {few(extra)}{closest(extra[0], names)} are not among the model's "
                        f"({some(names)}): {command} scores images of the model's classes only (a '/' in a class name "
                        "is written '-' in a folder's)", path)


def few(names) -> str:
    """At most five names, quoted: a 1,000-class model's list made a 13,000-character line."""
    return ", ".join(map(repr, names[:5])) + (f" and {len(names) - 5:,} more" if len(names) > 5 else "")


def some(names) -> str:
    return ", ".join(names[:20]) + (", ..." if len(names) > 20 else "")


def load_model_data(meta: dict, path=None, *, command: str = "eval", dataset: str | None = None, data_path=None,
                    test_only: bool = False) -> tuple[Split | None, Split]:
    """(train, test) of the data set a model (checkpoint or ONNX description) was trained on, or of
    `dataset`, restricted and relabelled to the model's classes. An image folder is read again by
    the rule and from the folder the model records, or from `data_path`. test_only: train is None and
    a catalog data set's training files are not needed (see load_dataset). command: the one run (eval,
    export --int8, quantize, predict --from-test), named when the data set lacks the model's classes."""
    rule = meta.get("data")
    if not (dataset or meta.get("dataset")):
        raise ConfigError("the model names no data set to read its test images from (an ONNX file made elsewhere); "
                          "eval takes --dataset NAME, whose classes are matched to the model's by name", path)
    names = meta["class_names"]
    if rule and dataset in (None, meta.get("dataset")):  # a folder model: its own folder, by its recorded rule
        recorded = rule.get("path")
        if data_path is None and recorded and not Path(recorded).is_dir():  # not the user's --data-path
            raise DataError(f"the image folder {path or 'the model'} was trained on is not there any more (moved or "
                            "deleted); pass --data-path FOLDER", recorded)
        train, test, located = load_dataset(meta["dataset"], data_path or recorded,
                                            folder=FolderRule.from_dict(rule), test_only=test_only)
        test = select_classes_by_name(test, names, path, command, fewer=test_only)
        # after the class check: a folder without the model's classes has no split of them to compare
        warn_if_split_changed(rule.get("split"), located, names, path)
    else:
        spec = get_spec(dataset or meta["dataset"])
        if not spec.folder:  # the catalog names its classes: refused before any file is located or downloaded
            check_class_names(names, spec.classes, path, command, fewer=test_only)
        folder = photo_folder_rule(meta)  # a model of another data set on a folder
        train, test, located = load_dataset(spec.name, data_path, folder=folder, test_only=test_only)
        if spec.folder:  # the user's own classes: one the model lacks was left out without a word
            test = Split(test.images, test.labels, tuple(model_class_of(c, names) for c in test.classes))
            refuse_other_classes(names, test.classes, located.root, command)
        test = select_classes_by_name(test, names, path, command, fewer=test_only)
    return None if train is None or test_only else select_classes_by_name(train, names, path, command), test


def photo_folder_rule(meta: dict) -> FolderRule:
    """How an image folder is read for a model of another data set: as predict reads photos. A digit or
    garment model sees each image made MNIST-style (28x28, ink light on black, centred; scored on plain
    resizes, dark digits on white paper scored 0.18 where predict read every one right); any other model
    sees it resized to its input, in its channels. The model was trained on none of the images: all of
    them are scored (a folder split by hand: its test folder), not a held-out share."""
    channels = meta["input"]["channels"]
    photos = meta.get("preprocess") or preprocess_rule(meta.get("dataset", ""))
    if channels == 1 and photos in ("digit", "fashion"):
        from .photos import as_mnist_uint8

        return FolderRule(image_size=28, channels=1, decode=functools.partial(as_mnist_uint8, rule=photos),
                          every_image=True)
    return FolderRule(channels=channels, every_image=True)


def warn_if_split_changed(recorded: dict | None, located: Located, class_names, path=None) -> None:
    """One warning line when an image folder's test split, rebuilt by the model's rule, is not the one
    the model was tested with (its recorded split_fingerprint); models made before the record: silent.
    A warning, not a refusal: folders legitimately grow and scoring the grown one is useful, but its
    accuracy must not pass for the run's test score (training images may now be among the test ones)."""
    if not recorded:
        return
    now = formats.split_fingerprint(located.root, located.spec.folder, class_names)
    if now == recorded:
        return
    then = recorded["test_files"]  # schema-checked on load (metadata.check_folder_rule)
    counts = (f"{now['test_files']} test files now, {then} then" if then != now["test_files"]
              else f"{then} test files then and now, not the same ones")
    print(f"warning: {located.root}: not the test split {path or 'the model'} was tested with ({counts}: files added, "
          "removed or renamed); training images may be among them, so its accuracy is not the run's test score",
          file=sys.stderr)


def split_validation(train: Split, fraction: float) -> tuple[Split, Split | None]:
    """Keras' validation_split: the last `fraction` of the training set, unshuffled."""
    if not fraction:
        return train, None
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-split must be in (0, 1), got {fraction}")
    cut = len(train) - max(1, int(round(len(train) * fraction)))
    return train.subset(slice(0, cut)), train.subset(slice(cut, None))


def batches(split: Split, batch_size: int, *, shuffle: bool, seed: int = 0, epoch: int = 0, start_step: int = 0,
            drop_last: bool = False, rank: int = 0, world_size: int = 1, with_index: bool = False):
    """Yield (step, uint8 images, labels) for one epoch; with_index: (step, images, labels, the
    samples' positions in `split`).

    With world_size > 1 each global batch of `batch_size` is cut into equal, disjoint rank shards,
    so N ranks together see exactly the batches one process would.
    """
    n = len(split)
    if shuffle:
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n, generator=g).to(split.labels.device)
    else:
        order = torch.arange(n, device=split.labels.device)
    steps = steps_per_epoch(n, batch_size, drop_last)
    per_rank = batch_size // world_size
    for step in range(start_step, steps):
        index = order[step * batch_size : (step + 1) * batch_size]
        if world_size > 1:
            index = index[rank * per_rank : (rank + 1) * per_rank]
        yield (step, split.images[index], split.labels[index]) + ((index,) if with_index else ())


def steps_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    return n // batch_size if drop_last else -(-n // batch_size)


def to_model_input(images: torch.Tensor, spec: InputSpec, *, augment: str = "none", generator=None,
                   shard: tuple[int, int] = (0, 1), shift_pad: int = 4,
                   flips: torch.Tensor | None = None) -> torch.Tensor:
    """uint8 (B, C, H, W) -> normalised float (B, C, size, size), optionally augmented.

    augment: none | shift (random crop of the `shift_pad`-padded image, as MindSpore's RandomCrop)
    | flip (a horizontal flip half the time) | shift-flip (both) | altflip, shift-altflip (as flip,
    with the images to mirror given by `flips`: see alternating_flips). Random draws are made for
    the whole global batch and `shard` = (rank, world_size) takes this rank's slice of them, so
    data-parallel ranks augment their samples exactly as a single process would.
    """
    x = images.float().div_(255)
    x = fit(x, spec)
    if augment != "none":
        pad = shift_pad if augment.startswith("shift") else 0
        x = random_shift_flip(x, flip="flip" in augment, generator=generator, shard=shard, padding=pad, flips=flips)
    mean = torch.tensor(spec.mean, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    std = torch.tensor(spec.std, device=x.device, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - mean) / std


def fit(x: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    h, w = x.shape[-2:]
    if (h, w) == (spec.size, spec.size) or spec.fit == "none":
        return x
    if spec.fit == "pad" and h <= spec.size and w <= spec.size:
        top, left = (spec.size - h) // 2, (spec.size - w) // 2
        return F.pad(x, (left, spec.size - w - left, top, spec.size - h - top))
    return F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False, antialias=h > spec.size)


def random_shift_flip(x: torch.Tensor, *, flip: bool, generator, shard=(0, 1), padding: int = 4,
                      flips: torch.Tensor | None = None) -> torch.Tensor:
    """Random shifts of up to `padding` px and, with `flip`, mirror images: random ones, or the
    (B,) booleans `flips` (already this rank's) where given."""
    rank, world = shard
    b, c, h, w = x.shape
    total = b * world
    offsets = torch.randint(0, 2 * padding + 1, (total, 2), generator=generator, device=generator.device)
    drawn = torch.rand(total, generator=generator, device=generator.device) < 0.5  # drawn either way: same shifts
    offsets, drawn = offsets[rank * b : (rank + 1) * b].to(x.device), drawn[rank * b : (rank + 1) * b].to(x.device)
    flips = drawn if flips is None else flips.to(x.device)
    padded = F.pad(x, (padding,) * 4)
    rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1).expand(b, c, h, w)
    cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w).expand(b, c, h, w)
    out = padded[torch.arange(b, device=x.device).view(b, 1, 1, 1), torch.arange(c, device=x.device).view(1, c, 1, 1),
                 rows, cols]
    if flip:
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
    return out


def alternating_flips(index: torch.Tensor, seed: int, passes: int, size: int) -> torch.Tensor:
    """airbench's alternating flips: whether to mirror each sample (`index`: positions in a training
    set of `size`) in this pass over the set, after `passes` earlier ones. The first pass mirrors a
    seeded random half; every later pass mirrors exactly the samples the pass before did not, so any
    two passes in a row show every image both ways (random flips show a quarter of them the same way
    twice running)."""
    return first_flips(size, seed, str(index.device))[index] ^ bool(passes % 2)


@functools.lru_cache(maxsize=4)
def first_flips(size: int, seed: int, device: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 1_000_003 + 991)  # its own stream: not the order's or the shifts'
    return (torch.rand(size, generator=g) < 0.5).to(device)


def step_generator(seed: int, epoch: int, step: int, device) -> torch.Generator:
    """The generator for one step's augmentation: a pure function of (seed, epoch, step)."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + epoch) * 1_000_003 + step)
