"""Run configuration: one dataclass, named presets in convzoo/configs/*.yaml, CLI flags on top."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import NOT_UTF8, ConfigError, closest, first_line, not_a_file, not_utf8, shown, unknown


LOGGERS = ("none", "tensorboard", "mlflow")  # --logger takes one or a comma-separated list
AUGMENT_CHOICES = ("none", "shift", "flip", "shift-flip", "altflip", "shift-altflip")  # data/tensors.py: to_model_input
TTA_CHOICES = ("none", "flip", "shift", "flip-shift")  # test-time augmentation (engine/evaluate.py: tta_logits)


def logger_names(spec: str | None) -> list[str]:
    """'none' -> [], 'tensorboard,mlflow' -> both; an unknown name is a ConfigError."""
    names = [n.strip() for n in (spec or "none").split(",") if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise unknown("logger", name, LOGGERS)
    return [n for n in dict.fromkeys(names) if n != "none"]


def int_list(text: str) -> list[int]:
    return [int(c) for c in text.split(",")]


def glob_list(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


def opt(default, help: str, *flags: str, choices: tuple = (), parse=None):
    """A TrainConfig field declared with its command line: flags (the first is the main spelling,
    the rest are the seeds' aliases; default --field-name), help, allowed choices, a parser for
    list values. cli.py builds `convzoo train`'s flags from these, so a setting is declared once."""
    meta = {"flags": flags, "help": help, "choices": choices, "parse": parse}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    model: str = opt("lenet5", "model name (convzoo summary lists them)")
    dataset: str = opt("mnist", "mnist | fashion-mnist | cifar10 | folder (your own images: --data-path FOLDER "
                                "with one sub-folder per class)")
    data_path: str | None = opt(None, "folder with the data set's files (default: found in $CONVZOO_DATA, the "
                                      "cache or /usr/share/datasets, else downloaded to the cache; --dataset folder "
                                      "needs it)",
                                "--data-path", "--data_path")
    image_size: int = opt(32, "--dataset folder: images are resized to this square size when decoded")
    channels: int = opt(0, "--dataset folder: 1 (grey) or 3 (RGB); 0: the model's (1 for LeNets, 3 for AlexNets)")
    test_split: float = opt(0.2, "--dataset folder without train/ and test/ sub-folders: the fraction of each class "
                                 "held out for testing (a seeded draw, the same every run)")
    output_dir: str | None = opt(None, "run directory (default: runs/MODEL-DATASET)", "--output-dir", "--ckpt_path",
                                 "--ckpt-path")
    epochs: int = opt(10, "epochs", "--epochs", "--epoch_size", "--epoch-size")
    steps_per_epoch: int = opt(0, "steps per epoch (0: one pass)", "--steps-per-epoch", "--steps")
    batch_size: int = opt(64, "global batch size", "--batch-size", "--batch_size", "-b")
    optimizer: str = opt("sgd", "optimizer", "--optimizer", "--opt", choices=("sgd", "adam", "adamw"))
    lr: float = opt(0.01, "peak learning rate", "--lr", "--learning_rate", "--learning-rate")
    momentum: float = opt(0.9, "momentum (--optimizer sgd)")
    nesterov: bool = opt(False, "Nesterov momentum (--optimizer sgd)")
    bias_lr_scale: float = opt(1.0, "BatchNorm biases get this times the learning rate and 1/this the weight "
                                    "decay (airbench's bias scaler: they need large steps; models with BatchNorm only)")
    weight_decay: float = opt(0.0, "weight decay", "--weight-decay", "--wd")
    schedule: str = opt("constant", "learning-rate schedule", "--schedule", "--lr-scheduler",
                        choices=("constant", "step", "cosine", "onecycle", "triangle"))
    warmup_epochs: float = opt(0.0, "linear warm-up epochs (not --schedule triangle, which has its own rise)")
    step_size: int = opt(10, "epochs between decays (--schedule step)", "--lr-step-size")
    gamma: float = opt(0.1, "decay factor (--schedule step)", "--lr-gamma")
    label_smoothing: float = opt(0.0, "label smoothing")
    augment: str = opt("none", "random shifts (pad + crop) and/or horizontal flips; altflip: airbench's alternating "
                               "flips (each image mirrored in every other pass over the data, from a seeded first "
                               "choice)",
                       choices=AUGMENT_CHOICES)
    shift_pad: int = opt(4, "largest random shift in pixels for --augment shift, shift-flip and shift-altflip")
    tta: str = opt("none", "test-time augmentation at evaluation: average the logits of the image and its mirror "
                           "(flip), of 1-px shifts (shift: for digits, which have no mirror images), or both "
                           "(flip-shift)", choices=TTA_CHOICES)
    lookahead: bool = opt(False, "keep an exponential moving average of the weights, pulled into the model every "
                                 "5 steps, with a decay rising to 0.77 by the end (airbench's Lookahead-EMA)")
    amp: str = opt("none", "mixed precision (fp16 needs CUDA)", choices=("none", "bf16", "fp16"))
    channels_last: bool = opt(False, "channels-last memory format")
    seed: int = opt(0, "random seed")
    deterministic: bool = opt(False, "bit-reproducible CPU runs")
    val_split: float = opt(0.0, "hold out this fraction of train (Keras' validation_split)", "--val-split",
                           "--validation_split")
    train_limit: int = opt(0, "use only the first N training images (0: all)")
    test_limit: int = opt(0, "score on the first N test images only (0: all): quick checks, whose accuracies are "
                             "then a subset's")
    classes: list[int] | None = opt(None, "train on these class indices only, relabelled 0..k-1, e.g. 0,1,2 "
                                          "(default: all); --dataset folder: positions in its class folder names "
                                          "sorted as text (1, 10, 11, 2, ...: as `convzoo data info folder` lists "
                                          "them), and the run names the folders picked",
                                    parse=int_list)
    device: str = opt("auto", "auto | cpu | cuda | mps", "--device", "--device_target", "--device-target")
    threads: int = opt(0, "CPU threads per process (0: $OMP_NUM_THREADS if set, else the model's default; "
                            "with --procs, the cores shared out)")
    procs: int = opt(1, "data-parallel training processes convzoo starts on this machine (torchrun --standalone "
                        "--nproc-per-node N without torchrun; ignored under torchrun)")
    sync_bn: bool = opt(False, "data-parallel training (--procs N, torchrun): BatchNorm layers normalise with the "
                               "mean and variance of the whole global batch, all-reduced across the ranks "
                               "(torchvision's --sync-bn), so N processes train a BatchNorm model as one does; "
                               "without it each rank normalises with its own shard's. Refused when given for one "
                               "process (its BatchNorm sees the whole batch already; a preset's or a resumed run's "
                               "setting is kept there) and for a model without BatchNorm")
    print_freq: int = opt(100, "log a step line every N steps")
    eval_every: int = opt(1, "evaluate on the test (and val) split every N epochs (the last one always)")
    eval_steps: int = opt(0, "also evaluate every N training steps, counted over the run (0: at epoch ends only), so "
                             "--target-acc finds the moment", "--eval-every-steps")
    target_acc: float = opt(0.0, "stop as soon as the val (else test) accuracy reaches this, recording the "
                                 "wall time to get there (0: train every epoch)")
    save_every: int = opt(0, "also write last.pt every N training steps, counted over the run (0: at epoch ends only)")
    restore: str | None = opt(None, "initialise from this checkpoint's matching tensors", "--restore",
                              "--restore_path", "--restore-path")
    restore_exclude: list[str] = opt([], "comma-separated globs of tensors not to restore, e.g. 'fc3.*'",
                                     "--restore-exclude", "--restore_exclude", parse=glob_list)
    freeze: list[str] = opt([], "comma-separated globs of parameters to keep fixed (default: none)", parse=glob_list)
    logger: str = opt("none", "none | tensorboard | mlflow, or both comma-separated (pip install 'convzoo[tracking]')")

    def validate(self) -> "TrainConfig":
        checks = [
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            # Upper bounds far beyond any useful value: 10**20 epochs started a run that could never end;
            # lr and weight decay stay below what float32 optimizer state overflows at.
            (1 <= self.epochs <= 10**6, f"--epochs must be in 1..1000000, got {self.epochs}"),
            (0 < self.lr <= 1e4, f"--lr must be in (0, 10000], got {self.lr}"),
            (0 <= self.weight_decay <= 1e4, f"--weight-decay must be in 0..10000, got {self.weight_decay}"),
            (0 <= self.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {self.label_smoothing}"),
            (self.steps_per_epoch >= 0, f"--steps-per-epoch must be >= 0, got {self.steps_per_epoch}"),
            (0 <= self.val_split < 1, f"--val-split must be in [0, 1), got {self.val_split}"),
            (0 <= self.threads <= 1024, f"--threads must be in 0..1024, got {self.threads}"),
            (1 <= self.procs <= 256, f"--procs must be in 1..256, got {self.procs}"),
            (self.eval_every >= 1, f"--eval-every must be >= 1, got {self.eval_every}"),
            (self.eval_steps >= 0, f"--eval-every-steps must be >= 0, got {self.eval_steps}"),
            (0 <= self.target_acc <= 1, f"--target-acc must be in 0..1, got {self.target_acc}"),
            (self.train_limit >= 0, f"--train-limit must be >= 0, got {self.train_limit}"),
            (self.test_limit >= 0, f"--test-limit must be >= 0, got {self.test_limit}"),
            (0 <= self.shift_pad <= 64, f"--shift-pad must be in 0..64, got {self.shift_pad}"),
            (0 <= self.momentum < 1, f"--momentum must be in [0, 1), got {self.momentum}"),
            (0 < self.bias_lr_scale <= 1000, f"--bias-lr-scale must be in (0, 1000], got {self.bias_lr_scale}"),
            (0 < self.gamma <= 10, f"--lr-gamma must be in (0, 10], got {self.gamma}"),
            (self.step_size >= 1, f"--lr-step-size must be >= 1, got {self.step_size}"),
            (0 <= self.warmup_epochs <= 1e6, f"--warmup-epochs must be in 0..1000000, got {self.warmup_epochs}"),
            (self.print_freq >= 0, f"--print-freq must be >= 0, got {self.print_freq}"),
            (self.save_every >= 0, f"--save-every must be >= 0, got {self.save_every}"),
            # NumPy's legacy seeding and torch's CPU generators take 32 bits (2^32 seeded as 0 did)
            (0 <= self.seed < 2**32, f"--seed must be in 0..4294967295, got {self.seed}"),
            (8 <= self.image_size <= 512, f"--image-size must be in 8..512, got {self.image_size}"),
            (self.channels in (0, 1, 3), f"--channels must be 1 or 3 (0: the model's), got {self.channels}"),
            (0 < self.test_split < 1, f"--test-split must be in (0, 1), got {self.test_split}"),
        ]
        for name in ("output_dir", "data_path", "restore", "device"):  # '' would quietly mean the default
            value = getattr(self, name, None)
            checks.append((not isinstance(value, str) or value.strip() != "",
                           f"--{name.replace('_', '-')} must not be empty"))
            checks.append((not not_utf8(value), f"--{name.replace('_', '-')}: {value} {NOT_UTF8}"))
        checks.append((self.classes is None or len(self.classes) >= 2,  # one class scores 100%, says nothing
                       f"--classes needs at least two classes, got {self.classes}"))
        checks.append((self.restore or not self.restore_exclude,  # else the user's exclusions did nothing
                       "--restore-exclude goes with --restore (the weights to start from)"))
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)
        for f in dataclasses.fields(self):
            allowed = f.metadata["choices"]
            if allowed and getattr(self, f.name) not in allowed:
                raise unknown(f.name.replace("_", "-"), getattr(self, f.name), allowed)
        logger_names(self.logger)
        from .data.catalog import check_class_indices, get_spec  # here: the CLI's parser imports this module

        spec = get_spec(self.dataset)  # an unknown data set name, before any training code (and torch) is loaded
        if self.classes and not spec.folder:  # an image folder's classes are known once it is listed
            check_class_indices(self.classes, spec.num_classes)  # before the data set is read (seconds)
        return self

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def run_dir(self) -> str:
        """--output-dir, or runs/MODEL-DATASET (the data set's catalog name, so aliases agree)."""
        from .data.catalog import get_spec

        return self.output_dir or f"runs/{self.model}-{get_spec(self.dataset).name}"


# What --resume holds to the run's own values (engine/trainer.check_resumable), and what may differ.
# Same: what the model learns from and how, and how it is scored (history, best.pt) - a run resumed with
# another value would no longer be the run its history and config.yaml describe. `model`, `epochs`
# (longer with a constant schedule), `data_path` (the data are compared instead) and `restore` have
# checks of their own. Free: where and how fast it runs, and what is logged or saved when. `sync_bn` is
# held: it changes what BatchNorm normalises with under --procs (a run resumed on one process, where it
# changes nothing, keeps it).
RESUME_SAME = ("dataset", "image_size", "channels", "test_split", "steps_per_epoch", "batch_size", "optimizer", "lr",
               "momentum", "nesterov", "bias_lr_scale", "weight_decay", "schedule", "warmup_epochs", "step_size",
               "gamma", "label_smoothing", "augment", "shift_pad", "tta", "lookahead", "amp", "seed", "val_split",
               "train_limit", "test_limit", "classes", "restore_exclude", "freeze", "sync_bn")
RESUME_OWN_CHECK = ("model", "epochs", "data_path", "restore")
RESUME_FREE = ("output_dir", "channels_last", "deterministic", "device", "threads", "procs", "print_freq",
               "eval_every", "eval_steps", "target_acc", "save_every", "logger")


def flag_name(name: str) -> str:
    """TrainConfig field `name`'s main flag: --eval-every-steps for eval_steps, --lr-gamma for gamma."""
    declared = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    return (declared.metadata["flags"] or (f"--{name.replace('_', '-')}",))[0]


FIELD_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def check_value(name: str, value, source: str):
    """`value` for TrainConfig field `name`, type-checked: presets and resumed checkpoints come from
    files, so a string where a number belongs is one clear line, not a crash deep in training."""
    declared = {f.name: f.type for f in dataclasses.fields(TrainConfig)}[name]  # names are checked by the callers
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
    raise ConfigError(f"{source}: {name} must be {in_words(kinds)}, got {shown(value)}")


KIND_WORDS = {"int": "a whole number", "float": "a finite number", "str": "text", "bool": "true or false",
              "list[int]": "a list of whole numbers", "list[str]": "a list of names", "None": "null"}


def in_words(kinds: list[str]) -> str:
    """A field's declared type as a user reads it (`list[int] | None`: "a list of whole numbers or null")."""
    return " or ".join(KIND_WORDS.get(kind, kind) for kind in kinds)


def preset_names() -> list[str]:
    from importlib import resources  # here, as yaml below: the CLI's parser imports this module

    return sorted(p.name.removesuffix(".yaml") for p in resources.files("convzoo.configs").iterdir()
                  if p.name.endswith(".yaml"))


MAX_CONFIG_FILE = 1 << 20  # a training config is a few hundred bytes
# What a run's own config.yaml records beside its settings (trainer.py): read back, they are left out.
RUN_RECORD_KEYS = ("world_size", "data_found_in", "data_verified")


def is_config_file(name: str) -> bool:
    """--config NAME is a YAML file (a path, or a .yaml/.yml name) rather than a shipped preset's name."""
    return name.lower().endswith((".yaml", ".yml")) or "/" in name or "\\" in name


def load_preset(name: str) -> dict:
    """A shipped preset's settings, or those of a YAML file the user wrote (or a run's own config.yaml),
    checked field by field as presets are."""
    if is_config_file(name):
        return load_config_file(Path(name))
    if Path(name).is_file():  # a bare name is a preset's; the user's file of that name was passed over
        what = "both a shipped preset and" if name in preset_names() else "not a preset but"
        raise ConfigError(f"--config {name} is {what} a file in this folder; for the file write ./{name}")
    if name not in preset_names():
        raise unknown("preset", name, preset_names())
    from importlib import resources

    from . import yamlfile  # here, not at the top: `predict` and `serve` build the parser that reads this module

    values = yamlfile.load_settings((resources.files("convzoo.configs") / f"{name}.yaml").read_text())
    return checked_settings(values, f"preset {name!r}")


def load_config_file(path: Path) -> dict:
    from . import yamlfile

    try:
        if not path.is_file():
            raise ConfigError(not_a_file(path, "config file not found"), path)
        if path.stat().st_size > MAX_CONFIG_FILE:
            raise ConfigError(f"larger than {MAX_CONFIG_FILE >> 20} MiB: not a training config", path)
        values = yamlfile.load_settings(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError:
        raise ConfigError("a config must be UTF-8 text", path) from None
    except OSError as exc:
        raise ConfigError(f"cannot read it ({exc.strerror or exc})", path) from None
    except yamlfile.SettingsError as exc:
        raise ConfigError(str(exc), path) from None
    for key in RUN_RECORD_KEYS:
        values.pop(key, None)
    return checked_settings(values, str(path))


def key_names() -> dict[str, str]:
    """Every spelling a settings file may use for a field -> the field: its name and its flags without
    the dashes, with '-' or '_' (eval_every_steps and eval-every-steps for eval_steps; not -b)."""
    names = {}
    for f in dataclasses.fields(TrainConfig):
        for spelling in (f.name, *(flag[2:] for flag in f.metadata["flags"] if flag.startswith("--"))):
            names[spelling] = names[spelling.replace("-", "_")] = names[spelling.replace("_", "-")] = f.name
    return names


def checked_settings(values: dict, source: str) -> dict:
    """A file's settings by field name (keys as the flags spell them too), each type-checked."""
    values = dict(values)
    values.pop("description", None)
    names = key_names()
    bad = [str(k) for k in values if not isinstance(k, str) or k not in names]
    if bad:
        hints = [f"{key[:40]}{closest(key, names)}" for key in sorted(bad)]
        raise ConfigError(f"{source} has unknown keys: {', '.join(hints)[:300]}")
    settings, given_as = {}, {}
    for key, value in values.items():
        name = names[key]
        if name in settings:  # epochs: and epoch_size: both; which one was meant?
            raise ConfigError(f"{source} gives {name} twice (as {given_as[name]} and {key}); keep one")
        settings[name], given_as[name] = check_value(name, value, source), key
    return settings


def omp_threads() -> int | None:
    """$OMP_NUM_THREADS where it is a whole number from 1 to 1024 (of OpenMP's nested form "4,2" the first),
    else None: a shared machine, a job scheduler, torchrun or a parallel test runner asking for fewer."""
    first = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    return int(first) if first.isascii() and first.isdigit() and 1 <= int(first) <= 1024 else None


def build_config(preset: str | dict | None, overrides: dict, base: dict | None = None,
                 base_source: str = "the resumed run's config") -> TrainConfig:
    """Defaults < `base` (a resumed run's own config) < preset (a shipped one, or the user's own recipe:
    a YAML file or the API's dict) < flags given on the command line (the API's keywords)."""
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    if base is not None and not isinstance(base, dict):
        raise ConfigError(f"{base_source} must be a mapping, got {type(base).__name__}")
    values = {k: check_value(k, v, base_source) for k, v in (base or {}).items() if k in fields}
    chosen = recipe_settings(preset)
    values.update(chosen)
    values.update({k: check_value(k, v, flag_name(k)) for k, v in overrides.items() if v is not None})
    if chosen.get("threads") and overrides.get("threads") is None:
        # A preset's threads are its model's default, so $OMP_NUM_THREADS wins over them as README says (a
        # scheduler's share; torchrun's 1 per rank: lenet5-fast ran 2 threads in each of 2 ranks on 2 cores),
        # and under --procs they are shared out (2 each in 2 processes on 2 cores ran 6x slower than 1 each).
        machine = omp_threads()
        if machine is not None:
            values["threads"] = machine
        elif isinstance(values.get("procs"), int) and values["procs"] > 1:
            values["threads"] = max(1, chosen["threads"] // values["procs"])
    try:
        cfg = TrainConfig(**values).validate()
    except ConfigError as exc:
        raise as_recipe_error(exc, chosen, overrides, preset) from None
    defaults = TrainConfig()  # a default given (a run's saved config.yaml passed back whole) changes nothing
    given = [k for k, v in overrides.items() if v is not None and v != getattr(defaults, k)]
    check_folder_flags(cfg, given)
    check_flags_apply(cfg, given)
    if isinstance(preset, dict) or preset and is_config_file(preset):
        warn_unused(cfg, chosen, given, RECIPE_SOURCE if isinstance(preset, dict) else preset)
    return cfg


def as_recipe_error(exc: ConfigError, chosen: dict, overrides: dict, preset) -> ConfigError:
    """A range error ("--batch-size must be >= 1") in a value the user's recipe gave, not a flag: named
    as the recipe's key, after its file (the user typed no --batch-size)."""
    message = str(exc)
    for key in chosen:
        flag = flag_name(key)
        if overrides.get(key) is None and message.startswith(flag + " "):
            source = preset if isinstance(preset, str) else RECIPE_SOURCE
            return ConfigError(f"{source}: {key}{message[len(flag):]}")
    return exc


RECIPE_SOURCE = "train()'s config"  # how messages name a recipe passed to the API as a dict or TrainConfig


def recipe_settings(preset: str | dict | None) -> dict:
    """A preset's, a YAML file's or the API's dict's settings by field name, checked (load_preset)."""
    if isinstance(preset, dict):  # a run's config.yaml read by the user holds its record keys too
        return checked_settings({k: v for k, v in preset.items() if k not in RUN_RECORD_KEYS}, RECIPE_SOURCE)
    return load_preset(preset) if preset else {}


FOLDER_ONLY = ("test_split", "image_size", "channels")  # how an image folder is read and split


def check_folder_flags(cfg: TrainConfig, given: list[str]) -> None:
    """A flag for reading an image folder given with a catalog data set, which would ignore it without a
    word (`--dataset mnist --test-split 0.5`: MNIST has its own test set)."""
    from .data.catalog import get_spec

    spec = get_spec(cfg.dataset)
    flags = [f"--{name.replace('_', '-')}" for name in FOLDER_ONLY if name in given]
    if flags and not spec.folder:
        raise ConfigError(f"{' and '.join(flags)} appl{'y' if len(flags) > 1 else 'ies'} to --dataset folder (your "
                          f"own images) only; {spec.name} has its own test split and "
                          f"{'x'.join(map(str, spec.image_shape[1:]))} images with {spec.image_shape[0]} channel"
                          f"{'s' * (spec.image_shape[0] > 1)}")
    if "test_split" in given and spec.folder and cfg.data_path and Path(cfg.data_path).is_dir():
        from .data.formats import split_layout

        layout = split_layout(Path(cfg.data_path))
        if layout:  # its test images are the test folder's, whatever share was asked for
            raise ConfigError(f"--test-split {cfg.test_split} does not apply: the folder is split by hand "
                              f"({layout[1].name}/ beside {layout[0].name}/)", cfg.data_path)


SHIFT_AUGMENTS = tuple(a for a in AUGMENT_CHOICES if "shift" in a)  # those that pad and crop by --shift-pad


def check_flags_apply(cfg: TrainConfig, given: list[str]) -> None:
    """A flag given for a part of training this run does not have, which it would take and ignore
    (`--optimizer adam --momentum 0.5` trained plain Adam): refused. Only flags given count: a preset's or
    a resumed run's values are its whole recipe, kept when a flag changes one part of it
    (`--config lenet5-mnist --augment none` leaves the preset's shift_pad unused)."""
    reasons = unused_settings(cfg, given)
    if reasons:
        raise ConfigError(reasons[0])


def warn_unused(cfg: TrainConfig, recipe: dict, given: list[str], source: str) -> None:
    """The user's own recipe (a YAML file, a dict or a TrainConfig passed to the API) setting something
    this run does not use: one `warning:` line each, not a refusal, as a run's whole config.yaml passed
    back holds its preset's unused values (`shift_pad` after `--augment none`); the flags given on top of
    it are refused (check_flags_apply)."""
    defaults = TrainConfig()
    names = [k for k, v in recipe.items() if k not in given and v != getattr(defaults, k)]
    for reason in unused_settings(cfg, names):
        print(f"warning: {source}: {reason} (unused)", file=sys.stderr, flush=True)


def unused_settings(cfg: TrainConfig, names: list[str]) -> list[str]:
    """Why each of the settings `names` (TrainConfig fields) would change nothing in the run `cfg`
    describes, one line per rule it breaks, naming them as flags."""
    def named(*fields) -> tuple[str, str]:
        """Those of `fields` in names as typed (`--momentum 0.5 and --nesterov`), and 'ies' or 'y' to agree."""
        parts = [flag_name(n) + given_value(getattr(cfg, n)) for n in fields if n in names]
        return " and ".join(parts), "ies" if len(parts) == 1 else "y"

    reasons = []
    flags, verb = named("shift_pad")
    if flags and cfg.augment not in SHIFT_AUGMENTS:
        reasons.append(f"{flags} applies to --augment {', '.join(SHIFT_AUGMENTS[:-1])} or {SHIFT_AUGMENTS[-1]}; "
                       f"--augment {cfg.augment} makes no shifts")
    flags, verb = named("momentum", "nesterov")
    if flags and cfg.optimizer != "sgd":  # Adam's and AdamW's own averages (betas) take momentum's place
        reasons.append(f"{flags} appl{verb} to --optimizer sgd; {cfg.optimizer} has no momentum setting")
    elif "nesterov" in names and cfg.nesterov and cfg.momentum == 0:  # trainer.build_optimizer: it needs momentum
        reasons.append("--nesterov is a kind of momentum; --momentum 0 has none")
    flags, verb = named("step_size", "gamma")
    if flags and cfg.schedule != "step":
        reasons.append(f"{flags} appl{verb} to --schedule step; --schedule {cfg.schedule} does not decay in steps")
    flags, verb = named("warmup_epochs")
    if flags and cfg.schedule == "triangle":  # engine/schedule.py: triangle makes its own rise
        reasons.append(f"{flags} does not apply to --schedule triangle, which rises from 0.2 lr by itself")
    flags, verb = named("bias_lr_scale")
    if flags:
        from .models.registry import has_norm_biases  # torch: only for this setting (the parser imports this module)

        if not has_norm_biases(cfg.model):  # its parameter group would be empty
            reasons.append(f"{flags} applies to BatchNorm biases; {cfg.model} has no BatchNorm layers")
    if "sync_bn" in names and cfg.sync_bn:  # a resumed run's, resumed on one process, is kept: it changes nothing
        launched = os.environ.get("WORLD_SIZE", "") if "RANK" in os.environ else ""  # torchrun's; --procs ignored
        if (int(launched) if launched.isdigit() else cfg.procs) == 1:
            reasons.append("--sync-bn applies to data-parallel training (--procs N, or torchrun with more than one "
                           "process); one process's BatchNorm already normalises over the whole batch")
    # (--sync-bn on a model without BatchNorm: the trainer refuses it from any source, having built the model)
    return reasons


def given_value(value) -> str:
    """A flag's value as typed after it: ' 0.5', ' 64' (not 64.0); nothing for an on/off flag."""
    if isinstance(value, bool):
        return ""
    return f" {value:g}" if isinstance(value, float) else f" {value}"
