"""Self-describing checkpoints: atomic save, safe load, and restore-with-exclude for transfer learning.

A checkpoint is a dict of tensors and plain Python values, loaded with weights_only=True: a file
that needs arbitrary unpickling is refused, never executed.
"""

from __future__ import annotations

import fnmatch
import pickle
import zipfile
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_path
from ..errors import CheckpointError

FORMAT = "convzoo-checkpoint"
VERSION = 1
REQUIRED = ("model", "num_classes", "class_names", "input", "state_dict")


def save_checkpoint(path, payload: dict) -> None:
    """torch.save to a temp file beside `path`, fsync, rename: a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": VERSION, **payload}, tmp)


def load_checkpoint(path, map_location="cpu") -> dict:
    """Load and validate a convzoo checkpoint; every failure is one CheckpointError line."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found" if not path.exists() else "not a file", path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"refused to load: the file needs arbitrary unpickling, which could run code ({first[:160]})",
                              path) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError) as exc:
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"truncated or corrupt checkpoint ({reason})", path) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError("not a convzoo checkpoint (no 'format: convzoo-checkpoint' record; "
                              "plain state_dicts can be loaded with --restore)", path)
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"convzoo checkpoint is missing {', '.join(missing)}", path)
    return ckpt


def model_from_checkpoint(ckpt: dict, path=None) -> nn.Module:
    """Build the checkpoint's model and load its weights (strictly)."""
    from ..models.registry import create_model

    model = create_model(ckpt["model"], num_classes=ckpt["num_classes"], in_channels=ckpt["input"]["channels"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"weights do not fit model {ckpt['model']!r}: {str(exc).splitlines()[0]}", path) from None
    return model


def check_model_name(ckpt: dict, expected: str, path) -> None:
    if ckpt["model"] != expected:
        raise CheckpointError(f"checkpoint is of model {ckpt['model']!r}, not {expected!r}", path)


def restore_weights(model: nn.Module, path, exclude: list[str] = ()) -> dict[str, list[str]]:
    """Load the tensors of `path` that match `model` by name and shape, except those matching an
    `exclude` glob (e.g. 'fc3.*'). Returns which were loaded, skipped (and why) and left new."""
    source = load_checkpoint(path)["state_dict"]
    own = model.state_dict()
    report = {"loaded": [], "excluded": [], "shape_mismatch": [], "unused": [], "new": []}
    update = {}
    for name, tensor in source.items():
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            report["excluded"].append(name)
        elif name not in own:
            report["unused"].append(name)
        elif own[name].shape != tensor.shape:
            report["shape_mismatch"].append(f"{name} {tuple(tensor.shape)}->{tuple(own[name].shape)}")
        else:
            update[name] = tensor
            report["loaded"].append(name)
    report["new"] = [n for n in own if n not in update]
    model.load_state_dict(update, strict=False)
    return report


def freeze(model: nn.Module, patterns: list[str]) -> list[str]:
    """requires_grad=False for parameters matching any glob; returns their names."""
    frozen = []
    for name, p in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen
