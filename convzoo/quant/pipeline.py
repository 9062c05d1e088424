"""`convzoo quantize`: QAT fine-tune (or PTQ) of a checkpoint -> int8 ONNX, QAT checkpoint, report."""

from __future__ import annotations

import contextlib
import json
import secrets
import shutil
from pathlib import Path

import torch

from ..atomic import atomic_write_bytes, check_target, make_folder, publish, remove_outputs, write_error
from ..config import TrainConfig, build_config
from ..data.tensors import InputSpec, load_model_data
from ..deploy.export import calibrated, export_onnx
from ..engine import rundir
from ..engine.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from ..errors import CheckpointError, ConfigError, WriteError
from ..metadata import deployment_metadata
from .ptq import calibration_batches, check_quantizable, quantize_onnx
from .qat import WEIGHT_RANGE, qat_finetune
from .report import compare, format_table, onnx_accuracy


# What a quantize run writes into its folder.
OUTPUTS = ("model-fp32.onnx", "model-int8.onnx", "model-int8-ptq.onnx", "qat.pt", "qat-fp32.onnx", "int8-report.md",
           "int8-report.json")  # int8-: `convzoo report` writes report.md into a run folder
STAGE_PREFIX = ".quantize-"  # the hidden folder in the output folder a run writes its files into first
WRITERS = "train or quantize"  # what holds the output folder's lock (engine/rundir.py's, shared with train)


def run_quantize(ckpt_path, *, method: str = "qat", epochs: int = 1, lr: float = 0.001, calib_batches: int = 32,
                 train_limit: int = 0, output_dir=None, data_path=None, threads: int = 2, runtime: str = "auto",
                 exist_ok: bool = False, log=print) -> dict:
    if method not in ("qat", "ptq"):
        raise ConfigError(f"--method must be qat or ptq, got {method!r}")
    if method == "qat" and epochs < 1:
        raise ConfigError(f"--epochs must be >= 1 for QAT, got {epochs}")
    out = check_output_dir(output_folder(ckpt_path, method, output_dir), ckpt_path, exist_ok=exist_ok)
    ckpt = load_checkpoint(ckpt_path)
    check_quantizable(ckpt["model"], ckpt_path)
    recipe = run_recipe(ckpt, ckpt_path)
    torch.set_num_threads(threads)
    before = rundir.snapshot(out)
    make_folder(out)
    take_folder(out)
    try:
        result, table = quantize_checked(out, ckpt, ckpt_path, recipe, method=method, epochs=epochs, lr=lr,
                                         calib_batches=calib_batches, train_limit=train_limit, data_path=data_path,
                                         threads=threads, runtime=runtime, exist_ok=exist_ok, log=log)
    except BaseException:  # a data error, too few images, Ctrl-C: the folder as it was (a new one goes)
        rundir.rollback(before, owned=frozenset({rundir.LOCK_FILE, *OUTPUTS}))  # staging folders: staged()'s
        raise
    log(table)
    log(f"int8 model: {out / 'model-int8.onnx'}; report: {out / 'int8-report.md'}")
    return result


def quantize_checked(out: Path, ckpt, ckpt_path, recipe: TrainConfig, *, method, epochs, lr, calib_batches,
                     train_limit, data_path, threads, runtime, exist_ok, log):
    """The run once the checkpoint and folder are taken: its data, then the staged outputs."""
    spec = InputSpec.from_dict(ckpt["input"])
    train, test = load_model_data(ckpt, ckpt_path, command="quantize", data_path=data_path)
    if train_limit:
        train = train.subset(slice(0, train_limit))
    check_enough_training_images(len(train), recipe.batch_size, method, train_limit)
    model = model_from_checkpoint(ckpt, ckpt_path)

    from ..data.tensors import to_model_input

    x_test = torch.cat([to_model_input(test.images[i: i + 1000], spec) for i in range(0, len(test), 1000)])
    with staged(out, exist_ok=exist_ok) as stage:
        result, table = quantize_into(stage, ckpt, ckpt_path, model, train, test, x_test, spec=spec, recipe=recipe,
                                      method=method, epochs=epochs, lr=lr, calib_batches=calib_batches,
                                      threads=threads, runtime=runtime, log=log)
    return result, table


