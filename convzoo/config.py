"""Run configuration: one dataclass, named presets in convzoo/configs/*.yaml, CLI flags on top."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from importlib import resources

import yaml

from .errors import ConfigError, unknown


@dataclass
class TrainConfig:
    model: str = "lenet5"
    dataset: str = "mnist"
    data_path: str | None = None
    output_dir: str | None = None  # default runs/<model>-<dataset>
    epochs: int = 10
    steps_per_epoch: int = 0  # 0: one pass over the training set
    batch_size: int = 64
    optimizer: str = "sgd"  # sgd | adam | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "constant"  # constant | step | cosine | onecycle
    warmup_epochs: float = 0.0
    step_size: int = 10  # epochs between decays for `step`
    gamma: float = 0.1
    label_smoothing: float = 0.0
    augment: str = "none"  # none | shift | flip | shift-flip
    shift_pad: int = 4  # random shifts of up to this many pixels (pad + random crop)
    amp: str = "none"  # none | bf16 | fp16
    channels_last: bool = False
    seed: int = 0
    deterministic: bool = False
    val_split: float = 0.0
    train_limit: int = 0  # use only the first N training images (0: all)
    classes: list[int] | None = None  # train on a subset of the classes, relabelled 0..k-1
    device: str = "auto"
    threads: int = 0  # 0: the model's default
    print_freq: int = 100
    eval_every: int = 1  # evaluate on the test (and val) split every N epochs; the last epoch always
    save_every: int = 0  # also write last.pt every N steps (0: at epoch ends only)
    restore: str | None = None
    restore_exclude: list[str] = field(default_factory=list)
    freeze: list[str] = field(default_factory=list)

    def validate(self) -> "TrainConfig":
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.epochs >= 1, f"--epochs must be >= 1, got {self.epochs}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.weight_decay >= 0, f"--weight-decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.steps_per_epoch >= 0, f"--steps-per-epoch must be >= 0, got {self.steps_per_epoch}"),
            (0 <= self.val_split < 1, f"--val-split must be in [0, 1), got {self.val_split}"),
            (self.threads >= 0, f"--threads must be >= 0, got {self.threads}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.train_limit >= 0, f"--train-limit must be >= 0, got {self.train_limit}"),
            (0 <= self.shift_pad <= 64, f"--shift-pad must be in 0..64, got {self.shift_pad}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (self.gamma > 0, f"--lr-gamma must be > 0, got {self.gamma}"),
            (self.step_size >= 1, f"--lr-step-size must be >= 1, got {self.step_size}"),
            (self.warmup_epochs >= 0, f"--warmup-epochs must be >= 0, got {self.warmup_epochs}"),
            (self.print_freq >= 0, f"--print-freq must be >= 0, got {self.print_freq}"),
            (self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}"),
            (0 <= self.seed < 2**63, f"--seed must be in 0..2^63-1, got {self.seed}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        choices = {"optimizer": ("sgd", "adam", "adamw"), "schedule": ("constant", "step", "cosine", "onecycle"),
                   "augment": ("none", "shift", "flip", "shift-flip"), "amp": ("none", "bf16", "fp16")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise unknown(name.replace("_", "-"), getattr(self, name), allowed)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_value(name: str, value, source: str):
    """`value` for TrainConfig field `name`, type-checked: presets and resumed checkpoints come from
    files, so a string where a number belongs is one clear line, not a crash deep in training."""
    declared = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[name]
    kinds = [k.strip() for k in str(declared).split("|")]
    if value is None and "None" in kinds:
        return None
    for kind in kinds:
        if kind.startswith("list["):
            item = FIELD_TYPES[kind[5:-1]]
            if isinstance(value, list) and all(isinstance(v, item) and not isinstance(v, bool) for v in value):
                return list(value)
        elif kind in FIELD_TYPES and isinstance(value, FIELD_TYPES[kind]) and (kind == "bool") == isinstance(value, bool):
            if kind == "float" and not math.isfinite(value):
                break
            return float(value) if kind == "float" else value
    raise ConfigError(f"{source}: {name} must be {declared}, got {str(value)[:60]!r}")


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("convzoo.configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    if name not in preset_names():  # also keeps a name like ../../x from reaching outside the package
        raise unknown("preset", name, preset_names())
    values = yaml.safe_load((resources.files("convzoo.configs") / f"{name}.yaml").read_text()) or {}
    values.pop("description", None)
    bad = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if bad:
        raise ConfigError(f"preset {name!r} has unknown keys: {', '.join(sorted(bad))}")
    return {k: check_value(k, v, f"preset {name!r}") for k, v in values.items()}


def build_config(preset: str | None, overrides: dict, base: dict | None = None) -> TrainConfig:
    """Defaults < `base` (a resumed run's own config) < preset < flags given on the command line."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if base is not None and not isinstance(base, dict):
        raise ConfigError(f"the resumed checkpoint's config must be a mapping, got {type(base).__name__}")
    values = {k: check_value(k, v, "the resumed checkpoint's config") for k, v in (base or {}).items() if k in fields}
    values.update(load_preset(preset) if preset else {})
    values.update({k: check_value(k, v, f"--{k.replace('_', '-')}") for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()
