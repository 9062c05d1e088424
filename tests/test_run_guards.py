"""What a run must not do to files and settings: a resumed folder run whose split changed, plots
written over other files, run files of a folder without config.yaml, one-class runs, globs matching
nothing, SIGTERM, a --val-split leaving nothing to train, and quantize's report beside `convzoo
report`'s."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import MNIST_DIR, cli_error, need, run_cli, start_cli

MNIST = ["--data-path", MNIST_DIR]
SMALL = ["--model", "lenet5", "--epochs", "1", "--threads", "1"]


def make_folder(root: Path, n: int, start: int = 0) -> Path:
    """root/{a,b,c}/NNNN.png: 28x28 grey noise with a bright bar whose position is the class."""
    rng = np.random.default_rng(start)
    for k, c in enumerate("abc"):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(start, start + n):
            a = rng.integers(0, 60, (28, 28), dtype=np.uint8)
            a[4:24, 4 + 8 * k: 8 + 8 * k] = 255
            Image.fromarray(a).save(root / c / f"{i:04d}.png")
    return root


def train_ok(*args) -> None:
    """`convzoo train ARGS` in this process (torch is imported already), exit 0."""
    from convzoo.cli import main

    assert main(["train", *map(str, args), "--quiet"]) == 0


def files(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """LeNet-5 trained for one epoch on a 60-image folder (48 train / 12 test): (folder, run)."""
    root = tmp_path_factory.mktemp("folder")
    imgs = make_folder(root / "imgs", 20)
    train_ok(*SMALL, "--dataset", "folder", "--data-path", imgs, "--batch-size", "16", "--output-dir", root / "run")
    return imgs, root / "run"


@pytest.fixture(scope="module")
def mnist_small(tmp_path_factory):
    """LeNet-5, one epoch on 256 real MNIST images (scored on 100): a run folder with curves.png."""
    run = tmp_path_factory.mktemp("mnist") / "run"
    train_ok(*SMALL, "--data-path", need(MNIST_DIR), "--train-limit", "256", "--test-limit", "100", "--output-dir", run)
    return run


@pytest.mark.real_data
def test_resume_refuses_a_folder_whose_test_split_changed(tmp_path, capsys):
    """Images added to the folder redrew its split: --resume tested on images epoch 1 trained on and
    recorded the new split, so eval stopped warning. Refused; last.pt keeps the original record."""
    imgs = make_folder(tmp_path / "imgs", 20)
    run = tmp_path / "run"
    train_ok(*SMALL, "--dataset", "folder", "--data-path", imgs, "--batch-size", "16", "--output-dir", run)
    make_folder(imgs, 10, start=20)  # the user adds 10 images per class
    before = files(run)
    cli_error(capsys, "train", "--resume", "--output-dir", run, "--epochs", "2", "--threads", "1",
              fragments=[str(imgs), "test split changed", "start a new run"])
    assert files(run) == before


@pytest.mark.real_data
def test_resume_from_another_folder_finds_a_relative_data_path(tmp_path):
    """A run trained with `--data-path "my images"` (config.yaml records it as given) failed to resume from
    any other folder: `my images: --data-path is not a folder`, blaming a flag never given. last.pt
    records the folder absolute; a folder that is really gone is named as the run's. `--config
    RUN/config.yaml --resume` resumes RUN from any folder."""
    from conftest import assert_user_error

    start, elsewhere = tmp_path / "x d", tmp_path / "elsewhere"
    elsewhere.mkdir()
    make_folder(start / "my images", 20)
    mnist = os.path.relpath(need(MNIST_DIR), start)  # a catalog data set's --data-path, relative too
    for name, data in (("folder", ["--dataset", "folder", "--data-path", "my images", "--batch-size", "16"]),
                       ("mnist", ["--data-path", mnist, "--train-limit", "256", "--test-limit", "100"])):
        run_cli("train", *SMALL, *data, "--output-dir", f"runs/{name}", "--quiet", cwd=start, check=0)
        config = (start / "runs" / name / "config.yaml").read_text()
        assert f"data_path: {data[data.index('--data-path') + 1]}\n" in config  # as given
        resume = ["train", "--resume", "--output-dir", start / "runs" / name, "--epochs", "2", "--quiet"]
        run_cli(*resume, cwd=elsewhere, check=0)
        assert (start / "runs" / name / "metrics.csv").read_text().splitlines()[-1].startswith("2,"), name
    # the run's own config.yaml names it from anywhere: its relative output_dir and data_path (as the
    # run began) were looked up from here, `runs/folder/last.pt: checkpoint not found`
    config = os.path.relpath(start / "runs" / "folder" / "config.yaml", elsewhere)
    run_cli("train", "--config", config, "--resume", "--epochs", "3", "--quiet", cwd=elsewhere, check=0)
    assert (start / "runs" / "folder" / "metrics.csv").read_text().splitlines()[-1].startswith("3,")
    assert not (elsewhere / "runs").exists()
    # another YAML file in a run folder is a recipe whose output_dir names its run: not the folder's run
    config = yaml.safe_load((start / "runs" / "folder" / "config.yaml").read_text())
    assert config["output_dir"] == str(start / "runs" / "folder")  # absolute once resumed from elsewhere
    (start / "runs" / "folder" / "longer.yaml").write_text(yaml.safe_dump({**config, "output_dir": "runs/longer"}))
    assert_user_error(run_cli("train", "--config", start / "runs" / "folder" / "longer.yaml", "--resume", "--epochs",
                              "4", cwd=start), "runs/longer/last.pt", "checkpoint not found")
    assert (start / "runs" / "folder" / "metrics.csv").read_text().splitlines()[-1].startswith("3,")
    (start / "my images").rename(start / "moved")
    before = files(start / "runs" / "folder")
    message = assert_user_error(run_cli("train", "--resume", "--output-dir", start / "runs" / "folder", "--epochs", "4",
                                        cwd=elsewhere), str(start / "my images"), "the run's data folder",
                                "recorded in last.pt", "is not there any more", "pass --data-path FOLDER")
    assert "--data-path is not a folder" not in message
    assert files(start / "runs" / "folder") == before


@pytest.mark.real_data
def test_confusion_and_grid_refuse_files_that_are_not_earlier_plots_of_their_kind(mnist_small, folder_run, tmp_path,
                                                                                 capsys, monkeypatch):
    """`eval --confusion` and `predict --grid` wrote over the run's curves.png, a user's photo and an
    image of the model's own data set folder. The default outputs are still rewritten on a rerun."""
    from convzoo.cli import main

    monkeypatch.chdir(tmp_path)
    ckpt, limit = mnist_small / "best.pt", ["--test-limit", "50", "--threads", "1", *MNIST]
    photo = tmp_path / "my_photo.png"
    Image.new("L", (28, 28)).save(photo)
    imgs, folder_ckpt = folder_run[0], folder_run[1] / "best.pt"
    guarded = {**files(mnist_small), **{f"imgs/{k}": v for k, v in files(imgs).items()}, "photo": photo.read_bytes()}
    cli_error(capsys, "eval", "--ckpt", ckpt, *limit, "--confusion", mnist_small / "curves.png",
              fragments=["curves.png", "curves plot", "not an earlier confusion"])
    cli_error(capsys, "eval", "--ckpt", ckpt, *limit, "--confusion", photo,
              fragments=["my_photo.png", "convzoo did not write"])
    grid = ["predict", "--model", folder_ckpt, "--from-test", "3", "--grid"]
    cli_error(capsys, *grid, imgs / "a" / "0000.png", fragments=["0000.png", "data set folder"])
    cli_error(capsys, *grid, imgs / "a" / "new.png", fragments=["new.png", "data set folder"])  # a new class-a image
    cli_error(capsys, *grid, mnist_small / "curves.png", fragments=["curves.png", "not an earlier grid"])
    moved = tmp_path / "moved"  # a copy scored with --data-path: the folder it trained on stays protected
    shutil.copytree(imgs, moved)
    cli_error(capsys, *grid, imgs / "a" / "grid.png", "--data-path", moved, fragments=["grid.png", "data set folder"])
    assert {**files(mnist_small), **{f"imgs/{k}": v for k, v in files(imgs).items()},
            "photo": photo.read_bytes()} == guarded
    for _ in range(2):  # written, then an earlier plot of the same kind written over
        assert main(["eval", "--ckpt", str(ckpt), *map(str, limit)]) == 0
        assert main(["predict", "--model", str(folder_ckpt), "--from-test", "3"]) == 0
    assert (mnist_small / "confusion.png").is_file() and (tmp_path / "grid.png").is_file()
    cli_error(capsys, "eval", "--ckpt", ckpt, *limit, "--confusion", tmp_path / "grid.png",
              fragments=["grid.png", "grid plot", "not an earlier confusion"])


@pytest.mark.real_data
def test_eval_keeps_a_users_own_confusion_png_and_scores_one_model(tmp_path, capsys):
    """Beside a model file outside a run folder, an unmarked confusion.png is the user's, not an older
    convzoo plot: it was replaced; then refused, with no score either (as for a read-only run folder):
    the plot nobody asked for is now left out with a note, and the model scored. `eval --ckpt A --model B`
    scored B alone without saying so."""
    from convzoo.cli import main
    from convzoo.models.pretrained import pretrained_path

    folder = tmp_path / "mine"
    folder.mkdir()
    shutil.copy(pretrained_path("lenet5:mnist"), folder / "model.safetensors")
    Image.new("RGB", (64, 48), "red").save(folder / "confusion.png")
    before = (folder / "confusion.png").read_bytes()
    capsys.readouterr()
    assert main(["eval", "--ckpt", str(folder / "model.safetensors"), "--test-limit", "50", *map(str, MNIST)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("'Accuracy': ") and "confusion matrix:" not in out, out
    assert err.startswith("note: no confusion matrix written: ") and "a PNG convzoo did not write" in err, err
    cli_error(capsys, "eval", "--ckpt", folder / "model.safetensors", "--test-limit", "50", *MNIST, "--confusion",
              folder / "confusion.png", fragments=["confusion.png", "a PNG convzoo did not write"])  # asked for
    cli_error(capsys, "eval", "--ckpt", folder / "model.safetensors", "--model", "lenet5:mnist", *MNIST,
              fragments=["not both"])
    assert (folder / "confusion.png").read_bytes() == before


def test_a_model_taking_images_as_they_are_refuses_a_data_set_of_another_size(tmp_path, capsys):
    """airbench (32x32, fit 'none') trained on 28x28 MNIST, and its checkpoint was then refused by
    every command that reads it (its input said 32, its data 28)."""
    cli_error(capsys, "train", "--model", "airbench", "--dataset", "mnist", *MNIST, "--output-dir", tmp_path / "ab",
              fragments=["airbench takes 32x32 images as they are", "mnist's are 28x28"])
    assert not (tmp_path / "ab").exists()


@pytest.mark.real_data
def test_eval_model_of_a_checkpoint_says_the_runs_tta_is_not_applied(tmp_path, capsys):
    """`eval --model best.pt` of a run with --tta scored it without TTA (0.7850 against --ckpt's
    0.7885) and said nothing."""
    import torch

    from convzoo.cli import main

    run = tmp_path / "run"
    assert main(["train", *map(str, SMALL), *map(str, MNIST), "--train-limit", "300", "--test-limit", "50",
                 "--tta", "shift", "--output-dir", str(run), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["eval", "--model", str(run / "best.pt"), "--test-limit", "50", *map(str, MNIST)]) == 0
    assert "without its run's TTA (shift); eval --ckpt applies it" in capsys.readouterr().err
    state = torch.load(run / "best.pt", weights_only=True)
    state["config"] = None  # a hand-edited checkpoint: read without its TTA, no traceback
    torch.save(state, run / "edited.pt")
    assert main(["eval", "--model", str(run / "edited.pt"), "--test-limit", "50", *map(str, MNIST)]) == 0


def test_train_refuses_run_files_in_a_folder_without_config_yaml(tmp_path, capsys):
    """A folder holding another model's best.pt, a metrics.csv and a summary.json (no config.yaml) was
    overwritten without a word; its train.log got the new run's lines appended."""
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "best.pt").write_bytes(b"PK my yolo weights")
    (proj / "metrics.csv").write_text("epoch,notes\n1,mine\n")
    (proj / "summary.json").write_text('{"mine": 1}\n')
    before = files(proj)
    cli_error(capsys, "train", *SMALL, "--train-limit", "256", "--output-dir", proj,
              fragments=[str(proj), "best.pt, metrics.csv, summary.json", "--exist-ok"])
    assert files(proj) == before


def test_exist_ok_clears_the_earlier_run(tmp_path):
    """`--exist-ok` into a run's folder by a run that diverged before its first checkpoint left the new
    config.yaml beside the old run's best.pt, last.pt and metrics (report credited the old accuracy to the
    new model). The old run's files go before the new run writes anything."""
    run = tmp_path / "x"
    # (a subprocess: a run folder stays locked until the process that trained into it ends)
    run_cli("train", *SMALL, *MNIST, "--train-limit", "256", "--test-limit", "100", "--output-dir", run, check=0)
    assert (run / "best.pt").is_file() and (run / "metrics.csv").is_file()
    proc = run_cli("train", "--model", "lenet5-keras", "--epochs", "1", "--threads", "1", *MNIST, "--train-limit",
                   "256", "--test-limit", "100", "--lr", "10000", "--output-dir", run, "--exist-ok")
    left = sorted(f.name for f in run.iterdir() if not f.name.startswith("."))
    assert proc.returncode != 0 and "best.pt" not in left and "metrics.csv" not in left, (left, proc.stderr[-500:])


def test_an_output_folder_inside_the_image_folder_is_refused(folder_run, tmp_path, capsys, monkeypatch):
    """Trained from inside its image folder (`--data-path .`), the run folder became a class of the next
    run (`runs`, holding curves.png): refused before anything is written."""
    imgs = folder_run[0]
    monkeypatch.chdir(imgs)
    cli_error(capsys, "train", *SMALL, "--dataset", "folder", "--data-path", ".", fragments=[
        "runs/lenet5-folder", "inside the image folder", "--output-dir outside"])
    cli_error(capsys, "train", *SMALL, "--dataset", "folder", "--data-path", imgs, "--output-dir", imgs / "a" / "r",
              fragments=["inside the image folder"])
    assert sorted(p.name for p in imgs.iterdir()) == ["a", "b", "c"]


def test_classes_needs_two_classes_in_the_cli_and_the_api(tmp_path, capsys):
    """--classes 3 trained a one-class model scoring 100% and answering 3 for any image."""
    import convzoo
    from convzoo.errors import ConvzooError

    cli_error(capsys, "train", *SMALL, "--classes", "3", "--output-dir", tmp_path / "one",
              fragments=["--classes needs at least two classes, got [3]"])
    with pytest.raises(ConvzooError, match=r"at least two classes, got \[3\]"):
        convzoo.train(model="lenet5", classes=[3], epochs=1, output_dir=str(tmp_path / "api"), quiet=True)
    assert not (tmp_path / "one").exists() and not (tmp_path / "api").exists()


def test_folder_flags_and_class_indices_are_refused_before_the_data_are_read(tmp_path, capsys):
    """`--dataset mnist --test-split 0.5` trained and scored on MNIST's own test set without a word (so did
    --image-size and --channels, which are how an image folder is read), and `--classes 3,11` was
    refused only once all of MNIST had been read: each is one line before any data, here none in reach."""
    import convzoo
    from convzoo.errors import ConvzooError

    empty = tmp_path / "empty"
    empty.mkdir()
    run = ["train", *SMALL, "--data-path", empty, "--output-dir", tmp_path / "run"]
    cli_error(capsys, *run, "--dataset", "mnist", "--test-split", "0.5",
              fragments=["--test-split applies to --dataset folder (your own images) only; mnist has its own test split"])
    cli_error(capsys, *run, "--dataset", "cifar10", "--image-size", "64", "--channels", "1",
              fragments=["--image-size and --channels apply to --dataset folder", "cifar10", "32x32 images with 3 channels"])
    with pytest.raises(ConvzooError, match=r"^--test-split applies to --dataset folder"):
        convzoo.train(dataset="fashion-mnist", test_split=0.1, data_path=str(empty), output_dir=str(tmp_path / "api"))
    for classes in ("3,11", "3,3", "0,10"):
        cli_error(capsys, *run, "--dataset", "mnist", "--classes", classes,
                  fragments=["--classes must be distinct indices in 0..9"])
    with pytest.raises(ConvzooError, match=r"^--classes must be distinct indices in 0\.\.9, got \[3, 11\]$"):
        convzoo.train(classes=[3, 11], data_path=str(empty), output_dir=str(tmp_path / "api"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]
    # a run's whole config passed back (config.yaml holds the defaults of the folder flags) is no mistake
    from convzoo.config import TrainConfig, build_config

    assert build_config(None, TrainConfig(dataset="cifar10", classes=[3, 5]).to_dict()).test_split == 0.2


@pytest.mark.real_data
def test_freeze_and_restore_exclude_globs_must_match_a_parameter(tmp_path, capsys):
    """`--freeze 'Conv1.*'` (a capital letter) froze nothing and trained conv1; `--restore-exclude
    'fc9.*'` excluded nothing. Each is one line naming the glob and the names to choose from."""
    args = ["train", *SMALL, *MNIST, "--train-limit", "64", "--test-limit", "64", "--restore", "lenet5:mnist",
            "--output-dir", tmp_path / "fz"]
    cli_error(capsys, *args, "--freeze", "Conv1.*", fragments=["--freeze 'Conv1.*' matches no parameter of lenet5",
                                                               "conv1.*", "fc3.*"])
    cli_error(capsys, *args, "--restore-exclude", "fc3.*,fc9.*",
              fragments=["--restore-exclude 'fc9.*' matches no tensor of lenet5:mnist", "conv1.*"])
    cli_error(capsys, "train", *SMALL, *MNIST, "--restore-exclude", "fc3.*", "--output-dir", tmp_path / "fz",
              fragments=["--restore-exclude goes with --restore"])  # without --restore it was ignored
    assert not (tmp_path / "fz").exists()


def sigterm_when(args, ready, poll: float = 0.1) -> tuple[int, str]:
    """`convzoo ARGS` in a subprocess, sent a SIGTERM as soon as `ready()` holds: (exit code, stderr)."""
    proc = start_cli(*args)
    deadline = time.time() + 120
    while not ready():
        assert time.time() < deadline and proc.poll() is None, f"convzoo {args[0]} did not get going"
        time.sleep(poll)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


@pytest.mark.real_data
def test_sigterm_during_training_saves_last_pt_like_ctrl_c(tmp_path):
    """SIGTERM (SLURM preemption, kubectl delete, timeout, docker stop) killed the run with exit 143 and
    no last.pt; it now finishes the step, writes last.pt and exits 143, and the run resumes."""
    run = tmp_path / "run"
    args = ["train", *SMALL, *MNIST, "--train-limit", "300", "--batch-size", "100", "--steps-per-epoch", "100000",
            "--test-limit", "100", "--print-freq", "1", "--output-dir", run]
    code, err = sigterm_when(args, lambda: (run / "train.log").is_file()
                             and "step: [   3/" in (run / "train.log").read_text())
    assert code == 143 and "Traceback" not in err and "convzoo: terminated" in err, err[-2000:]
    assert (run / "last.pt").is_file() and "interrupted at epoch 1" in (run / "train.log").read_text()
    from convzoo.engine.checkpoint import load_checkpoint

    assert load_checkpoint(run / "last.pt")["step"] >= 3


@pytest.mark.real_data
def test_sigterm_stops_any_command_with_one_line_and_no_temp_files(tmp_path):
    """A SIGTERM during `quantize` (or any command but train and serve, which handle it themselves)
    killed it silently: no message, and a temp file being written was left behind. It now stops as
    Ctrl-C does: the writer's cleanup runs, one line, exit 143."""
    out = tmp_path / "q"
    # model-fp32.onnx is written first (into the run's staging folder); QAT's fine-tune follows
    code, err = sigterm_when(["quantize", "--ckpt", "lenet5:mnist", "--method", "qat", *MNIST, "--output-dir", out],
                             lambda: any(out.glob(".quantize-*/model-fp32.onnx")), poll=0.05)
    assert code == 143 and "Traceback" not in err and err.strip().endswith("convzoo: terminated"), err[-2000:]
    # the folder it made goes with its staging folder, temps and lock file (the lock file stayed before)
    assert not out.exists()
    out.mkdir()  # a folder that was there keeps what it held
    (out / "notes.txt").write_text("mine")
    code, err = sigterm_when(["quantize", "--ckpt", "lenet5:mnist", "--method", "qat", *MNIST, "--output-dir", out],
                             lambda: any(out.glob(".quantize-*/model-fp32.onnx")), poll=0.05)
    assert code == 143 and "Traceback" not in err, err[-2000:]
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # neither the lock file nor any temp


@pytest.mark.real_data
def test_val_split_leaving_no_training_images_names_val_split(tmp_path, capsys):
    """--val-split 0.99 of 50 images blamed --batch-size ('larger than the 0 training images')."""
    cli_error(capsys, "train", *SMALL, *MNIST, "--val-split", "0.99", "--train-limit", "50", "--batch-size", "1",
              "--output-dir", tmp_path / "v", fragments=["--val-split 0.99 of 50 training images leaves no training"])


@pytest.mark.real_data
def test_quantize_report_does_not_replace_convzoo_reports_report_md(folder_run, capsys):
    """`quantize --output-dir RUN` replaced the report.md `convzoo report` wrote there (both used the name)."""
    from convzoo.cli import main

    run = folder_run[1]
    assert main(["report", str(run)]) == 0
    report = (run / "report.md").read_bytes()
    assert main(["quantize", "--ckpt", str(run / "best.pt"), "--method", "ptq", "--calib-batches", "2", "--threads",
                 "1", "--output-dir", str(run)]) == 0
    assert (run / "report.md").read_bytes() == report
    assert "# int8 report" in (run / "int8-report.md").read_text() and (run / "int8-report.json").is_file()


@pytest.mark.real_data
def test_quantize_refuses_an_earlier_quantization_unless_exist_ok(mnist_small, tmp_path, capsys, monkeypatch):
    """A second `quantize --output-dir Q` replaced the first one's files without a word, and one stopped
    during QAT left the new model-fp32.onnx beside the old model-int8.onnx and report. Refused before any
    work (also before `--config` trains); `--exist-ok` removes all the earlier files first."""
    from convzoo.cli import main

    q = tmp_path / "q"
    small = ["--ckpt", mnist_small / "best.pt", "--threads", "1", "--train-limit", "512", "--calib-batches", "2",
             *MNIST, "--output-dir", q]
    assert main(["quantize", *map(str, small), "--method", "qat"]) == 0
    assert {"qat.pt", "qat-fp32.onnx", "model-int8-ptq.onnx"} <= {f.name for f in q.iterdir()}
    before = files(q)
    cli_error(capsys, "quantize", *small, "--method", "ptq", fragments=[
        str(q), "already holds model-fp32.onnx, model-int8.onnx", "--exist-ok"])
    monkeypatch.chdir(tmp_path)  # --config would train into runs/... here
    cli_error(capsys, "quantize", "--config", "lenet-quant-mindspore", *MNIST, "--output-dir", q,
              fragments=["--exist-ok"])
    assert files(q) == before and not (tmp_path / "runs").exists()
    assert main(["quantize", *map(str, small), "--method", "ptq", "--exist-ok"]) == 0
    names = {f.name for f in q.iterdir() if not f.name.startswith(".")}
    assert names == {"model-fp32.onnx", "model-int8.onnx", "int8-report.md", "int8-report.json"}, names
    assert "(PTQ)" in (q / "int8-report.md").read_text()


@pytest.mark.real_data
def test_quantize_config_trains_as_told_and_keeps_an_earlier_model(mnist_small, tmp_path, capsys, monkeypatch):
    """`quantize --config PRESET` could not shorten the preset's training, silently quantized --ckpt when
    both were given, and trained again over a model an earlier run had left in runs/PRESET. Now
    --train-epochs sets the training, the pairs are one line each, and the earlier model is kept."""
    import json

    from convzoo.cli import main

    monkeypatch.chdir(tmp_path)  # --config trains into runs/lenet-quant-mnist here
    cli_error(capsys, "quantize", "--config", "lenet-quant-mindspore", "--ckpt", mnist_small / "best.pt", *MNIST,
              fragments=["give --ckpt", "or --config lenet-quant-mindspore, not both"])
    cli_error(capsys, "quantize", "--ckpt", mnist_small / "best.pt", "--train-epochs", "1", *MNIST,
              fragments=["--train-epochs sets --config's training"])
    assert not (tmp_path / "runs").exists()
    quick = ["quantize", "--config", "lenet-quant-mindspore", "--train-epochs", "1", "--method", "ptq",
             "--calib-batches", "2", "--threads", "1", *map(str, MNIST)]
    assert main([*quick, "--output-dir", "q1"]) == 0
    run = tmp_path / "runs" / "lenet-quant-mnist"
    assert json.loads((run / "summary.json").read_text())["epoch"] == 1  # not the preset's 10
    assert json.loads((tmp_path / "q1" / "int8-report.json").read_text())["int8"]["accuracy"] > 0.9
    trained = files(run)
    cli_error(capsys, *quick, "--output-dir", "q2",
              fragments=["runs/lenet-quant-mnist holds a trained model already", "--ckpt runs/lenet-quant-mnist/best.pt",
                         "--exist-ok to train lenet-quant-mindspore there, replacing it"])
    assert files(run) == trained and not (tmp_path / "q2").exists()


def test_ctrl_c_that_a_library_turns_into_another_error_is_still_an_interrupt(tmp_path):
    """Ctrl-C landing inside a lazy import in torch.onnx's exporter left a half-made module; the exporter
    then failed with its own error (TorchExportError from an AttributeError): a traceback, exit 1. The
    swallowing is torch's and depends on timing, so it is played here by the exporter itself: a real
    SIGINT goes to the command's process, is caught inside, and another error comes out. In a process of
    its own, with Python's own SIGINT handler as a shell gives it (sent inside a pytest-xdist worker, the
    signal killed the worker)."""
    code = textwrap.dedent("""
        import os, signal, sys, time
        import torch
        from convzoo.cli import main

        def exporter_interrupted(*args, **kwargs):
            try:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler runs at the next bytecode: never reached
            except KeyboardInterrupt:
                pass
            raise AttributeError("module 'torch._dynamo' has no attribute 'exc'")

        signal.signal(signal.SIGINT, signal.default_int_handler)
        torch.onnx.export = exporter_interrupted
        sys.exit(main(["export", "--ckpt", "lenet5:mnist", "--output", sys.argv[1]]))
    """)
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.onnx")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().endswith("convzoo: interrupted") and not list(tmp_path.iterdir()), proc.stderr