def run_recipe(ckpt: dict, path) -> TrainConfig:
    """The checkpoint's training settings, which QAT's fine-tune repeats (batch size, seed, augmentation),
    checked as a resumed run's are: a forged batch_size of 'abc' or -3 was a traceback deep in QAT."""
    try:
        return build_config(None, {}, base=ckpt.get("config", {}), base_source="config")
    except ConfigError as exc:
        raise CheckpointError(f"its training settings, which QAT repeats, are not a run's: {exc}", path) from None


def check_enough_training_images(count: int, batch: int, method: str, train_limit: int) -> None:
    """QAT's fine-tune takes full batches of the run's --batch-size: with fewer images it took none and
    fine-tuned for zero steps without a word (calibration takes a short batch)."""
    if method == "qat" and count < batch:
        held = f"--train-limit {train_limit} leaves" if train_limit else "the data set has"
        raise ConfigError(f"{held} {count} training images, fewer than one batch of the run's --batch-size "
                          f"{batch}, which QAT's fine-tune takes; raise --train-limit or use --method ptq")


def quantize_into(out: Path, ckpt, ckpt_path, model, train, test, x_test, *, spec: InputSpec, recipe: TrainConfig,
                  method, epochs, lr, calib_batches, threads, runtime, log):
    """Write every output of the run into the folder `out` (the staging folder); returns the report's
    dict and its table."""
    export_onnx(ckpt_path, out / "model-fp32.onnx", ckpt=ckpt)
    calib = calibration_batches(train, spec, calib_batches)
    # PTQ of the same fp32 checkpoint is cheap: --method qat builds it too, for the side-by-side accuracy.
    ptq_name = "model-int8.onnx" if method == "ptq" else "model-int8-ptq.onnx"
    quantize_onnx(out / "model-fp32.onnx", out / ptq_name, calib,
                  {**deployment_metadata(ckpt), "quantization": "ptq"})
    reference = None
    if method == "qat":
        converted = qat_to_int8(ckpt, model, train, calib, out, recipe=recipe, epochs=epochs, lr=lr, log=log)
        with torch.no_grad():
            reference = converted(x_test[:1000]).numpy()
    result = compare(out / "model-fp32.onnx", out / "model-int8.onnx", x_test.numpy(), test.labels.numpy(),
                     threads=threads, runtime=runtime, reference_int8_logits=reference)
    if method == "qat":
        result["ptq_int8"] = {"file": ptq_name, "calibration_batches": len(calib),
                              "accuracy": onnx_accuracy(out / ptq_name, x_test.numpy(), test.labels.numpy(), threads,
                                                        runtime)}
    result.update(method=method, model=ckpt["model"], dataset=ckpt["dataset"], checkpoint=str(ckpt_path))
    table = format_table(result)
    scheme = (f"per-channel symmetric int8 weights in {list(WEIGHT_RANGE)}, uint8 activations, scales and zero-points "
              "learned by the QAT observers" if method == "qat" else "per-channel symmetric int8 weights, uint8 "
              f"activations, MinMax calibration on {calibrated(len(calib), sum(map(len, calib)))}")
    report = (f"# int8 report: {ckpt['model']} on {ckpt['dataset']} ({method.upper()})\n\n"
              f"Checkpoint: `{ckpt_path}`; int8 model: `model-int8.onnx` (QDQ, {scheme}).\n\n{table}\n")
    atomic_write_bytes(out / "int8-report.md", report.encode())
    atomic_write_bytes(out / "int8-report.json", json.dumps(result, indent=1).encode())
    return result, table


