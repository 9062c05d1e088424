"""Command line: argument parsing and dispatch only. Heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import ConvzooError

TRAIN_FLAGS = {
    # dest: (flags, type, help). Seeds' spellings are aliases so their users' scripts keep working.
    "model": (["--model"], str, "model name (convzoo summary lists them)"),
    "dataset": (["--dataset"], str, "mnist | fashion-mnist | cifar10"),
    "data_path": (["--data-path", "--data_path"], str, "folder with the data set's files"),
    "output_dir": (["--output-dir", "--ckpt_path", "--ckpt-path"], str, "run directory (default runs/MODEL-DATASET)"),
    "epochs": (["--epochs", "--epoch_size", "--epoch-size"], int, "epochs"),
    "steps_per_epoch": (["--steps-per-epoch", "--steps"], int, "steps per epoch (0: one pass)"),
    "batch_size": (["--batch-size", "--batch_size", "-b"], int, "global batch size"),
    "optimizer": (["--optimizer", "--opt"], str, "sgd | adam | adamw"),
    "lr": (["--lr", "--learning_rate", "--learning-rate"], float, "peak learning rate"),
    "momentum": (["--momentum"], float, "SGD momentum"),
    "weight_decay": (["--weight-decay", "--wd"], float, "weight decay"),
    "schedule": (["--schedule", "--lr-scheduler"], str, "constant | step | cosine | onecycle"),
    "warmup_epochs": (["--warmup-epochs"], float, "linear warm-up epochs"),
    "step_size": (["--lr-step-size"], int, "epochs between decays (step schedule)"),
    "gamma": (["--lr-gamma"], float, "decay factor (step schedule)"),
    "label_smoothing": (["--label-smoothing"], float, "label smoothing"),
    "augment": (["--augment"], str, "none | shift | flip | shift-flip"),
    "shift_pad": (["--shift-pad"], int, "largest random shift in pixels for --augment shift"),
    "amp": (["--amp"], str, "none | bf16 | fp16 (fp16 needs CUDA)"),
    "seed": (["--seed"], int, "random seed"),
    "val_split": (["--val-split", "--validation_split"], float, "hold out this fraction of train (Keras' validation_split)"),
    "train_limit": (["--train-limit"], int, "use only the first N training images"),
    "device": (["--device", "--device_target", "--device-target"], str, "auto | cpu | cuda | mps"),
    "threads": (["--threads"], int, "CPU threads (0: the model's default)"),
    "print_freq": (["--print-freq"], int, "log a step line every N steps"),
    "save_every": (["--save-every"], int, "also write last.pt every N steps"),
    "restore": (["--restore", "--restore_path", "--restore-path"], str, "initialise from this checkpoint's matching tensors"),
}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return args.handler(args) or 0
    except ConvzooError as exc:
        print(f"convzoo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("convzoo: interrupted", file=sys.stderr)
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convzoo", description="Train, evaluate, quantize, export, predict with "
                                     "and serve the classic convolutional networks.")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("data", help="download | verify | info a data set")
    p.add_argument("action", choices=["download", "verify", "info"])
    p.add_argument("name")
    p.add_argument("--data-path", "--data_path", dest="data_path")
    p.add_argument("--mirror", action="append", help="base URL to download from (repeatable; tried in order)")
    p.add_argument("--timeout", type=float, default=30, help="seconds per network read")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_data)

    p = sub.add_parser("train", help="train a model")
    p.add_argument("--config", help="named preset (e.g. lenet-mindspore)")
    for dest, (flags, typ, help_) in TRAIN_FLAGS.items():
        p.add_argument(*flags, dest=dest, type=typ, default=None, help=help_)
    p.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")], default=None,
                   help="train on these class indices only, e.g. 0,1,2")
    p.add_argument("--restore-exclude", "--restore_exclude", dest="restore_exclude", type=_globs, default=None,
                   help="comma-separated globs of tensors not to restore, e.g. 'fc3.*'")
    p.add_argument("--freeze", type=_globs, default=None, help="comma-separated globs of parameters to keep fixed")
    p.add_argument("--deterministic", action="store_const", const=True, default=None)
    p.add_argument("--channels-last", action="store_const", const=True, default=None)
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last.pt")
    p.add_argument("--exist-ok", action="store_true", help="overwrite a run already in --output-dir")
    p.add_argument("--json", action="store_true", help="JSON lines on stdout instead of text")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("eval", help="evaluate a checkpoint or ONNX model on the test set")
    p.add_argument("--ckpt", "--ckpt_path", "--checkpoint_path", dest="ckpt")
    p.add_argument("--model", help="an ONNX file, or a shipped pretrained name like lenet5:mnist")
    p.add_argument("--dataset")
    p.add_argument("--data-path", "--data_path", dest="data_path")
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=int, default=1000)
    p.add_argument("--device", "--device_target", dest="device", default="auto")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--confusion", help="also write the normalised confusion matrix to this PNG")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and MACs")
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--input", help="C,H,W (default: the model's own input)")
    p.set_defaults(handler=cmd_summary)

    return parser


def _globs(text: str) -> list[str]:
    return [g.strip() for g in text.split(",") if g.strip()]


# ---------------------------------------------------------------- handlers


def cmd_data(args) -> int:
    from .data.catalog import get_spec
    from .data.fetch import download_dataset, cache_root, locate
    from pathlib import Path

    spec = get_spec(args.name)
    if args.action == "download":
        located = download_dataset(spec, Path(args.data_path) if args.data_path else cache_root(), mirrors=args.mirror,
                                   timeout=args.timeout)
    else:
        located = locate(spec, args.data_path, download=False)
    if args.action == "info":
        return print_info(located, args.json)
    for check in located.checks:
        print(f"{check.status:>9}  {check.path}  ({check.detail})")
    if args.action == "download":
        print(f"{spec.title} downloaded and verified in {located.root / spec.name}")
    if not located.verified:
        print(located.warning(), file=sys.stderr)
    return 0 if located.verified else 1


def print_info(located, as_json: bool) -> int:
    from .data.tensors import read_split

    spec = located.spec
    splits = {s: read_split(located, s) for s in ("train", "test")}
    info = {
        "dataset": spec.name, "title": spec.title, "found_in": str(located.root), "source": located.source,
        "verified": located.verified, "image_shape": list(spec.image_shape), "classes": list(spec.classes),
        "counts": {s: len(split) for s, split in splits.items()},
        "official_counts": spec.sizes,
        "class_counts": {s: split.labels.bincount(minlength=spec.num_classes).tolist() for s, split in splits.items()},
        "files": {c.path.name: {"path": str(c.path), "status": c.status, "detail": c.detail} for c in located.checks},
    }
    if located.warning():
        print(located.warning(), file=sys.stderr)
    if as_json:
        print(json.dumps(info, indent=1))
        return 0
    print(f"{spec.title} ({spec.name})")
    print(f"  found in     {located.root}  [{located.source}]")
    print(f"  verified     {'yes: every file matches its official checksum' if located.verified else 'NO (see warning)'}")
    print(f"  image shape  {' x '.join(map(str, spec.image_shape))} (C x H x W), uint8")
    for s, n in info["counts"].items():
        print(f"  {s:<12} {n:,} images (official: {spec.sizes[s]:,}); per class {info['class_counts'][s]}")
    print(f"  classes      {', '.join(spec.classes)}")
    print(f"  mean / std   {spec.mean} / {spec.std}")
    for c in located.checks:
        print(f"  {c.status:>9}  {c.path.name}  ({c.detail})")
    return 0


def cmd_train(args) -> int:
    from .config import build_config
    from .engine.trainer import train

    overrides = {dest: getattr(args, dest) for dest in TRAIN_FLAGS}
    overrides.update(classes=args.classes, restore_exclude=args.restore_exclude, freeze=args.freeze,
                     deterministic=args.deterministic, channels_last=args.channels_last)
    cfg = build_config(args.config, overrides)
    train(cfg, resume=args.resume, exist_ok=args.exist_ok, json_lines=args.json, quiet=args.quiet)
    return 0


def cmd_eval(args) -> int:
    from .engine.evaluate import evaluate_checkpoint
    from .engine.trainer import configure_threads
    from .errors import ConfigError
    import torch

    if not args.ckpt and not args.model:
        raise ConfigError("eval needs --ckpt PATH (a convzoo checkpoint) or --model (an .onnx file or NAME:DATASET)")
    configure_threads(args.threads or 2, torch.device("cpu"))
    result = evaluate_checkpoint(args.ckpt, dataset=args.dataset, data_path=args.data_path, device=args.device,
                                 batch_size=args.batch_size)
    if args.json:
        print(json.dumps({"accuracy": result.accuracy, "loss": result.loss, "per_class": dict(zip(result.classes,
                          result.per_class)), "confusion": result.confusion.tolist()}))
    else:
        print(f"'Accuracy': {result.accuracy:.4f}")
        print(result.table())
    if args.confusion:
        from .report.plots import plot_confusion

        plot_confusion(result.confusion, result.classes, args.confusion)
    return 0


def cmd_summary(args) -> int:
    from .models.registry import create_model, get_model_info
    from .models.summary import format_summary, summarize
    from .errors import ConfigError

    info = get_model_info(args.model)
    if args.input:
        try:
            shape = tuple(int(v) for v in args.input.split(","))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            raise ConfigError(f"--input must be C,H,W with positive integers, got {args.input!r}") from None
    else:
        shape = (info.in_channels, info.input_size, info.input_size)
    model = create_model(args.model, num_classes=args.num_classes, in_channels=shape[0])
    try:
        rows = summarize(model, shape)
    except RuntimeError as exc:
        raise ConfigError(f"model {args.model} cannot take input {shape}: {str(exc).splitlines()[0]}") from None
    print(format_summary(args.model, rows, model))
    return 0
