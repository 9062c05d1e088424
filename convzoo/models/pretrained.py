"""Shipped pretrained weights: safetensors files in convzoo/pretrained/, listed with their sha256
and recorded test accuracy in index.json. A file whose sha256 differs from the record is refused.

    python -m convzoo.models.pretrained pack RUN/last.pt NAME:DATASET [RECIPE]   (scripts/make_pretrained.sh)
"""

from __future__ import annotations

import hashlib
import json
import sys
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


def load_safetensors_checkpoint(path) -> dict:
    """A checkpoint-like dict (model, classes, input spec, state_dict) from a convzoo safetensors file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        state = load_file(str(path))
        info = json.loads(meta["convzoo"])
    except (SafetensorError, OSError, KeyError, ValueError) as exc:
        raise CheckpointError(f"not a convzoo safetensors file ({str(exc)[:120]})", path) from None
    return {**info, "state_dict": state}


def pack(ckpt_path, name: str, recipe: str = "scripts/make_pretrained.sh") -> dict:
    """Write the weights of `ckpt_path` as NAME's safetensors file and record its sha256 and accuracy."""
    from safetensors.torch import save_file

    from ..deploy.predict import evaluate_model_file
    from ..engine.checkpoint import load_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    info = {k: ckpt[k] for k in ("model", "num_classes", "class_names", "input", "dataset")}
    model_name, dataset = name.split(":")
    out = package_folder() / f"{model_name}-{dataset}.safetensors"
    out.parent.mkdir(exist_ok=True)
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(state, str(out), metadata={"convzoo": json.dumps(info)})
    accuracy = evaluate_model_file(out, threads=1).accuracy
    entries = index()
    entries[name] = {"file": out.name, "model": info["model"], "dataset": info["dataset"], "accuracy": accuracy,
                     "size_bytes": out.stat().st_size, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                     "recipe": recipe}
    (package_folder() / INDEX).write_text(json.dumps(entries, indent=1) + "\n")
    return entries[name]


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5) or sys.argv[1] != "pack":
        sys.exit(__doc__)
    print(json.dumps(pack(*sys.argv[2:]), indent=1))