def take_folder(out: Path) -> None:
    """One quantize (or train) at a time writes the folder: two quantize runs into one folder mixed
    their files and both reported success (the second's report scored the first's int8 model). The
    lock is train's (rundir.lock), held until the process ends. Holding it, any staging folder left
    there is a killed run's, and goes."""
    rundir.lock(out, WRITERS)
    for leftover in out.glob(STAGE_PREFIX + "*"):
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def staged(out: Path, *, exist_ok: bool):
    """A hidden folder in `out` to write the run's files into; when the run succeeds they replace the
    earlier run's (--exist-ok), and the earlier files this run does not write go. A run that fails or is
    stopped leaves the earlier set as it was (they used to be deleted before the first new file)."""
    stage = out / f"{STAGE_PREFIX}{secrets.token_hex(4)}"
    try:
        stage.mkdir()
    except OSError as exc:
        raise write_error(out, exc) from None
    try:
        yield stage
        move_outputs(stage, out, exist_ok=exist_ok)
    except WriteError as exc:  # a full disk, a file-size limit: named as the output, not the hidden folder it left
        written = Path(exc.path) if exc.path else None
        if written is None or not written.is_relative_to(stage):
            raise
        raise WriteError(exc.message, out / written.relative_to(stage)) from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def move_outputs(stage: Path, out: Path, *, exist_ok: bool) -> None:
    """The staged files onto their names in `out` (renames in one folder: no copy can fail half-way);
    without `exist_ok`, a file that appeared there during the run is kept and the run refused."""
    written = [name for name in OUTPUTS if (stage / name).exists()]
    for name in written:
        try:
            publish(stage / name, out / name, replace=exist_ok)
        except OSError as exc:
            raise write_error(out / name, exc) from None
    if exist_ok:  # the earlier run's files of another method (without it, none were there at the start)
        remove_outputs(out, [name for name in OUTPUTS if name not in written])


def output_folder(ckpt_path, method: str, output_dir=None) -> Path:
    return Path(output_dir or Path(ckpt_path).parent / f"quant-{method}")


def check_output_dir(out: Path, ckpt_path, *, exist_ok: bool) -> Path:
    """The folder can take this run's files (nothing is changed): not a file, none of its outputs would
    replace the checkpoint, and no earlier quantization's files in it unless `exist_ok` (a rerun
    replaced them without a word, and one stopped half-way left an fp32/int8 pair of two checkpoints)."""
    if out.exists() and not out.is_dir():
        raise WriteError("--output-dir is a file", out)
    if rundir.is_locked(out):  # first: a run still writing the folder explains whatever else it holds
        raise rundir.busy(out, WRITERS)
    for name in OUTPUTS:  # `--ckpt qat.pt --output-dir .` would replace the checkpoint it fine-tunes
        check_target(out / name, inputs=[ckpt_path])
    taken = [name for name in OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    if taken and not exist_ok:
        raise ConfigError(f"output folder already holds {', '.join(taken)} from an earlier quantization, which this "
                          "run would write over; pass --exist-ok to overwrite them, or another --output-dir", out)
    return out


def qat_to_int8(ckpt, model, train, calib, out, *, recipe: TrainConfig, epochs, lr, log=print):
    """QAT fine-tune -> qat.pt (float weights + learned qparams) -> model-int8.onnx carrying those qparams.
    `recipe`: the checkpoint's training settings (run_recipe), repeated by the fine-tune.
    Returns PyTorch's converted int8 model, the reference for the ONNX file."""
    state, converted, learned = qat_finetune(model, train, InputSpec.from_dict(ckpt["input"]), epochs=epochs, lr=lr,
                                             batch_size=recipe.batch_size, seed=recipe.seed, augment=recipe.augment,
                                             shift_pad=recipe.shift_pad, log=log)
    model.load_state_dict(state)
    payload = {k: v for k, v in ckpt.items() if k not in ("format", "version", "optimizer", "scaler")}
    save_checkpoint(out / "qat.pt", {**payload, "state_dict": model.state_dict(),
                                     "quantization": {"method": "qat", "epochs": epochs, "lr": lr, "learned": learned}})
    export_onnx(out / "qat.pt", out / "qat-fp32.onnx")
    quantize_onnx(out / "qat-fp32.onnx", out / "model-int8.onnx", calib,
                  {**deployment_metadata(ckpt), "quantization": "qat"}, learned=learned)
    return converted

