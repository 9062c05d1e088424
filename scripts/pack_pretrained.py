"""Pack a run's checkpoint as shipped pretrained weights (called by scripts/make_pretrained.sh):
writes convzoo/pretrained/MODEL-DATASET.safetensors and records its sha256 and test accuracy.

    python scripts/pack_pretrained.py RUN/last.pt NAME:DATASET [RECIPE]
"""

from __future__ import annotations

import hashlib
import json
import sys

from safetensors.torch import save_file

from convzoo.deploy.predict import evaluate_model_file
from convzoo.engine.checkpoint import load_checkpoint
from convzoo.metadata import META_KEY
from convzoo.models.pretrained import INDEX, index, package_folder

LIMIT = 1 << 20


def pack(ckpt_path, name: str, recipe: str = "scripts/make_pretrained.sh") -> dict:
    ckpt = load_checkpoint(ckpt_path)
    info = {k: ckpt[k] for k in ("model", "num_classes", "class_names", "input", "dataset")}
    model_name, dataset = name.split(":")
    out = package_folder() / f"{model_name}-{dataset}.safetensors"
    out.parent.mkdir(exist_ok=True)
    state = {k: v.contiguous() for k, v in ckpt["state_dict"].items()}
    save_file(state, str(out), metadata={META_KEY: json.dumps(info)})
    if out.stat().st_size > LIMIT:  # the repository keeps no data file this large (airbench's are 7.5 MiB)
        out.unlink()
        sys.exit(f"{ckpt_path}: {name}'s weights are over {LIMIT >> 20} MiB; not packed (use the checkpoint itself)")
    accuracy = evaluate_model_file(out, threads=1).accuracy
    entries = index()
    entries[name] = {"file": out.name, "model": info["model"], "dataset": info["dataset"], "accuracy": accuracy,
                     "size_bytes": out.stat().st_size, "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
                     "recipe": recipe}
    (package_folder() / INDEX).write_text(json.dumps(entries, indent=1) + "\n")
    return entries[name]


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    print(json.dumps(pack(*sys.argv[1:]), indent=1))
