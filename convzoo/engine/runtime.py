"""Where and how a run executes: device, mixed precision, CPU threads and random state."""

from __future__ import annotations

import os
import random

import numpy as np
import torch

from ..errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks cuda, then mps, then cpu; asking for a device that is not there is a user error."""
    aliases = {"gpu": "cuda", "cpu": "cpu", "ascend": "ascend", "auto": "auto"}
    key = aliases.get(name.lower(), name.lower())
    available = ["cpu"] + (["cuda"] if torch.cuda.is_available() else []) + (
        ["mps"] if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else [])
    if key == "auto":
        return torch.device(available[1] if len(available) > 1 else "cpu")
    base = key.split(":")[0]
    if base not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"--device {name}: convzoo runs on cpu, cuda or mps (available here: {', '.join(available)})")
    if base not in available:
        raise ConfigError(f"--device {name}: no {base.upper()} device is visible (available here: {', '.join(available)})")
    try:
        device = torch.device(key)
    except RuntimeError:  # cpu:x, cpu:-1, cuda:0:1 ("Invalid device string", a traceback)
        raise ConfigError(f"--device {name}: not a device name (cpu, cuda, cuda:N with N a GPU's index, mps)") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                          f"indices 0..{torch.cuda.device_count() - 1}")
    return device


def resolve_amp(amp: str, device: torch.device):
    """The autocast dtype for `--amp`, or None for fp32."""
    if amp == "none":
        return None
    if amp == "fp16" and device.type == "cpu":
        raise ConfigError("--amp fp16 needs a CUDA GPU (float16 autocast with gradient scaling); on CPU use --amp bf16")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def default_threads(fallback: int) -> int:
    """The CPU threads when --threads is not given: $OMP_NUM_THREADS where set (config.omp_threads), else
    `fallback` (the model's or the command's own default)."""
    from ..config import omp_threads

    return omp_threads() or fallback


def configure_threads(threads: int, device: torch.device) -> int:
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """The global generators (dropout draws from them); data order and augmentation are seeded per step."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
