"""Run configuration: one dataclass, named presets in convzoo/configs/*.yaml, CLI flags on top."""

from __future__ import annotations

import dataclasses
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


def preset_names() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files("convzoo.configs").iterdir()
                  if p.name.endswith(".yaml"))


def load_preset(name: str) -> dict:
    path = resources.files("convzoo.configs") / f"{name}.yaml"
    if not path.is_file():
        raise unknown("preset", name, preset_names())
    values = yaml.safe_load(path.read_text()) or {}
    values.pop("description", None)
    bad = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if bad:
        raise ConfigError(f"preset {name!r} has unknown keys: {', '.join(sorted(bad))}")
    return values


def build_config(preset: str | None, overrides: dict, base: dict | None = None) -> TrainConfig:
    """Defaults < `base` (a resumed run's own config) < preset < flags given on the command line."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    values = {k: v for k, v in (base or {}).items() if k in fields}
    values.update(load_preset(preset) if preset else {})
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**values).validate()
