"""Shipped pretrained weights: safetensors files in convzoo/pretrained/, listed with their sha256
and recorded test accuracy in index.json. A file whose sha256 differs from the record is refused.
Loading them is engine/checkpoint.py's job; packing new ones is scripts/pack_pretrained.py's.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path

from ..errors import CheckpointError, unknown

INDEX = "index.json"


def package_folder() -> Path:
    return Path(str(resources.files("convzoo") / "pretrained"))


def index() -> dict:
    path = package_folder() / INDEX
    return json.loads(path.read_text()) if path.is_file() else {}


def pretrained_path(name: str) -> Path:
    """The verified weights file for NAME:DATASET (e.g. lenet5:mnist)."""
    entries = index()
    if name not in entries:
        raise unknown("pretrained model", name, entries)
    entry = entries[name]
    path = package_folder() / entry["file"]
    if not path.is_file():
        raise CheckpointError("pretrained weights file is missing from the installation", path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != entry["sha256"]:
        raise CheckpointError(f"sha256 {digest[:16]}... does not match the recorded {entry['sha256'][:16]}...; "
                              "the file was modified or corrupted (reinstall convzoo)", path)
    return path


def resolve(path_or_name) -> Path:
    """A path as given; NAME:DATASET (when no such file exists) -> the shipped model's verified file."""
    text = str(path_or_name)
    if ":" in text and "/" not in text and not Path(text).exists():
        return pretrained_path(text)
    return Path(path_or_name)
