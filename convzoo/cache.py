"""Where convzoo keeps what it downloads or derives (data sets, checkpoints' ONNX exports): a module of
its own so that `predict` finds its cache without importing the downloader."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("CONVZOO_CACHE") or Path.home() / ".cache" / "convzoo")
