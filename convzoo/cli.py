"""Command line: argument parsing and dispatch only. Heavy modules are imported inside the handlers."""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import signal
import sys
import threading
from pathlib import Path

from .errors import NOT_UTF8, ConfigError, ConvzooError, Terminated, WriteError, not_utf8, path_error, printable

TRAIN_PACKAGES = ("torch", "torchao", "yaml", "tqdm", "safetensors", "matplotlib", "onnxscript")


def run() -> int:
    """The `convzoo` command (the console script and `python -m convzoo`): main, then Ctrl-C ignored. The
    command is over, its output flushed: a Ctrl-C in the second or two the interpreter then takes to tear
    torch down printed a traceback from an atexit callback. (Not in main: the API and tests call it.)"""
    try:
        return main()
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)


def main(argv=None) -> int:
    keep_standard_streams_taken()
    parser = build_parser()
    previous = {}
    stdout, sys.stdout = sys.stdout, Output(sys.stdout)
    try:
        try:
            args, extra = parser.parse_known_args(argv)
            if extra:  # named by the sub-command that was given, whose --help lists what it takes
                (getattr(args, "parser", None) or parser).error(f"unrecognized arguments: {' '.join(extra)}")
        except SystemExit:  # --help or --version printed (argparse itself ignores a failed write): flushed now
            sys.stdout.flush()
            raise
        if not getattr(args, "handler", None):
            parser.print_help()
            return 2
        TERMINATED.clear()
        INTERRUPTED.clear()
        previous = terminate_as_interrupt()
        check_option_text(args)
        code = args.handler(args) or 0
        sys.stdout.flush()  # here, not at exit: a failure then is a traceback-free line too
        return code
    except OutputError as exc:  # `> /dev/full`, a full disk: whatever the command was printing
        print(f"convzoo: error: {exc}", file=sys.stderr)
        silence_stdout()
        return 2
    except ConvzooError as exc:
        if stop_signal():  # an error the SIGTERM or Ctrl-C caused (see TERMINATED)
            return stopped_by(stop_signal())
        tell(f"convzoo: error: {exc}")
        return 2
    except ModuleNotFoundError as exc:
        # The base install serves and predicts ONNX files; training needs the [train] extra.
        if (exc.name or "").split(".")[0] not in TRAIN_PACKAGES:
            raise
        print(f"convzoo: error: this command needs the training packages (no module named {exc.name!r}); "
              "install them with: pip install 'convzoo[train]'", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:  # Terminated (a SIGTERM; train saved last.pt for it) carries signum 15
        return stopped_by(int(getattr(exc, "signum", signal.SIGINT)))
    except BrokenPipeError:
        # `convzoo predict ... | head -1`: the reader left; stop quietly, as cat and grep do.
        silence_stdout()
        return 141
    except Exception as exc:
        unusable = path_error(exc)  # a 300-byte file name, a link loop: the user's path, not a bug
        if unusable is not None:
            tell(f"convzoo: error: {unusable}")
            return 2
        if not stop_signal():
            raise
        return stopped_by(stop_signal())  # the ImportError a SIGTERM mid-import became, ...
    finally:
        sys.stdout = stdout
        try:  # what an error path printed: flushed now, or a full disk is Python's own error at exit (code 120)
            if stdout is not None:
                stdout.flush()
        except OSError:
            silence_stdout()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stopped_by(signum: int) -> int:
    """Ctrl-C or a SIGTERM ended the command: one line saying which, and the shell's exit code for it."""
    tell(f"convzoo: {'terminated' if signum == signal.SIGTERM else 'interrupted'}")
    return 128 + signum


def another_rank() -> bool:
    """Whether this is torchrun's rank 1, 2, ...: every rank finds the same user error or signal, and
    only rank 0 tells it (16 ranks printed 16 copies); each still exits with its code."""
    return os.environ.get("RANK", "0") != "0" and "WORLD_SIZE" in os.environ


def tell(line: str) -> None:
    """One line to the user on stderr, from rank 0 only (another_rank)."""
    if not another_rank():
        print(line, file=sys.stderr)


class OutputError(WriteError):
    """Standard output could not be written (no space left, an I/O error); not a broken pipe."""


class Output:
    """sys.stdout while a command runs: a failed write becomes OutputError, so every command's prints
    fail as one `convzoo: error:` line, handled once in main instead of at each print."""

    def __init__(self, stream):
        self.stream = stream  # None where the command was started with stdout closed (`>&-`)

    def write(self, text):
        return self._guarded("write", text)

    def writelines(self, lines):
        return self._guarded("writelines", lines)

    def flush(self):
        return None if self.stream is None else self._guarded("flush")

    def _guarded(self, method, *args):
        if self.stream is None:
            raise OutputError("cannot write the output: standard output is closed")
        try:
            return getattr(self.stream, method)(*args)
        except BrokenPipeError:  # the reader left: main's quiet exit 141
            raise
        except OSError as exc:
            raise OutputError(f"cannot write the output: {exc.strerror or exc}") from None

    def __getattr__(self, name):  # isatty, fileno, encoding, ...: the stream's own
        return getattr(self.stream, name)


def keep_standard_streams_taken() -> None:
    """Started with stdin, stdout or stderr closed (`>&-`), the next file opened would get that number, and
    a print or a child process's output would land in it (a checkpoint being written): /dev/null holds it."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)


def silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered goes nowhere instead of failing again at exit."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # not a real file (a test's capture): nothing to flush at exit
        pass


def terminate_as_interrupt() -> dict:
    """A SIGTERM (docker stop, kubectl, timeout) ends any command as Ctrl-C does: half-written files are
    removed by the code that writes them, and the command says so and exits 143 (killed outright, it
    left temp files and printed nothing). Ctrl-C raises KeyboardInterrupt as Python's own handler does,
    and is remembered (INTERRUPTED). Train and serve set their own handlers while they run. Returns the
    handlers replaced by signal number; none where the embedding program has its own, or off the main thread."""
    if threading.current_thread() is not threading.main_thread():
        return {}

    def terminate(signum, frame):
        TERMINATED.set()
        raise Terminated

    def interrupt(signum, frame):
        INTERRUPTED.set()
        raise KeyboardInterrupt

    previous = {}
    for signum, default, handler in ((signal.SIGTERM, signal.SIG_DFL, terminate),
                                     (signal.SIGINT, signal.default_int_handler, interrupt)):
        if signal.getsignal(signum) is default:
            previous[signum] = signal.signal(signum, handler)
    return previous


# Set by the SIGTERM handler: raised inside a C extension's import (onnxruntime's), Terminated comes out
# as ImportError("initialization failed"), which read as a traceback or "not a loadable ONNX model".
# INTERRUPTED likewise for Ctrl-C: inside a lazy import in torch.onnx's exporter, KeyboardInterrupt left
# a half-made module, and the exporter's TorchExportError (an AttributeError) was a traceback, exit 1.
TERMINATED = threading.Event()
INTERRUPTED = threading.Event()


def stop_signal() -> int | None:
    """The signal that stopped the command, if one did: SIGTERM, else Ctrl-C's SIGINT."""
    return signal.SIGTERM if TERMINATED.is_set() else signal.SIGINT if INTERRUPTED.is_set() else None


class Parser(argparse.ArgumentParser):
    """argparse, but a bad flag is the same one line as every other user error: `convzoo: error: ...`."""

    @property
    def command(self) -> str:
        """The sub-command this parser reads ('train'); '' for the top level."""
        return self.prog.removeprefix("convzoo").strip()

    def error(self, message):
        where = f"{self.command}: " if self.command else ""
        self.exit(2, None if another_rank() else f"convzoo: error: {where}{message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):  # each sub-command's parser is called with its own args
        self.check_one_spelling(sys.argv[1:] if args is None else list(args))
        return super().parse_known_args(args, namespace)

    def check_one_spelling(self, args: list[str]) -> None:
        """Two spellings of one setting (`--epochs 1 --epoch_size 2`: torchvision's and a seed's): argparse
        kept the last without a word, where the API and config files refuse a setting given twice."""
        used = {self.spelling(a) for a in itertools.takewhile(lambda a: a != "--", args) if a.startswith("-")}
        for action in self._actions:
            given = [s for s in action.option_strings if s in used]
            if len(given) > 1:
                self.error(f"{' and '.join(given)} are one setting, given twice; keep one")

    def spelling(self, arg: str) -> str | None:
        """The option string `arg` stands for, as argparse reads it: `--lr=0.1`, a unique prefix (`--epoch_s`
        for --epoch_size), a short option with its value attached (`-b64`)."""
        name = arg.split("=", 1)[0]
        if name in self._option_string_actions:
            return name
        if name.startswith("--"):
            matches = [s for s in self._option_string_actions if s.startswith(name)]
            return matches[0] if len(matches) == 1 else None
        return name[:2] if name[:2] in self._option_string_actions else None


def number(kind, low=None, high=None):
    """An argparse type: int or float within [low, high], finite."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a{'n integer' if kind is int else ' number'}") from None
        if value != value or value in (float("inf"), float("-inf")) or (low is not None and value < low) \
                or (high is not None and value > high):
            bounds = f"{low if low is not None else '-inf'}..{high if high is not None else 'inf'}"
            raise argparse.ArgumentTypeError(f"{text} is outside {bounds}")
        return value
    return parse


# Options whose path convzoo keeps (checkpoints, config.yaml, reports) or hands to onnxruntime, which need
# text: a name holding bytes that are not UTF-8 (from an old Latin-1 archive) was a traceback there (train
# --output-dir after making half a run folder, export in onnxruntime) or "not a loadable ONNX model". Paths
# only read or written (a data set to score, image files, PNG outputs) may have such names.
KEPT_PATHS = {"": {"output_dir", "ckpt", "model", "restore", "config"}, "train": {"data_path"},
              "export": {"output"}, "convert": {"output"}}


def check_option_text(args) -> None:
    """Refuse an option given as empty text, which the commands would take as not given (`--config ""`
    trained the defaults, `--host ""` listened on every interface, `--output-dir ""` meant runs/...), and
    a kept path (KEPT_PATHS) that is not UTF-8."""
    kept = KEPT_PATHS[""] | KEPT_PATHS.get(args.parser.command, set())
    for action in (a for a in args.parser._actions if a.option_strings):
        value = getattr(args, action.dest, None)
        if blank(value):  # `--output-dir "$OUT"` with OUT unset quietly meant the default folder
            raise ConfigError(f"argument {action.option_strings[0]}: must not be empty")
        if action.dest in kept and any(map(not_utf8, value if isinstance(value, list) else [value])):
            raise ConfigError(f"argument {action.option_strings[0]}: {value} {NOT_UTF8}")


def blank(value) -> bool:
    """Empty text, or a list option given it: parsed to [] (`--freeze ""` froze nothing), or holding it
    (an appended `--mirror ""`)."""
    if isinstance(value, list):
        return not value or any(map(blank, value))
    return isinstance(value, str) and not value.strip()


def package_version() -> str:
    from . import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    from .config import TTA_CHOICES

    parser = Parser(prog="convzoo", description="Train, evaluate, quantize, export, predict with "
                                     "and serve the classic convolutional networks.")
    parser.add_argument("--version", action="version", version=f"convzoo {package_version()}")
    sub = parser.add_subparsers(metavar="COMMAND")

    p = sub.add_parser("data", help="download | verify | info | sample a data set")
    p.add_argument("action", choices=["download", "verify", "info", "sample"])
    p.add_argument("name")
    p.add_argument("--count", type=number(int, 1, 100_000), default=5, help="sample: how many test images to save as PNG")
    p.add_argument("--output", default="samples", help="sample: folder for the PNG files")
    p.add_argument("--data-path", "--data_path", dest="data_path")
    p.add_argument("--mirror", action="append", help="base URL to download from (repeatable; tried in order)")
    p.add_argument("--timeout", type=number(float, 0.1, 3600), default=30, help="seconds per network read")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (sample: one per PNG, a line each: "
                        "JSON Lines)")
    # How `folder` is read, as train reads it (a run with --test-split 0.5 holds out another split):
    # checked as train checks them, and refused with a catalog data set (cmd_data's folder_rule).
    p.add_argument("--test-split", type=float, help="folder: the fraction of each class held out (as train's)")
    p.add_argument("--image-size", type=int, help="folder: the square size images are resized to (as train's)")
    p.add_argument("--channels", type=int, help="folder: 1 (grey, the default here) or 3 (RGB), as train's")
    p.set_defaults(handler=cmd_data)

    p = sub.add_parser("train", help="train a model",
                       description="Train a model. The defaults shown are those of a run given no --config; a "
                                   "--config preset or file replaces them with its settings, and --resume starts "
                                   "from the run's own; flags given win over both.")
    p.add_argument("--config", help="a named preset (e.g. lenet-mindspore) or a YAML file of settings "
                                                    "(keys as the flags: model, dataset, epochs, lr, ...; a run's own "
                                                    "config.yaml works)")
    add_train_flags(p)
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
    p.add_argument("--batch-size", "--batch_size", dest="batch_size", type=number(int, 1, 65536), default=1000)
    p.add_argument("--device", "--device_target", dest="device", default="auto")
    p.add_argument("--threads", type=number(int, 0, 1024), default=0, help="0: $OMP_NUM_THREADS if set, else 2")
    p.add_argument("--confusion", help="also write the normalised confusion matrix to this PNG")
    p.add_argument("--test-limit", type=number(int, 0, 10**9), default=0,
                   help="score the first N test images only (0: all)")
    add_runtime_flag(p)
    add_describe_flags(p)
    p.add_argument("--tta", choices=TTA_CHOICES, help="checkpoints: test-time augmentation (default: the one the "
                                                      "run was scored with, from its config)")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (accuracy, per_class, confusion) "
                        "instead of the table")
    p.set_defaults(handler=cmd_eval)

    p = sub.add_parser("summary", help="layers, output shapes, parameters and MACs")
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=number(int, 2, 10_000), default=10,
                   help="outputs of the classifier (at least two, as train makes; default 10)")
    p.add_argument("--input", help="C,H,W (default: the model's own input)")
    p.set_defaults(handler=cmd_summary)

    p = sub.add_parser("quantize", help="QAT or PTQ to an int8 ONNX model, with an fp32-vs-int8 report")
    p.add_argument("--ckpt", "--ckpt_path", dest="ckpt", help="fp32 convzoo checkpoint (omit with --config to train first)")
    p.add_argument("--config", help="train this preset first (e.g. lenet-quant-mindspore), then quantize")
    p.add_argument("--method", default="qat", help="qat | ptq")
    p.add_argument("--train-epochs", type=number(int, 1, 10_000),
                   help="with --config: the preset's training epochs (default: the preset's own)")
    p.add_argument("--epochs", type=number(int, 1, 10_000), help="QAT fine-tune epochs (default 1)")
    p.add_argument("--lr", type=number(float, 1e-12, 100), help="QAT fine-tune peak learning rate (default 0.001)")
    p.add_argument("--calib-batches", type=number(int, 1, 100_000), default=32)
    p.add_argument("--train-limit", type=number(int, 0, 10**9), default=0,
                   help="fine-tune and calibrate on the first N training images only (0: all)")
    p.add_argument("--output-dir")
    p.add_argument("--exist-ok", action="store_true", help="overwrite an earlier quantization in --output-dir")
    p.add_argument("--data-path", "--data_path", dest="data_path")
    p.add_argument("--threads", type=number(int, 0, 1024), default=0, help="0: $OMP_NUM_THREADS if set, else 2")
    add_runtime_flag(p)
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("report", help="a run's history table and curves; several runs side by side")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--output", "-o", help="report.md path (default: in the run, or ./report.md for several)")
    p.add_argument("--html", action="store_true", help="also write a self-contained .html page")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (checked in onnxruntime) or torch.export .pt2")
    p.add_argument("--ckpt", "--ckpt_path", dest="ckpt", required=True)
    p.add_argument("--format", choices=["onnx", "pt2"], default="onnx")
    p.add_argument("--output", "-o", help="output file (default: beside the checkpoint, named after it: best.pt -> "
                                          "best.onnx, best-int8.onnx or best.pt2; for a shipped NAME:DATASET, in the "
                                          "current folder: lenet5:mnist -> ./lenet5-mnist.onnx)")
    p.add_argument("--int8", action="store_true", help="int8 ONNX via post-training quantization")
    p.add_argument("--opset", type=number(int, 18, 23), default=18)
    p.add_argument("--dynamic-batch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--data-path", "--data_path", dest="data_path", help="data for the int8 calibration and checks")
    p.add_argument("--exist-ok", action="store_true", help="overwrite an existing --output")
    p.add_argument("--json", action="store_true",
                   help="one JSON object on stdout (path, max_abs_diff or int8 "
                        "details) instead of the line")
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser("convert", help="another trainer's state_dict -> a convzoo checkpoint (for eval, predict, "
                                       "export, serve, quantize)")
    p.add_argument("weights", metavar="WEIGHTS", help="a torch.save'd state_dict, a dict holding one under state_dict, "
                                                     "model_state_dict or model, or a plain .safetensors file")
    p.add_argument("--model", required=True, help="the architecture the weights are for (e.g. lenet5)")
    p.add_argument("--dataset", required=True, help="the catalog data set they were trained on (mnist, fashion-mnist, "
                                                    "cifar10): its classes, input size and normalisation")
    p.add_argument("--output", "-o", required=True, help="the checkpoint to write (.pt or .pth)")
    p.add_argument("--exist-ok", action="store_true", help="overwrite an existing --output")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout instead of the line")
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("predict", help="classify image files")
    p.add_argument("--model", required=True, help="model.onnx, a convzoo checkpoint, or NAME:DATASET")
    p.add_argument("images", nargs="*", help="image files, folders (searched recursively) or quoted patterns like 'shots/*.jpg'")
    p.add_argument("--topk", type=number(int, 1, 1000), default=3, help="how many classes to list, 1..1000; a model with fewer classes lists all of them")
    p.add_argument("--json", action="store_true",
                   help="JSON Lines: one JSON object per image, one line each (python "
                        "-m json.tool --json-lines reads them)")
    p.add_argument("--from-test", type=number(int, 1, 100_000), metavar="N",
                   help="predict the first N test images instead")
    p.add_argument("--grid", help="with --from-test: where to write the 5x5 grid (default grid.png, which is not "
                                  "written over a file there that is not a PNG image)")
    p.add_argument("--data-path", "--data_path", dest="data_path")
    p.add_argument("--threads", type=number(int, 1, 1024), default=1)
    add_runtime_flag(p, auto="auto: onnxruntime, whose start-up is about 0.4 s shorter than OpenVINO's (a "
                             "prediction's time is mostly start-up and decoding files)")
    add_describe_flags(p)
    p.set_defaults(handler=cmd_predict)

    p = sub.add_parser("serve", help="HTTP API and a draw-a-digit page (onnxruntime inside)")
    p.add_argument("--model", required=True)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1; 0.0.0.0: every interface)")
    p.add_argument("--port", type=number(int, 0, 65535), default=8000, help="0: any free port (printed)")
    p.add_argument("--threads", type=number(int, 1, 1024), default=1, help="onnxruntime threads per worker")
    p.add_argument("--max-upload-mb", type=number(float, 0.001, 4096), default=5.0,
                   help="larger request bodies get 413 (at most 4096)")
    p.add_argument("--workers", type=number(int, 1, 256), default=1,
                   help="server processes, each with its own listening socket and batcher (Linux; elsewhere uvicorn's)")
    add_runtime_flag(p)
    p.add_argument("--batch-window-ms", type=number(float, 0, 1000), default=1.0, metavar="MS",
                   help="requests arriving within MS of the oldest waiting one run as one onnxruntime call "
                        "(default 1; 0: batching off)")
    p.add_argument("--max-batch", type=number(int, 1, 256), default=32, metavar="N",
                   help="most requests per batch, each of up to 64 images (default 32)")
    p.add_argument("--max-queue", type=number(int, 1, 65536), default=256, metavar="N",
                   help="requests waiting for a batch, per worker; more get 503 (default 256)")
    add_describe_flags(p)
    p.set_defaults(handler=cmd_serve)

    for command in sub.choices.values():  # args.parser: errors found after parsing are the sub-command's own
        command.set_defaults(parser=command)
    return parser


def add_runtime_flag(parser, auto: str = "auto: OpenVINO for int8 files where it is installed (faster there), "
                                          "else onnxruntime") -> None:
    from .deploy.runtime import RUNTIMES

    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help=f"what runs ONNX files: onnxruntime, openvino (pip install 'convzoo[openvino]'), or {auto}")


def add_describe_flags(parser) -> None:
    """How to read an ONNX classifier made elsewhere (timm, torchvision, Ultralytics, Keras), which carries
    no convzoo description (deploy/foreign.py)."""
    from .deploy.foreign import INTERPOLATIONS

    group = parser.add_argument_group("ONNX files made elsewhere (no convzoo metadata)")
    group.add_argument("--classes", metavar="FILE|N|A,B,...",
                       help="class names: a file (one per line, or JSON: a list, {index: name}, a Hugging Face "
                            "config.json's id2label), names separated by commas, or a count N (names 0..N-1); "
                            "an Ultralytics export names its own")
    group.add_argument("--mean", metavar="M[,M,M]",
                       help="per-channel mean its training subtracted from pixels in 0..1 (ImageNet: "
                            "0.485,0.456,0.406; 0 when it took plain 0..1 pixels)")
    group.add_argument("--std", metavar="S[,S,S]",
                       help="per-channel std it divided by (ImageNet: 0.229,0.224,0.225; 1 for plain 0..1 "
                            "pixels; 0.0039215686 for 0..255 pixels)")
    group.add_argument("--input-size", type=number(int, 1, 512), metavar="SIDE",
                       help="the input's side, when the graph leaves it open")
    group.add_argument("--crop", type=number(float, 0.05, 1), metavar="FRACTION",
                       help="keep the centre square of this fraction of the shorter side, as timm's crop_pct "
                            "(default 1: the whole centre square; torchvision and timm ImageNet models: 0.875)")
    group.add_argument("--interpolation", choices=INTERPOLATIONS,
                       help="Pillow's filter for resizing photos to the input (default bilinear; timm's ImageNet "
                            "models: bicubic)")
    group.add_argument("--preprocessor", metavar="FILE",
                       help="mean, std, crop, interpolation and input side from a timm config.json "
                            "(pretrained_cfg) or a Hugging Face preprocessor_config.json; flags given override it")
    group.add_argument("--preprocess", choices=("resize", "digit", "fashion"),
                       help="how photos become input: resize (default), or digit / fashion: read as MNIST's / "
                            "Fashion-MNIST's images were made (the strokes cropped, centred on black, 28x28)")


def description_flags(args) -> bool:
    """Any of --classes, --mean, --std, --input-size, --crop, --interpolation, --preprocessor, --preprocess given."""
    from .deploy.foreign import HINTS

    return any(getattr(args, k, None) is not None for k in (*HINTS, "preprocessor"))


def describe_hints(args) -> dict:
    """--classes, --mean, --std, --input-size, --crop, --interpolation, --preprocess (and --preprocessor's
    file) as Predictor's `describe` (unset ones left out); refused for a model that is not an ONNX file
    before a class file is read."""
    from .deploy.foreign import HINTS, not_for_checkpoints, parse_numbers, read_classes, with_preprocessor
    from .metadata import is_onnx

    if description_flags(args) and getattr(args, "model", None) and not is_onnx(args.model):
        raise not_for_checkpoints(args.model)
    hints = {k: getattr(args, k) for k in HINTS if getattr(args, k, None) is not None}
    if "classes" in hints:
        hints["classes"] = read_classes(hints["classes"])
    for flag in ("mean", "std"):
        if flag in hints:
            hints[flag] = parse_numbers(hints[flag], f"--{flag}")
    return with_preprocessor(hints, getattr(args, "preprocessor", None))



def add_train_flags(parser) -> None:
    """One flag per TrainConfig field, from the field's own declaration (config.opt). Defaults stay
    None here so a preset or a resumed run's settings show through wherever no flag was given."""
    from .config import TrainConfig

    for f in dataclasses.fields(TrainConfig):
        meta = f.metadata
        flags = meta["flags"] or (f"--{f.name.replace('_', '-')}",)
        if f.type == "bool":  # off unless given
            parser.add_argument(*flags, dest=f.name, action="store_const", const=True, default=None, help=meta["help"])
            continue
        kind = meta["parse"] or {"int": int, "float": float}.get(f.type.split(" |")[0], str)
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        # The field's default, shown here as the parser's stays None; None and [] are explained by the help itself.
        shown = "" if default in (None, []) else f" (default: {default:g})" if isinstance(default, float) \
            else f" (default: {default})"
        help_text = (meta["help"] + shown).replace("%", "%%")  # argparse formats help with %
        parser.add_argument(*flags, dest=f.name, type=kind, default=None, help=help_text,
                            metavar=f.name.upper() if not meta["choices"] else "{" + ",".join(meta["choices"]) + "}")


# ---------------------------------------------------------------- handlers


def cmd_data(args) -> int:
    from .cache import cache_root
    from .data.catalog import get_spec
    from .data.fetch import download_dataset, locate
    from .data.info import print_info, save_samples

    spec = get_spec(args.name)
    # A folder has no official files: verify printed nothing and exited 0, download 'already present and
    # verified' (download_dataset refuses it itself, but a folder was first found "present").
    if args.action in ("verify", "download") and not spec.reader.official:
        raise ConfigError(f"{args.name} reads your own images: there are no official files to {args.action}; "
                          f"`convzoo data info {args.name} --data-path FOLDER` describes a folder")
    rule = folder_rule(args)
    if spec.folder:
        spec = spec.reading(rule)
    if args.action == "sample":
        return save_samples(locate(spec, args.data_path, download=False), args.count, Path(args.output), args.json)
    located = present = verified_copy(spec, args.data_path) if args.action == "download" else None
    if args.action == "download" and not present:
        located = download_dataset(spec, Path(args.data_path) if args.data_path else cache_root(), mirrors=args.mirror,
                                   timeout=args.timeout)
    elif not present:
        located = locate(spec, args.data_path, download=False)
    if args.action == "info":
        return print_info(located, args.json)
    if args.json:
        print(json.dumps({"dataset": spec.name, "found_in": str(located.root), "verified": located.verified,
                          "downloaded": args.action == "download" and not present,
                          "files": [{"status": c.status, "path": str(c.path), "detail": c.detail}
                                    for c in located.checks]}))
    else:
        for check in located.checks:
            print(f"{check.status:>9}  {check.path}  ({check.detail})")
        if args.action == "download":
            where = located.root if present else located.root / spec.name
            print(f"{spec.title} {'already present' if present else 'downloaded'} and verified in {where}")
    if not located.verified:
        print(located.warning(), file=sys.stderr)
    return 0 if located.verified else 1


def folder_rule(args):
    """data's --test-split, --image-size and --channels as a FolderRule, checked as train checks them
    (ranges, a folder split by hand, refused with a catalog data set unless equal to the default)."""
    from .config import FOLDER_ONLY, build_config
    from .data.catalog import FolderRule

    given = {name: getattr(args, name) for name in FOLDER_ONLY}
    if all(value is None for value in given.values()):
        return FolderRule()
    cfg = build_config(None, {"dataset": args.name, "data_path": args.data_path, **given})
    return FolderRule(cfg.image_size, cfg.channels or FolderRule.channels, cfg.test_split)


def verified_copy(spec, data_path):
    """A verified copy of the data set where convzoo looks for it (torchvision's download=True also
    skips one that is there), or None: `data download` then needs no network."""
    from .data.fetch import locate
    from .errors import DataError

    try:
        located = locate(spec, data_path, download=False)
    except DataError:
        return None
    return located if located.verified else None


def cmd_train(args) -> int:
    from .config import TrainConfig, build_config
    from .engine.rundir import saved_config

    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    base, source, paths = saved_config(args.config, overrides) if args.resume else (None, "", {})
    overrides.update(paths)
    cfg = build_config(args.config, overrides, base=base, base_source=source)  # checked: bad flags stop here
    from .engine.launch import train  # torch (3-4 s): only for a config that passed

    train(cfg, resume=args.resume, exist_ok=args.exist_ok, json_lines=args.json, quiet=args.quiet)
    return 0


def shipped(path) -> bool:
    """Is `path` a file of the installed package's shipped weights?"""
    from .models.pretrained import package_folder

    return Path(path).resolve().parent == package_folder().resolve()


def cmd_eval(args) -> int:
    from .engine.evaluate import evaluate_checkpoint
    from .engine.runtime import configure_threads, default_threads
    import torch

    if not args.ckpt and not args.model:
        raise ConfigError("eval needs --ckpt PATH (a convzoo checkpoint) or --model (an .onnx file or NAME:DATASET)")
    if args.ckpt and args.model:  # one was scored and the other ignored, without saying which
        raise ConfigError(f"give --ckpt {args.ckpt} or --model {args.model}, not both: eval scores one model")
    threads = configure_threads(args.threads or default_threads(2), torch.device("cpu"))
    if args.model and args.tta:
        raise ConfigError("--tta applies to --ckpt (a PyTorch checkpoint); an ONNX model is scored as it is")
    if description_flags(args) and args.ckpt:
        from .deploy.foreign import not_for_checkpoints

        raise not_for_checkpoints(args.ckpt)
    if description_flags(args) and not args.dataset:  # before the file is read and the runtime built
        raise ConfigError("a model made elsewhere names no data set: eval takes --dataset NAME, whose classes are "
                          "matched to the model's by name")
    hints = describe_hints(args)
    # Beside a checkpoint file by default; shipped weights (NAME:DATASET, or their file named by path)
    # have no folder of the user's to write in: the installed package is not one.
    confusion = args.confusion or (str(Path(args.ckpt).parent / "confusion.png")
                                   if args.ckpt and Path(args.ckpt).is_file() and not shipped(args.ckpt) else None)
    meta = None  # the model's description, read for the check below and (a checkpoint) evaluated from
    if confusion:  # checked before the work: `--confusion best.pt` (or run/curves.png) replaced it with a PNG
        from .report.plots import check_plot_target

        meta = model_meta(args.ckpt or args.model)
        try:
            check_plot_target(confusion, "confusion", default="confusion.png",
                              inputs=[p for p in (args.ckpt, args.model) if p and Path(p).exists()],
                              protected=image_folders(meta, args.data_path, args.dataset))
        except ConvzooError as exc:
            if args.confusion:
                raise
            # the plot beside the checkpoint was not asked for: a read-only run folder (or a user's own
            # confusion.png there) cost the score itself
            unwritten(exc)
            confusion = None
    if args.model:
        from .deploy.predict import evaluate_model_file

        # a checkpoint's run config (an ONNX file has none: not loaded twice for nothing)
        from .metadata import is_onnx

        described = meta or (model_meta(args.model) if not is_onnx(args.model) else None) or {}
        config = described.get("config") if "state_dict" in described else None
        tta = config.get("tta") if isinstance(config, dict) else None
        if tta not in ("none", None):  # the two commands' figures differ for such a run: say why
            print(f"note: --model scores {args.model} as exported, without its run's TTA ({tta}); "
                  "eval --ckpt applies it", file=sys.stderr)

        result = evaluate_model_file(resolve_model(args.model), dataset=args.dataset, data_path=args.data_path,
                                     threads=threads, runtime=args.runtime, limit=args.test_limit, describe=hints)
    else:
        result = evaluate_checkpoint(args.ckpt, dataset=args.dataset, data_path=args.data_path, device=args.device,
                                     batch_size=args.batch_size, tta=args.tta, limit=args.test_limit,
                                     ckpt=meta if meta and "state_dict" in meta else None)
    if args.json:
        print(json.dumps({"accuracy": result.accuracy, "per_class": dict(zip(result.classes,
                          result.per_class)), "confusion": result.confusion.tolist()}))
    else:
        print(f"'Accuracy': {result.accuracy:.4f}")
        print(result.table())
    if confusion:
        from .report.plots import plot_confusion

        try:
            plot_confusion(result.confusion, result.classes, confusion)
        except ConvzooError as exc:  # a full disk: the score is printed, and the plot was not asked for
            if args.confusion:
                raise
            unwritten(exc)
            return 0
        if not args.json:
            print(printable(f"confusion matrix: {confusion}"))
    return 0


def unwritten(exc: ConvzooError) -> None:
    """The note for the confusion.png eval writes beside a checkpoint unasked, when it cannot be written."""
    print(f"note: no confusion matrix written: {exc}; --confusion PATH.png writes one elsewhere", file=sys.stderr)


def cmd_summary(args) -> int:
    from .metadata import MAX_CHANNELS, MAX_INPUT_SIZE
    from .models.registry import MODELS, create_model, get_model_info
    from .models.summary import format_summary, summarize

    name, num_classes, described = args.model, args.num_classes, None
    if name not in MODELS and (":" in name or Path(name).suffix):  # a model file or NAME:DATASET: its architecture
        described = model_description(name)
        name, num_classes = described["model"], len(described["class_names"])
    info = get_model_info(name)
    if args.input:
        try:
            shape = tuple(int(v) for v in args.input.split(","))
            # bounded like a model file's input spec: a 100000x100000 input would allocate 40 GB
            assert len(shape) == 3 and 1 <= shape[0] <= MAX_CHANNELS and all(1 <= d <= MAX_INPUT_SIZE for d in shape[1:])
        except (ValueError, AssertionError):
            raise ConfigError(f"--input must be C,H,W with C in 1..{MAX_CHANNELS} and H, W in 1..{MAX_INPUT_SIZE}, "
                              f"got {args.input!r}") from None
    elif described:
        spec = described["input"]
        shape = (spec["channels"], spec["size"], spec["size"])
    else:
        shape = (info.in_channels, info.input_size, info.input_size)
    model = create_model(name, num_classes=num_classes, in_channels=shape[0])
    try:
        rows = summarize(model, shape)
    except RuntimeError as exc:
        raise ConfigError(f"model {name} cannot take input {shape}: {str(exc).splitlines()[0]}") from None
    print(format_summary(name, rows, model))
    return 0


def model_description(model) -> dict:
    """The description (model, class_names, input) of a checkpoint, ONNX file or NAME:DATASET, its
    errors as one line."""
    from .metadata import is_onnx

    path = Path(resolve_model(model))
    if not is_onnx(path):
        from .engine.checkpoint import load_checkpoint

        return load_checkpoint(path)
    import onnx

    from .metadata import read_onnx_metadata

    if not path.is_file():
        from .errors import CheckpointError, not_a_file

        raise CheckpointError(not_a_file(path, "not found"), path)
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - onnx raises many types for a bad file
        from .errors import CheckpointError, first_line

        raise CheckpointError(f"not a readable ONNX file ({first_line(exc)})", path) from None
    return read_onnx_metadata(graph, path)


def cmd_export(args) -> int:
    from . import export
    from .deploy.export import result_line

    # The Python API's export: the same default names (a shipped name -> ./lenet5-mnist.onnx).
    result = export(args.ckpt, args.output, format=args.format, int8=args.int8, opset=args.opset,
                    dynamic_batch=args.dynamic_batch, data_path=args.data_path, exist_ok=args.exist_ok)
    print(json.dumps(result) if args.json else printable(result_line(result)))
    return 0


def cmd_convert(args) -> int:
    from .engine.convert import convert, result_line

    result = convert(args.weights, model=args.model, dataset=args.dataset, output=args.output, exist_ok=args.exist_ok)
    print(json.dumps(result) if args.json else printable(result_line(result)))
    return 0


def cmd_predict(args) -> int:
    from .deploy.predict import Predictor

    # One short-lived process: OpenVINO's faster int8 kernels never make up for its import and compile.
    runtime = "onnxruntime" if args.runtime == "auto" else args.runtime
    model = resolve_model(args.model)
    if args.from_test and args.images:
        raise ConfigError("give IMAGE files or --from-test N, not both")
    if args.grid is not None and not args.from_test:
        raise ConfigError("--grid goes with --from-test N (the grid shows those test images)")
    if args.data_path is not None and not args.from_test:  # taken and ignored, its folder never looked at
        raise ConfigError("--data-path goes with --from-test N (the data set its test images come from); IMAGE "
                          "files are read as given")
    predictor = Predictor(model, threads=args.threads, runtime=runtime, describe=describe_hints(args))
    if args.from_test:  # checked before the work: `--grid m.onnx` replaced the model with a PNG
        from .report.plots import check_plot_target

        if args.grid is None:
            args.grid = "grid.png"
        check_plot_target(args.grid, "grid", default="grid.png", inputs=[model],
                          protected=image_folders(predictor.meta, args.data_path))
    if args.from_test:
        return predict_test_images(predictor, args)
    if not args.images:
        raise ConfigError("predict needs IMAGE files (or --from-test N)")
    results = predictor.predict_files(args.images, topk=args.topk)
    for r in results:
        if args.json:
            # Bytes of the name that are not UTF-8 as \xNN (json.dumps wrote their surrogateescape
            # stand-ins as lone surrogates, "\udcff": invalid UTF-8 JSON); newlines and the like stay
            # themselves, escaped by JSON, so a script can still open the path.
            name = os.fsencode(r["file"]).decode("utf-8", "backslashreplace")
            print(json.dumps({**r, "file": name}))
        else:
            others = ", ".join(f"{t['class']} {t['probability']:.4f}" for t in r["topk"][1:])
            line = f"{r['file']}: {r['class']} ({r['probability']:.4f})" + (f"  [{others}]" if others else "")
            line += "  (blank image: nothing to read)" if r.get("blank") else ""
            print(printable(line))  # a file or class name with a newline stays on its line
    return 0


def image_folders(meta: dict | None, data_path=None, dataset=None) -> list:
    """The image folders of a model's data set (its --data-path and the one it records: both, since the
    recorded one may still be where it trained), where a plot would become one of the data set's images.
    Catalog data sets (IDX, CIFAR files) have none."""
    if dataset == "folder" or (dataset is None and (meta or {}).get("data")):
        return [data_path, ((meta or {}).get("data") or {}).get("path")]
    return []


def model_meta(model) -> dict | None:
    """A checkpoint's or ONNX model's description; None for a file that cannot be read (its own loader
    reports it later, in its own words)."""
    try:
        return model_description(model)
    except Exception:  # noqa: BLE001 - onnx and torch raise many types for a bad file
        return None


def predict_test_images(predictor, args) -> int:
    from .deploy.predict import predict_test_set
    from .report.plots import plot_grid

    images, truth, results = predict_test_set(predictor, args.from_test, data_path=args.data_path, topk=args.topk)
    for r in results:
        print(json.dumps(r) if args.json else printable(f"test[{r['index_in_test']}]: {r['class']} "
              f"({r['probability']:.4f}), true {r['true']}" + ("" if r["class"] == r["true"] else "  WRONG")))
    plot_grid(images, truth, [r["class"] for r in results], args.grid)
    if not args.json:
        print(printable(f"grid: {args.grid}"))
    return 0


def resolve_model(name: str) -> str:
    """A file path as is; NAME:DATASET is a shipped pretrained model."""
    from .models.pretrained import resolve

    return str(resolve(name))


def cmd_serve(args) -> int:
    from .deploy.server import serve

    return serve(resolve_model(args.model), args.host, args.port, threads=args.threads,
                 max_upload=int(args.max_upload_mb * 1024 * 1024), workers=args.workers,
                 batch_window_ms=args.batch_window_ms, max_batch=args.max_batch, max_queue=args.max_queue,
                 runtime=args.runtime, describe=describe_hints(args))


def cmd_quantize(args) -> int:
    from .engine.runtime import default_threads
    from .quant.pipeline import check_output_dir, output_folder, run_quantize

    if args.method == "ptq" and (args.epochs is not None or args.lr is not None):
        raise ConfigError("--epochs and --lr set QAT's fine-tune; --method ptq has none (it only calibrates)")
    ckpt = args.ckpt
    if ckpt and args.config:  # one was quantized and the other ignored
        raise ConfigError(f"give --ckpt {ckpt} or --config {args.config}, not both: --config trains the model "
                          "that --ckpt would name")
    if args.train_epochs and not args.config:
        raise ConfigError("--train-epochs sets --config's training; a --ckpt is trained already (--epochs sets "
                          "QAT's fine-tune)")
    if not ckpt:
        if not args.config:
            raise ConfigError("quantize needs --ckpt PATH (an fp32 checkpoint) or --config PRESET to train one first")
        from .config import build_config
        from .engine.launch import train

        cfg = build_config(args.config, {"data_path": args.data_path, "epochs": args.train_epochs})
        best = Path(cfg.run_dir()) / "best.pt"  # refused before the training, not after it
        check_output_dir(output_folder(best, args.method, args.output_dir), best, exist_ok=args.exist_ok)
        if best.exists() and not args.exist_ok:  # a model trained earlier, that a new run would replace
            raise ConfigError(f"{best.parent} holds a trained model already: quantize it with --ckpt {best}, or pass "
                              f"--exist-ok to train {args.config} there, replacing it")
        result = train(cfg, exist_ok=True)
        ckpt = str(Path(result["output_dir"]) / "best.pt")
    fine_tune = {k: v for k, v in (("epochs", args.epochs), ("lr", args.lr)) if v is not None}  # else its defaults
    run_quantize(ckpt, method=args.method, calib_batches=args.calib_batches, train_limit=args.train_limit,
                 output_dir=args.output_dir, data_path=args.data_path, threads=args.threads or default_threads(2),
                 runtime=args.runtime, exist_ok=args.exist_ok, **fine_tune)
    return 0


def cmd_report(args) -> int:
    from .report.tables import build_report

    text, out = build_report(args.runs, args.output, html_page=args.html)
    print(text)
    print(printable(f"report: {out}" + (f" and {out.with_suffix('.html')}" if args.html else "")))
    return 0
