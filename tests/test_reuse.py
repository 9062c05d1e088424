"""Plots and reports of real runs, transfer learning with restore/exclude/freeze, pretrained weights."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import CIFAR_DIR, FASHION_DIR, MNIST_DIR, assert_user_error, need, run_cli

FASHION = ["--dataset", "fashion-mnist", "--data-path", str(FASHION_DIR)]


def png_size(path):
    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("short") / "run"
    run_cli("train", "--model", "lenet5", "--dataset", "mnist", "--data-path", need(MNIST_DIR), "--train-limit", "3200",
            "--epochs", "2", "--output-dir", out, "--quiet", check=0)
    return out


@pytest.mark.real_data
def test_plots_and_report(short_run, mnist_run, tmp_path):
    assert png_size(short_run / "curves.png") == (1100, 420)
    proc = run_cli("eval", "--ckpt", short_run / "best.pt", "--data-path", MNIST_DIR, check=0)
    assert "confusion matrix:" in proc.stdout and png_size(short_run / "confusion.png")[0] >= 600
    proc = run_cli("report", short_run, "--html", check=0)
    assert "| epoch | train loss" in proc.stdout and (short_run / "report.md").is_file()
    page = (short_run / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<table>" in page
    twice = run_cli("report", short_run, short_run.parent / "." / "run", "--output", tmp_path / "twice.md", check=0)
    assert "# Run run\n" in twice.stdout and "| epoch | train loss" in twice.stdout  # one folder named twice: one run
    out = tmp_path / "both.md"
    proc = run_cli("report", short_run, mnist_run, "--output", out, check=0)
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ") and "| lenet5 | mnist |" in line]
    assert len(rows) == 2 and rows[0].startswith(f"| {short_run.parent.name}/run |")
    assert rows[1].startswith(f"| {mnist_run.parent.name}/run |") and "| onecycle |" in rows[1]
    assert png_size(tmp_path / "both-curves.png") == (1100, 420)
    assert_user_error(run_cli("report", tmp_path), "not a run directory")


@pytest.mark.real_data
def test_report_says_a_run_stopped_before_its_epochs(short_run, tmp_path, monkeypatch):
    """A run interrupted after 1 of its 3 epochs was reported as a run of 1 epoch, with no word that it
    had stopped; a finished run (short_run) and one stopped at its --target-acc get no such line."""
    import os
    import signal

    import convzoo
    from convzoo.engine import trainer
    from convzoo.report.tables import build_report

    end_epoch = trainer.TrainingRun._end_epoch

    def then_ctrl_c(self, epoch, meter):
        end_epoch(self, epoch, meter)
        os.kill(os.getpid(), signal.SIGINT)  # a Ctrl-C during epoch 1's end: the run stops after it

    monkeypatch.setattr(trainer.TrainingRun, "_end_epoch", then_ctrl_c)
    run = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        convzoo.train(model="lenet5", data_path=need(MNIST_DIR), train_limit=256, test_limit=100, epochs=3, threads=1,
                      output_dir=run, quiet=True)
    text, _ = build_report([run], tmp_path / "stopped.md")
    assert "Stopped after 1 of its 3 epochs: interrupted, or still training" in text
    compared, _ = build_report([run, short_run], tmp_path / "both.md")
    assert "| 1 of 3 (stopped) |" in compared and "| 2 |" in compared
    assert "Stopped" not in build_report([short_run], tmp_path / "short.md")[0]
    monkeypatch.setattr(trainer.TrainingRun, "_end_epoch", end_epoch)
    reached = tmp_path / "reached"
    convzoo.train(model="lenet5", data_path=need(MNIST_DIR), train_limit=256, test_limit=100, epochs=3, threads=1,
                  target_acc=0.05, output_dir=reached, quiet=True)
    assert "Stopped" not in build_report([reached], tmp_path / "reached.md")[0]


def json_events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


@pytest.mark.real_data
def test_restore_exclude_and_freeze(mnist_run, tmp_path):
    out = tmp_path / "fashion"
    proc = run_cli("train", "--model", "lenet5", *FASHION, "--train-limit", "3200", "--epochs", "1",
                   "--restore_path", mnist_run / "best.pt", "--restore_exclude", "fc3.*", "--freeze", "conv1.*,conv2.*",
                   "--output-dir", out, "--json", check=0)
    restore = next(e["restore"] for e in json_events(proc.stdout) if "restore" in e)
    assert restore["loaded"] == ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc1.weight", "fc1.bias",
                                 "fc2.weight", "fc2.bias"]
    assert restore["excluded"] == ["fc3.weight", "fc3.bias"] and restore["new"] == ["fc3.weight", "fc3.bias"]
    source = torch.load(mnist_run / "best.pt", weights_only=True)["state_dict"]
    trained = torch.load(out / "last.pt", weights_only=True)["state_dict"]
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(source[name], trained[name]), name  # frozen: bit-identical
    assert not torch.equal(source["fc1.weight"], trained["fc1.weight"])  # not frozen: trained


@pytest.mark.real_data
def test_freeze_keeps_a_frozen_batch_norms_statistics(tmp_path):
    """A frozen BatchNorm's weights stayed fixed but its running mean and variance moved with every
    batch (training mode), so the "frozen" layer computed something else after the run."""
    base = ["train", "--model", "lenet-quant", "--dataset", "mnist", "--data-path", need(MNIST_DIR), "--train-limit",
            "256", "--test-limit", "100", "--epochs", "1", "--threads", "1", "--quiet"]
    run_cli(*base, "--output-dir", tmp_path / "source", check=0)
    run_cli(*base, "--restore", tmp_path / "source" / "best.pt", "--freeze", "conv1.*", "--output-dir",
            tmp_path / "tuned", check=0)
    source = torch.load(tmp_path / "source" / "best.pt", weights_only=True)["state_dict"]
    tuned = torch.load(tmp_path / "tuned" / "last.pt", weights_only=True)["state_dict"]
    frozen = [k for k in source if k.startswith("conv1.")]
    assert {"conv1.1.running_mean", "conv1.1.running_var", "conv1.1.num_batches_tracked"} <= set(frozen)
    for name in frozen:
        assert torch.equal(source[name], tuned[name]), name
    assert not torch.equal(source["conv2.1.running_mean"], tuned["conv2.1.running_mean"])  # not frozen: adapts


@pytest.mark.real_data
def test_restore_to_class_subset_skips_mismatched_head(mnist_run, tmp_path):
    proc = run_cli("train", "--model", "lenet5", "--dataset", "mnist", "--data-path", MNIST_DIR, "--classes", "3,5,8",
                   "--train-limit", "6000", "--epochs", "1", "--restore", mnist_run / "best.pt",
                   "--output-dir", tmp_path / "sub", "--json", check=0)
    restore = next(e["restore"] for e in json_events(proc.stdout) if "restore" in e)
    assert restore["shape_mismatch"] == ["fc3.weight (10, 84)->(3, 84)", "fc3.bias (10,)->(3,)"]
    ckpt = torch.load(tmp_path / "sub" / "best.pt", weights_only=True)
    assert ckpt["class_names"] == ["3", "5", "8"] and ckpt["history"][-1]["test_acc"] > 0.95


@pytest.mark.real_data
def test_finetune_from_mnist_beats_scratch_on_fashion(mnist_run, tmp_path):
    """Same seed, same data, one epoch on 6,000 Fashion-MNIST images: the MNIST-pretrained
    convolutions start from useful edge detectors."""
    common = ["--model", "lenet5", *FASHION, "--train-limit", "6000", "--epochs", "1", "--seed", "0", "--quiet"]
    run_cli("train", *common, "--output-dir", tmp_path / "scratch", check=0)
    run_cli("train", *common, "--restore", mnist_run / "best.pt", "--restore-exclude", "fc*",
            "--output-dir", tmp_path / "finetune", check=0)
    acc = {name: torch.load(tmp_path / name / "last.pt", weights_only=True)["history"][-1]["test_acc"]
           for name in ("scratch", "finetune")}
    assert acc["finetune"] > acc["scratch"], acc


@pytest.mark.real_data
@pytest.mark.parametrize("name,data,floor", [("lenet5:mnist", MNIST_DIR, 0.993),
                                             ("lenet5:fashion-mnist", FASHION_DIR, 0.92)])
def test_pretrained_reproduces_recorded_accuracy(name, data, floor):
    """The shipped weights meet their floors, and match the accuracy recorded when they were packed
    (measured then in PyTorch, now through the cached ONNX export: at most 2 of 10,000 may flip)."""
    from convzoo.models.pretrained import index

    entry = index()[name]
    assert entry["size_bytes"] < 300 * 1024
    proc = run_cli("eval", "--model", name, "--data-path", need(data), "--json", check=0)
    accuracy = json.loads(proc.stdout)["accuracy"]
    assert accuracy >= floor and abs(accuracy - entry["accuracy"]) <= 2e-4


@pytest.mark.real_data
def test_pretrained_predict_without_training(tmp_path):
    from convzoo.data import formats

    digit = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]
    Image.fromarray(255 - digit).resize((120, 120)).save(tmp_path / "seven.png")
    proc = run_cli("predict", "--model", "lenet5:mnist", tmp_path / "seven.png", check=0)
    assert proc.stdout.split(": ")[1].startswith("7 ")


def test_tampered_pretrained_weights_refused(tmp_path, monkeypatch, capsys):
    from convzoo import cli
    from convzoo.models import pretrained

    copy = tmp_path / "pretrained"
    shutil.copytree(pretrained.package_folder(), copy)
    data = bytearray((copy / "lenet5-mnist.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (copy / "lenet5-mnist.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(pretrained, "package_folder", lambda: copy)
    assert cli.main(["predict", "--model", "lenet5:mnist", str(tmp_path / "any.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "lenet5-mnist.safetensors" in err and "does not match the recorded" in err


@pytest.mark.real_data
def test_restore_from_other_trainers_weights(tmp_path):
    """--restore takes, besides convzoo's files, what other training code saves: a plain state_dict, one
    under 'state_dict' / 'model_state_dict' / 'model', DataParallel's 'module.' names and a .safetensors
    file without convzoo's description (all were refused as 'not a convzoo checkpoint'). Matching by
    name and shape and --restore-exclude apply as to convzoo's files; files with nothing to restore,
    unusable tensors or code to unpickle are one line each, before any run folder is made. Each form
    is read in this process; one goes through `convzoo train` end to end."""
    from safetensors.torch import load_file, save_file

    from convzoo.engine.checkpoint import restore_weights
    from convzoo.errors import CheckpointError
    from convzoo.models.pretrained import pretrained_path
    from convzoo.models.registry import create_model

    source = load_file(pretrained_path("lenet5:mnist"))
    files = {"plain.pth": source, "wrapped.pt": {"state_dict": source, "epoch": 3},
             "model_state.pt": {"model_state_dict": source, "optimizer_state_dict": {}},
             "model.pt": {"model": source}, "ddp.pth": {f"module.{k}": v for k, v in source.items()}}
    for name, obj in files.items():
        torch.save(obj, tmp_path / name)
    save_file(source, tmp_path / "plain.safetensors")
    for name in [*files, "plain.safetensors"]:
        model = create_model("lenet5", 10, 1)
        restore = restore_weights(model, tmp_path / name, exclude=["fc3.*"])
        assert len(restore["loaded"]) == 8 and restore["unused"] == [], (name, restore)
        assert sorted(restore["excluded"]) == ["fc3.bias", "fc3.weight"], name
        assert torch.equal(model.state_dict()["conv1.weight"], source["conv1.weight"]), name

    train = ["train", "--model", "lenet5", "--dataset", "mnist", "--data-path", need(MNIST_DIR), "--train-limit", "64",
             "--test-limit", "100", "--epochs", "1", "--threads", "1", "--freeze", "conv*", "--json"]
    proc = run_cli(*train, "--restore", tmp_path / "ddp.pth", "--output-dir", tmp_path / "run", check=0)
    restore = next(e["restore"] for e in json_events(proc.stdout) if "restore" in e)
    assert len(restore["loaded"]) == 10 and restore["unused"] == [], restore
    trained = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state_dict"]
    assert torch.equal(trained["conv1.weight"], source["conv1.weight"])  # restored, then frozen

    torch.save({"net.conv1.weight": source["conv1.weight"]}, tmp_path / "other-names.pt")
    torch.save({**source, "fc1.weight": source["fc1.weight"].to(torch.float8_e4m3fn)}, tmp_path / "float8.pt")
    torch.save({"weights": source}, tmp_path / "elsewhere.pt")
    huge = {k: v.double() for k, v in source.items()}
    huge["fc3.bias"][0] = 1e300  # finite in float64, inf in the float32 the model runs in ("training diverged")
    torch.save(huge, tmp_path / "float64-huge.pt")
    for name, fragments in (("other-names.pt", ["no tensor matches the model", "'net.conv1.weight'"]),
                            ("float8.pt", ["tensor 'fc1.weight' is float8_e4m3fn", "must be float16"]),
                            ("float64-huge.pt", ["tensor 'fc3.bias' holds 1e+300, beyond float32's range"]),
                            ("elsewhere.pt", ["no weights found", "'model_state_dict'"])):
        with pytest.raises(CheckpointError) as caught:
            restore_weights(create_model("lenet5", 10, 1), tmp_path / name)
        assert all(f in str(caught.value) for f in fragments), (name, str(caught.value))
    assert_user_error(run_cli(*train, "--restore", tmp_path / "float8.pt", "--output-dir", tmp_path / "run-float8"),
                      str(tmp_path / "float8.pt"), "must be float16")
    assert not (tmp_path / "run-float8").exists()


def test_confusion_plot_of_many_classes_stays_bounded(tmp_path):
    """The confusion plot grew 0.7 inch per class: 200 classes took 7.7 GB and a 200-megapixel PNG
    (which convzoo's own plot check then could not open), 1,000 a 30 GiB canvas and a traceback.
    The figure now stops at 20 inches and names every k-th class beyond 28."""
    from convzoo.report.plots import plot_confusion, plot_kind

    rng = np.random.default_rng(0)
    for k in (10, 1000):
        confusion = rng.integers(0, 3, (k, k)) + 20 * np.eye(k, dtype=np.int64)
        path = plot_confusion(confusion, [f"class {i}" for i in range(k)], tmp_path / f"confusion-{k}.png")
        with Image.open(path) as image:
            assert max(image.size) <= 2300, image.size
        assert plot_kind(path) == "confusion"


def test_confusion_plot_greys_out_a_class_without_test_images(tmp_path):
    """A class with no test images drew a white row, as if every one of its images had been missed:
    now a grey row saying so; the other rows keep their colours (no grey in them)."""
    from convzoo.report.plots import NO_IMAGES_GREY, plot_confusion

    grey = tuple(int(NO_IMAGES_GREY[i:i + 2], 16) for i in (1, 3, 5))
    counts = {}
    for name, confusion in (("full", [[5, 1, 0], [0, 4, 2], [1, 0, 6]]), ("empty", [[5, 1, 0], [0, 0, 0], [1, 0, 6]])):
        path = plot_confusion(np.array(confusion), ["cat", "dog", "eel"], tmp_path / f"{name}.png")
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        counts[name] = int((pixels == grey).all(1).sum())
    assert counts["full"] < 200 and counts["empty"] > 20_000, counts


@pytest.mark.real_data
def test_eval_of_shipped_weights_by_path_writes_nothing_into_the_package(capsys):
    """`eval --ckpt .../convzoo/pretrained/lenet5-mnist.safetensors` wrote confusion.png into the
    installed package (beside the file, as for a run's checkpoint)."""
    from convzoo.cli import main
    from convzoo.models.pretrained import package_folder, pretrained_path

    before = sorted(p.name for p in package_folder().iterdir())
    assert main(["eval", "--ckpt", str(pretrained_path("lenet5:mnist")), "--test-limit", "100", "--threads", "1",
                 "--data-path", str(need(MNIST_DIR))]) == 0
    assert "'Accuracy'" in capsys.readouterr().out
    assert sorted(p.name for p in package_folder().iterdir()) == before
