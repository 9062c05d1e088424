"""What each data set is, complete in one entry: its official files and checksums, mirrors, where
its files sit, classes, statistics, shape, its reader (READERS, by format) and how users' photos
are prepared for its models (the deployment preprocessing rule).

Torch-free (serving reads the preprocessing rules through metadata.py); the readers are numpy.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from ..errors import ConfigError, unknown
from . import formats
from .formats import CIFAR_RECORD_BYTES


@dataclass(frozen=True)
class FileSpec:
    """One official file. `md5` is of the file as published; `raw_md5` of its decompressed bytes
    (so a copy re-compressed by someone else, like Debian's Fashion-MNIST, still verifies)."""

    name: str
    split: str
    role: str  # images | labels | batch
    md5: str | None = None
    raw_md5: str | None = None
    count: int = 0  # records in the official file
    python_md5: str | None = None  # the same records in the other official form (CIFAR-10's Python pickles)
    size: int | None = None  # bytes of the file as published: a download never takes more
    # IDX files: the type code (0x08 unsigned bytes) and each record's dimensions the header must declare.
    idx_code: int | None = None
    idx_dims: tuple[int, ...] = ()

    @property
    def raw_size(self) -> int:
        """Bytes of the official file decompressed: no faithful copy of it inflates to more."""
        if self.idx_code is not None:  # IDX: magic, one 4-byte size per dimension, unsigned bytes
            return 4 + 4 * (1 + len(self.idx_dims)) + self.count * math.prod(self.idx_dims)
        return self.count * CIFAR_RECORD_BYTES


@dataclass(frozen=True)
class ArchiveSpec:
    """An archive that is downloaded instead of the single files (CIFAR-10's tarball)."""

    name: str
    md5: str
    folder: str  # the folder inside the archive that holds the files
    size: int  # bytes as published


@dataclass(frozen=True)
class Reader:
    """How one format becomes uint8 (N, C, H, W) images, int64 labels and class names: the function
    (in data/formats.py) that decodes a located split, and whether the format has official files to
    locate, verify and download, or is a folder of the user's own that only --data-path names."""

    read: Callable  # read(located, split) -> (images, labels, class names)
    official: bool = True


READERS = {
    "idx": Reader(formats.read_idx_split),
    "cifar": Reader(formats.read_cifar_split),
    "folder": Reader(formats.read_folder_split, official=False),
}


def decode_split(located, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(uint8 images, labels, class names) of one located split as its format's reader decodes it: numpy
    only (data info and data sample need no torch, whose import alone takes seconds)."""
    spec = located.spec
    images, labels, classes = spec.reader.read(located, split)
    if images.shape[1:] != spec.image_shape:  # a catalog entry whose files disagree with its shape is a bug
        raise AssertionError(f"{spec.name}: decoded {images.shape[1:]}, catalog says {spec.image_shape}")
    return images, np.asarray(labels), tuple(classes)


@dataclass(frozen=True)
class FolderRule:
    """How a folder of the user's images is read. Checkpoints and ONNX files record it, so `eval` and
    `predict --from-test` rebuild the very same test split."""

    image_size: int = 32  # every image is resized to image_size x image_size when decoded
    channels: int = 1  # 1: grey, 3: RGB
    test_split: float = 0.2  # of each class held out for testing, unless the folder has train/ + test/
    seed: int = 0  # of that split
    # Every image of a folder whose classes are not split by hand is a test image (none for training):
    # how a model of another data set, trained on none of them, is scored on it. Not recorded.
    every_image: bool = False
    # image -> uint8 (channels, image_size, image_size) instead of the plain resize: a digit model scored
    # on a folder of photos reads them as predict does (data/photos.py). Not recorded: eval's alone.
    decode: Callable | None = field(default=None, compare=False)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size, "channels": self.channels, "test_split": self.test_split,
                "seed": self.seed}

    @classmethod
    def from_dict(cls, d: dict) -> "FolderRule":
        return cls(int(d["image_size"]), int(d["channels"]), float(d["test_split"]), int(d["seed"]))


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str
    format: str  # a READERS key: idx | cifar | folder
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]  # C, H, W
    files: tuple[FileSpec, ...]
    mirrors: tuple[str, ...]
    folder_names: tuple[str, ...]  # sub-folder names people keep this data set under
    # Sub-folders of a data set's folder where each split's files may sit.
    split_folders: dict = field(default_factory=lambda: {"train": (".",), "test": (".",)})
    # How users' photos become its models' input (deploy/preprocess.py): digit (MNIST's recipe:
    # ink cropped, 20x20 box centred by mass in 28x28) | fashion (the item fitted in 28x28) | resize.
    preprocess: str = "resize"
    archive: ArchiveSpec | None = None
    meta_file: str | None = None
    sizes: dict = field(default_factory=dict)  # official split sizes
    folder: FolderRule | None = None  # image folders: how this one is read

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def reader(self) -> Reader:
        return READERS[self.format]

    def split_files(self, split: str) -> list[FileSpec]:
        return [f for f in self.files if f.split == split]

    def reading(self, rule: FolderRule) -> "DatasetSpec":
        """This (folder) data set read by `rule`: its image shape follows."""
        return replace(self, folder=rule, image_shape=(rule.channels, rule.image_size, rule.image_size))


def _idx_files(md5s: dict, raw_md5s: dict, sizes: dict, train: int, test: int,
               image_shape=(28, 28)) -> tuple[FileSpec, ...]:
    """The four gzipped IDX files of an MNIST-family set: uint8 images N x H x W, uint8 labels N."""
    files = []
    for split, prefix, count in (("train", "train", train), ("test", "t10k", test)):
        for role, stem, dims in (("images", f"{prefix}-images-idx3-ubyte", tuple(image_shape)),
                                 ("labels", f"{prefix}-labels-idx1-ubyte", ())):
            files.append(FileSpec(f"{stem}.gz", split, role, md5s[stem], raw_md5s[stem], count,
                                  size=sizes[stem], idx_code=0x08, idx_dims=dims))
    return tuple(files)


# Where people keep the IDX files of each split: flat, train/ + test/, MindSpore's Data/train + Data/test.
IDX_SPLIT_FOLDERS = {split: (".", split, f"Data/{split}") for split in ("train", "test")}


MNIST = DatasetSpec(
    name="mnist",
    title="MNIST",
    format="idx",
    classes=tuple(str(d) for d in range(10)),
    mean=(0.1307,),
    std=(0.3081,),
    image_shape=(1, 28, 28),
    files=_idx_files(
        {
            "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        {
            "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
            "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
            "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
            "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
        },
        {
            "train-images-idx3-ubyte": 9912422,
            "train-labels-idx1-ubyte": 28881,
            "t10k-images-idx3-ubyte": 1648877,
            "t10k-labels-idx1-ubyte": 4542,
        },
        60000,
        10000,
    ),
    mirrors=("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/"),
    folder_names=("mnist", "MNIST", "MNIST_Data", "mnist_data"),
    split_folders=IDX_SPLIT_FOLDERS,
    preprocess="digit",
    sizes={"train": 60000, "test": 10000},
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    title="Fashion-MNIST",
    format="idx",
    classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    mean=(0.2860,),
    std=(0.3530,),
    image_shape=(1, 28, 28),
    files=_idx_files(
        {
            "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        {
            "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
            "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
            "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
            "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
        },
        {
            "train-images-idx3-ubyte": 26421880,
            "train-labels-idx1-ubyte": 29515,
            "t10k-images-idx3-ubyte": 4422102,
            "t10k-labels-idx1-ubyte": 5148,
        },
        60000,
        10000,
    ),
    mirrors=("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    folder_names=("fashion-mnist", "FashionMNIST", "fashion_mnist", "Fashion-MNIST"),
    split_folders=IDX_SPLIT_FOLDERS,
    preprocess="fashion",
    sizes={"train": 60000, "test": 10000},
)

CIFAR10 = DatasetSpec(
    name="cifar10",
    title="CIFAR-10",
    format="cifar",
    classes=("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
    image_shape=(3, 32, 32),
    # The binary files' checksums are not published; only the tarball's. A verified download records
    # the extracted files' sha256 in a manifest so later runs can verify them. The Python pickles
    # (cifar-10-batches-py, torchvision's copy; named without .bin) have well-known md5s.
    files=tuple(FileSpec(f"data_batch_{i}.bin", "train", "batch", count=10000, python_md5=md5) for i, md5 in enumerate(
        ("c99cafc152244af753f735de768cd75f", "d4bba439e000b95fd0a9bffe97cbabec", "54ebc095f3ab1f0389bbae665268c751",
         "634d18415352ddfa80567beed471001a", "482c414d41f54cd18b22e5b47cb7c3cb"), start=1))
    + (FileSpec("test_batch.bin", "test", "batch", count=10000, python_md5="40351d587109b95175f43aff81a1287e"),),
    mirrors=("https://www.cs.toronto.edu/~kriz/",),
    folder_names=("cifar10", "cifar-10", "CIFAR10", "cifar-10-batches-bin", "cifar-10-batches-py"),
    # As extracted from the tarball; MindSpore keeps the test batch in cifar-10-verify-bin/.
    split_folders={"train": (".", "cifar-10-batches-bin"),
                   "test": (".", "cifar-10-batches-bin", "cifar-10-verify-bin")},
    archive=ArchiveSpec("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
                        size=170052171),
    meta_file="batches.meta.txt",
    sizes={"train": 50000, "test": 10000},
)

# The user's own images: one sub-folder per class (or train/ and test/ holding them). Classes, mean and
# std come from the folder itself (data/tensors.load_dataset), its shape from the rule.
FOLDER = DatasetSpec(
    name="folder",
    title="image folder",
    format="folder",
    classes=(),
    mean=(),
    std=(),
    image_shape=(1, 32, 32),
    files=(),
    mirrors=(),
    folder_names=(),
).reading(FolderRule())

DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST, CIFAR10, FOLDER)}
ALIASES = {"fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "cifar-10": "cifar10", "cifar": "cifar10"}


def check_class_indices(classes: list[int], count: int) -> None:
    """--classes: distinct indices of a data set's `count` classes."""
    if any(not 0 <= c < count for c in classes) or len(set(classes)) != len(classes):
        raise ConfigError(f"--classes must be distinct indices in 0..{count - 1}, got {classes}")


def get_spec(name: str) -> DatasetSpec:
    spec = find_spec(name)
    if spec is None:
        # `data info ./photos`: the user's own folder given where a data set's name goes
        mine = isinstance(name, str) and os.path.isdir(name)
        raise unknown("dataset", name, DATASETS,
                      f"; a folder of your own images is the data set 'folder', found by --data-path {name}" * mine)
    return spec


def find_spec(name) -> DatasetSpec | None:
    """The catalog entry called `name` (or an alias of it), or None."""
    return DATASETS.get(ALIASES.get(name.lower(), name.lower())) if isinstance(name, str) else None


def preprocess_rule(dataset: str) -> str:
    """How users' photos become input for a model of `dataset` (resize when the name is unknown)."""
    spec = find_spec(dataset)
    return spec.preprocess if spec else "resize"


def image_side(meta: dict) -> int:
    """The side a model's training images had before its input fit (MNIST's 28, padded to 32 for
    LeNet-5; an image folder's --image-size), from its checked metadata; the model's own input size
    when the data set is unknown."""
    if meta.get("data"):
        return meta["data"]["image_size"]
    spec = find_spec(meta.get("dataset", ""))
    return spec.image_shape[-1] if spec and not spec.folder else meta["input"]["size"]
