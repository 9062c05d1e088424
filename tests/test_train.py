"""Training and evaluation on the real data sets through the real CLI; resume; checkpoints."""

from __future__ import annotations

import json
import os
import pickle
import signal
import time

import pytest
import torch
import yaml

from conftest import FASHION_DIR, MNIST_DIR, assert_user_error, cli_error, need, run_cli, start_cli

MNIST = ["--dataset", "mnist", "--data-path", str(MNIST_DIR)]


@pytest.mark.real_data
def test_lenet5_mnist_reaches_98_5(mnist_run):
    """All 22,699 real training images, the official 10k test set."""
    out = mnist_run
    for name in ("config.yaml", "metrics.csv", "train.log", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    log = (out / "train.log").read_text()
    assert "Epoch: [ 4/ 4], step: [ 354/ 354], loss: [" in log and "Epoch time: " in log
    proc = run_cli("eval", "--ckpt", out / "best.pt", "--data-path", MNIST_DIR, check=0)
    accuracy = float(proc.stdout.split("'Accuracy': ")[1].split()[0])
    assert accuracy >= 0.985, proc.stdout
    assert "class" in proc.stdout and proc.stdout.count("\n") >= 11  # per-class table


@pytest.mark.real_data
def test_lenet5_fashion_mnist_reaches_87(tmp_path):
    out = tmp_path / "run"
    run_cli("train", "--model", "lenet5", "--dataset", "fashion-mnist", "--data-path", need(FASHION_DIR),
            "--epochs", "2", "--schedule", "onecycle", "--lr", "0.05", "--output-dir", out, "--json", check=0)
    ckpt = torch.load(out / "best.pt", weights_only=True)
    assert ckpt["class_names"][0] == "T-shirt/top" and ckpt["input"]["size"] == 32
    assert max(h["test_acc"] for h in ckpt["history"]) >= 0.87


RESUME_ARGS = ["--model", "lenet5", *MNIST, "--train-limit", "6400", "--test-limit", "1000", "--batch-size", "32",
               "--epochs", "2", "--schedule", "cosine", "--augment", "shift", "--deterministic", "--threads", "1",
               "--save-every", "10", "--print-freq", "0"]


def start_train(out, *extra):
    return start_cli("train", *RESUME_ARGS, "--output-dir", out, *extra)


def wait_for_mid_epoch_checkpoint(out, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (out / "last.pt").exists():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("no last.pt appeared")


AIRBENCH_OPTIMISER = ["--model", "lenet-quant", "--lookahead", "--nesterov", "--bias-lr-scale", "8", "--schedule",
                      "triangle"]  # the Lookahead average and the BatchNorm-bias group must resume exactly too


@pytest.mark.real_data
@pytest.mark.parametrize("extra", [[], AIRBENCH_OPTIMISER], ids=["plain", "lookahead"])
def test_sigkill_then_resume_equals_uninterrupted(tmp_path, extra):
    run_cli("train", *RESUME_ARGS, *extra, "--output-dir", tmp_path / "straight", check=0)
    out = tmp_path / "killed"
    proc = start_train(out, *extra)
    wait_for_mid_epoch_checkpoint(out, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and 0 < state["step"] < 200, (state["epoch"], state["step"])
    # A new interpreter (its own hash seed and random state, as a real resume has), not a fork.
    run_cli("train", *RESUME_ARGS, *extra, "--output-dir", out, "--resume", check=0, fresh=True)
    a, b = torch.load(tmp_path / "straight" / "last.pt", weights_only=True), torch.load(out / "last.pt", weights_only=True)
    for part in ("state_dict", "lookahead") if extra else ("state_dict",):
        assert a[part].keys() == b[part].keys()
        for name in a[part]:
            assert torch.equal(a[part][name], b[part][name]), (part, name)


@pytest.mark.real_data
def test_ctrl_c_leaves_valid_last_pt(tmp_path):
    out = tmp_path / "run"
    proc = start_train(out)
    wait_for_mid_epoch_checkpoint(out, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    state = torch.load(out / "last.pt", weights_only=True)
    assert state["format"] == "convzoo-checkpoint" and (state["epoch"], state["step"]) > (0, 0)
    run_cli("train", "--output-dir", out, "--resume", check=0)  # the run's own settings come from last.pt
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 2


@pytest.mark.real_data
def test_resume_cannot_stretch_a_schedule(mnist_run):
    """A finished one-cycle run resumed for more epochs: its lr schedule was planned for 4 (refused before
    anything is written: the shared run stays as it is)."""
    assert_user_error(run_cli("train", "--resume", "--epochs", "5", "--output-dir", mnist_run, "--data-path", MNIST_DIR),
                      "checkpoint was trained with a 4-epoch onecycle schedule; --resume cannot stretch it to 5 epochs")


@pytest.mark.real_data
def test_ctrl_c_after_the_last_epoch_lets_the_run_finish(tmp_path, monkeypatch):
    """A Ctrl-C (or SIGTERM) while the finished run wrote summary.json and curves.png cut them off: no
    curves, no done line, MLflow's run left RUNNING, and --resume refused a run that had finished. The
    signal now only sets the flag until the run is written, then interrupts (the CLI's exit 130, so
    `train && export` stops); the caller's handler is back afterwards."""
    import convzoo
    from convzoo.engine import trainer

    real = trainer.finish_run

    def interrupted_finish(out, summary):
        os.kill(os.getpid(), signal.SIGINT)  # the real signal, delivered at this moment
        real(out, summary)

    monkeypatch.setattr(trainer, "finish_run", interrupted_finish)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        convzoo.train(model="lenet5", dataset="mnist", data_path=need(MNIST_DIR), train_limit=256, test_limit=100,
                      epochs=1, threads=1, output_dir=out, quiet=True)
    assert (out / "curves.png").is_file() and json.loads((out / "summary.json").read_text())["epoch"] == 1
    log = (out / "train.log").read_text()
    assert "done: best test accuracy" in log and "interrupted once the run had ended: its files are complete" in log
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.parametrize("model,params,shapes", [
    ("lenet5", 61706, ["(None, 6, 28, 28)", "(None, 16, 5, 5)", "(None, 400)", "(None, 10)"]),
    ("lenet5-keras", 331214, ["(None, 6, 28, 28)", "(None, 16, 7, 7)", "(None, 32, 7, 7)", "(None, 1568)",
                              "(None, 200)", "(None, 10)"]),
    ("lenet5-1998", 60840, ["(None, 6, 28, 28)", "(None, 16, 10, 10)", "(None, 120, 1, 1)", "(None, 84)"]),
])
def test_summary(model, params, shapes):
    out = run_cli("summary", "--model", model, check=0).stdout
    assert f"Total params: {params:,}" in out
    for shape in shapes:
        assert shape in out, (shape, out)
    assert "MACs per image:" in out


@pytest.mark.real_data
def test_summary_of_a_model_file_shows_its_architecture(mnist_onnx, tmp_path):
    """`summary --model best.pt` (or lenet5:mnist, or an .onnx) said "unknown model 'best.pt'": it now
    shows the file's architecture, with its class count and input."""
    for model in ("lenet5:mnist", mnist_onnx):
        out = run_cli("summary", "--model", model, check=0).stdout
        assert 'Model: "lenet5"' in out and "Total params: 61,706" in out, out
    png = tmp_path / "x.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert_user_error(run_cli("summary", "--model", png, check=None), "x.png")


def test_paper_c3_connection_table():
    from convzoo.models.lenet import LeNet5Paper

    c3 = LeNet5Paper().c3
    assert sum(p.numel() for p in c3.parameters()) == 1516  # 60 connections * 25 + 16 biases
    kernel = (c3.place @ c3.weight).view(16, 6, 5, 5)
    connected = kernel.abs().sum((2, 3)).ne(0)  # (out, in)
    assert connected[0].tolist() == [True, True, True, False, False, False]  # C3 map 0 <- S2 maps 0, 1, 2
    assert connected[15].tolist() == [True] * 6  # the last map sees all six


# These check the messages a machine without CUDA gives; on a GPU machine the flags are valid.
NEEDS_NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    run_cli("train", "--model", "lenet5", *MNIST, "--train-limit", "640", "--epochs", "1", "--output-dir", out,
            "--quiet", check=0)
    return out


@pytest.mark.real_data
@pytest.mark.parametrize("args,fragments", [
    (["train", "--model", "lenet6"], ["unknown model 'lenet6'", "did you mean 'lenet5'"]),
    (["train", "--config", "lenet-mindspor"], ["unknown preset", "did you mean 'lenet-mindspore'"]),
    (["train", "--dataset", "fashion"], ["unknown dataset"]),
    (["train", "--batch-size", "0"], ["--batch-size must be >= 1"]),
    (["train", "--lr", "-0.1"], ["--lr must be in (0, 10000]"]),
    (["train", "--lr", "1e39"], ["--lr must be in (0, 10000]"]),  # was float32 overflow deep in the optimizer
    (["train", "--weight-decay", "1e39"], ["--weight-decay must be in 0..10000"]),
    (["train", "--warmup-epochs", "1e308", "--schedule", "cosine"], ["--warmup-epochs must be in 0..1000000"]),
    (["train", "--model", "alexnet-cifar", "--dataset", "mnist", "--train-limit", "64"],
     ["alexnet-cifar takes 32x32 images as they are", "mnist's are 28x28"]),
    (["train", "--freeze", "*", "--train-limit", "64"], ["--freeze *", "nothing is left to train"]),
    (["train", "--bogus"], ["train: unrecognized arguments: --bogus", "convzoo train --help"]),
    (["serve", "--model", "x.onnx", "--max-upload-mb", "1e308"], ["--max-upload-mb", "outside 0.001..4096"]),
    (["train", "--device_target", "Ascend"], ["Ascend", "available here: cpu"]),
    pytest.param(["train", "--device", "cuda"], ["no CUDA device", "available here: cpu"], marks=NEEDS_NO_GPU),
    (["train", "--device", "cpu:x"], ["--device cpu:x: not a device name"]),  # torch's RuntimeError, exit 1
    pytest.param(["train", "--amp", "fp16"], ["--amp fp16 needs a CUDA GPU"], marks=NEEDS_NO_GPU),
    (["eval", "--ckpt", "/nonexistent/best.pt"], ["/nonexistent/best.pt", "checkpoint not found"]),
    (["train", "--shift-pad", "-5"], ["--shift-pad must be in 0..64"]),
    (["train", "--seed", "4294967296"], ["--seed must be in 0..4294967295"]),  # was NumPy's traceback
    (["train", "--lr", "inf"], ["lr must be a finite number"]),
    (["train", "--epochs", "abc"], ["--epochs", "'abc'"]),
    (["train", "--config", "lenet-mindspore/../../x"], ["config file not found"]),  # a path: the user's file, not a preset
    (["train", "--config", "lenet5-fastt"], ["unknown preset", "lenet5-fast"]),
    (["train", "--config", ""], ["--config", "must not be empty"]),
    (["quantize", "--config", " "], ["--config", "must not be empty"]),
    (["serve", "--model", "x.onnx", "--host", ""], ["--host", "must not be empty"]),
    (["predict", "--model", "lenet5:mnist", "--topk", "0", "x.png"], ["--topk", "outside 1..1000"]),
    (["eval", "--batch-size", "-1", "--ckpt", "x.pt"], ["--batch-size", "outside"]),
])
def test_bad_input(tmp_path, args, fragments):
    assert_user_error(run_cli(*args, "--data-path", MNIST_DIR, cwd=tmp_path) if args[0] == "train"
                      else run_cli(*args, cwd=tmp_path), *fragments)


@pytest.mark.parametrize("name", ["cpu:x", "cpu:-1", "cpu:0:1", "CPU:y"])
def test_a_malformed_device_is_a_user_error(name):
    """torch.device('cpu:x') raised "Invalid device string" (a traceback, exit 1; a RuntimeError from the
    API's evaluate)."""
    import convzoo
    from convzoo.engine.runtime import resolve_device

    with pytest.raises(convzoo.ConvzooError, match=f"^--device {name}: not a device name"):
        resolve_device(name)
    assert resolve_device("cpu:0").type == "cpu"


def test_bad_checkpoints(tmp_path, tiny_run, capsys):
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes((tiny_run / "best.pt").read_bytes()[:5000])
    cli_error(capsys, "eval", "--ckpt", truncated, fragments=("truncated.pt", "truncated or corrupt"))

    onnx_file = tmp_path / "model.onnx"  # its protobuf bytes were called an unsafe pickle
    onnx_file.write_bytes(b"\x08\x07\x12\x07pytorch")
    cli_error(capsys, "quantize", "--ckpt", onnx_file, fragments=("model.onnx", "an ONNX file, not a checkpoint"))
    archive = tmp_path / "model.pt2"  # `export --format pt2` writes these; torch.load called them corrupt
    archive.write_bytes(b"PK\x03\x04 a torch.export zip")
    cli_error(capsys, "eval", "--ckpt", archive, fragments=("model.pt2", "torch.export archive", "does not run"))

    plain = tmp_path / "plain.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, plain)
    cli_error(capsys, "eval", "--ckpt", plain, fragments=("plain.pt", "not a convzoo checkpoint"))

    from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint

    resized = load_checkpoint(tiny_run / "best.pt")  # conv1 as 3x3 kernels: torch's own line for it is shown
    resized["state_dict"] = {**resized["state_dict"], "conv1.weight": torch.zeros(6, 1, 3, 3)}
    save_checkpoint(tmp_path / "resized.pt", resized)
    cli_error(capsys, "eval", "--ckpt", tmp_path / "resized.pt",
              fragments=("resized.pt", "do not fit model 'lenet5'", "size mismatch for conv1.weight", "torch.Size([6, 1, 3, 3])"))
    complex_weights = {**resized, "state_dict": {**resized["state_dict"], "fc1.bias": torch.zeros(120, dtype=torch.complex64)}}
    save_checkpoint(tmp_path / "complex.pt", complex_weights)
    cli_error(capsys, "eval", "--ckpt", tmp_path / "complex.pt", fragments=("complex.pt", "tensor 'fc1.bias' is complex"))
    # A 300 KB file whose stride-0 view claims 10^12 values: the finiteness check asked for 4 TB (a traceback)
    expanded = {"fc1.weight": torch.zeros(1).expand(10**6, 10**6), "fc1.bias": torch.zeros(120)}
    torch.save({**resized, "state_dict": expanded}, tmp_path / "expanded.pt")
    torch.save(expanded, tmp_path / "expanded-weights.pt")
    for args in (["eval", "--ckpt", tmp_path / "expanded.pt"],
                 ["convert", tmp_path / "expanded-weights.pt", "--model", "lenet5", "--dataset", "mnist", "--output",
                  tmp_path / "converted.pt"]):
        cli_error(capsys, *args, fragments=("expanded", "tensor 'fc1.weight' claims 1,000,000,000,000 values",
                                            "stores 1 (an expanded or overlapping view)"))
    assert not (tmp_path / "converted.pt").exists()
    resized["state_dict"]["extra"] = torch.zeros(1)  # ... and a second problem is counted
    save_checkpoint(tmp_path / "resized.pt", resized)
    cli_error(capsys, "eval", "--ckpt", tmp_path / "resized.pt", fragments=("resized.pt", '"extra"', "(and 1 more)"))

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": "convzoo-checkpoint", "payload": RunsCode(marker)}, evil)
    cli_error(capsys, "eval", "--ckpt", evil, fragments=("evil.pt", "refused to load"))
    assert not marker.exists()
    raw = tmp_path / "raw-pickle.pt"  # a bare protocol-4 pickle: torch warned first, then a paragraph
    raw.write_bytes(pickle.dumps({"format": "convzoo-checkpoint", "payload": RunsCode(marker)}, protocol=4))
    proc = run_cli("eval", "--ckpt", raw)
    assert_user_error(proc, "raw-pickle.pt", "refused to load", "(unsupported operand")
    assert proc.stderr.count("\n") == 1 and not marker.exists(), proc.stderr


class RunsCode:
    """Pickling this yields a file whose unpickling would run `touch <marker>`."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.real_data
def test_output_dir_rules(tmp_path, tiny_run):
    base = ["train", "--model", "lenet5", *MNIST, "--train-limit", "640", "--epochs", "1", "--quiet"]
    before = (tiny_run / "best.pt").read_bytes()
    assert_user_error(run_cli(*base, "--output-dir", tiny_run), "already holds a run", "--exist-ok")
    assert (tiny_run / "best.pt").read_bytes() == before  # refused run touched nothing
    # A run refused after the data are read (--freeze leaving nothing to train) changes nothing either,
    # even with --exist-ok (it used to delete evals.csv and start train.log), and creates no new folder.
    saved = {f.name: f.read_bytes() for f in tiny_run.iterdir()}
    assert "evals.csv" in saved
    assert_user_error(run_cli(*base, "--freeze", "*", "--output-dir", tiny_run, "--exist-ok"), "nothing is left to train")
    assert {f.name: f.read_bytes() for f in tiny_run.iterdir()} == saved
    assert_user_error(run_cli(*base, "--freeze", "*", "--output-dir", tmp_path / "new"), "nothing is left to train")
    assert not (tmp_path / "new").exists()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run_cli(*base, "--output-dir", blocker / "run"), "not writable")
    # resume with another schedule than the run's (it blamed the run: "trained with a 2-epoch cosine schedule")
    assert_user_error(run_cli(*base, "--epochs", "3", "--schedule", "cosine", "--output-dir", tiny_run, "--resume"),
                      "--schedule cosine differs from the run's constant")
    # a last.pt of another model copied into the run: refused, the run's files unchanged
    import shutil

    from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint

    copy = tmp_path / "copy"
    shutil.copytree(tiny_run, copy)
    foreign = load_checkpoint(copy / "last.pt")
    foreign["model"] = "lenet5-keras"
    save_checkpoint(copy / "last.pt", foreign)
    saved = {f.name: f.read_bytes() for f in copy.iterdir()}
    assert_user_error(run_cli("train", "--resume", "--output-dir", copy, "--epochs", "2", *MNIST),
                      "last.pt is a 'lenet5-keras' checkpoint", "not this run's")
    assert {f.name: f.read_bytes() for f in copy.iterdir()} == saved
    # resume a lenet5 run as another model
    assert_user_error(run_cli(*base[:2], "lenet5-keras", *base[3:], "--output-dir", tiny_run, "--resume"),
                      "of model 'lenet5', not 'lenet5-keras'")


@pytest.mark.real_data
@pytest.mark.parametrize("edit,fragment", [
    ({"config": "lenet5"}, "saved config must be a mapping"),
    ({"config_epochs": "x"}, "epochs must be a whole number"),
    ({"epoch": "1"}, "epoch must be a non-negative integer"),
    ({"step": -3}, "step must be a non-negative integer"),
    ({"rng": None}, "no valid RNG state"),
    ({"optimizer": {"state": {}, "param_groups": "x"}}, "cannot resume"),
])
def test_resume_refuses_forged_state(tmp_path, tiny_run, edit, fragment):
    """A last.pt whose training state has the wrong types: one line, and the run folder untouched."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    if "config_epochs" in edit:
        state["config"]["epochs"] = edit.pop("config_epochs")
    state.update(edit)
    torch.save(state, run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert_user_error(run_cli("train", "--output-dir", run, "--resume", "--epochs", "2", "--data-path", MNIST_DIR),
                      "last.pt" if "config" not in fragment else "", fragment)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("preset", __import__("convzoo.config", fromlist=["preset_names"]).preset_names())
def test_every_preset_loads_and_describes_itself(preset):
    """Each preset builds a valid TrainConfig of a registered model and data set, and says what it is for."""
    import yaml
    from importlib import resources

    from convzoo.config import build_config
    from convzoo.data.catalog import get_spec
    from convzoo.models.registry import get_model_info

    cfg = build_config(preset, {})
    get_model_info(cfg.model), get_spec(cfg.dataset)
    text = (resources.files("convzoo.configs") / f"{preset}.yaml").read_text()
    assert len(yaml.safe_load(text).get("description", "")) > 20


@pytest.mark.real_data
def test_seed_flag_aliases_reach_the_run(tmp_path):
    """The seeds' spellings (--epoch_size --batch_size --learning_rate --steps --ckpt_path --data_path
    --device_target) set the same settings as convzoo's own flags."""
    import yaml

    out = tmp_path / "run"
    run_cli("train", "--model", "lenet5", "--data_path", need(MNIST_DIR), "--epoch_size", "1", "--batch_size", "32",
            "--learning_rate", "0.02", "--steps", "3", "--ckpt_path", out, "--device_target", "CPU", "--val-split",
            "0.1", "--train-limit", "640", "--quiet", check=0)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["steps_per_epoch"], cfg["val_split"]) == (1, 32, 0.02, 3, 0.1)
    history = (out / "metrics.csv").read_text().splitlines()
    assert len(history) == 2 and history[1].split(",")[3] != ""  # one epoch, with a validation accuracy


@pytest.mark.real_data
def test_target_acc_stops_at_the_target_and_records_the_time(tmp_path):
    """--target-acc with --eval-every-steps stops mid-run at the first evaluation that meets the target
    and records its wall time in summary.json, metrics.csv and evals.csv."""
    import csv

    out = tmp_path / "run"
    proc = run_cli("train", "--model", "lenet5", "--data-path", need(MNIST_DIR), "--train-limit", "6400", "--epochs",
                   "5", "--schedule", "onecycle", "--lr", "0.05", "--target-acc", "0.9", "--eval-every-steps", "25",
                   "--threads", "1", "--output-dir", out, "--print-freq", "0", check=0)
    summary = json.loads((out / "summary.json").read_text())
    reached = summary["reached"]
    assert reached["accuracy"] >= 0.9 and summary["target_acc"] == 0.9
    assert "target accuracy 0.9000 reached" in proc.stdout
    evals = list(csv.DictReader(open(out / "evals.csv")))
    assert float(evals[-1]["accuracy"]) >= 0.9 > max(float(e["accuracy"]) for e in evals[:-1])  # the first that met it
    assert [float(e["wall_s"]) for e in evals] == sorted(float(e["wall_s"]) for e in evals)
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len(rows) == reached["epoch"] < 5 and float(rows[-1]["wall_s"]) >= reached["wall_s"] > 0


@pytest.mark.real_data
def test_eval_and_save_steps_count_over_the_run(tmp_path):
    """--eval-every-steps 12 with 8 steps an epoch never fired (the count restarted each epoch): no
    evaluation between epoch ends, and no word of it."""
    import csv

    out = tmp_path / "run"
    run_cli("train", "--model", "lenet5", "--data-path", need(MNIST_DIR), "--train-limit", "512", "--test-limit",
            "100", "--epochs", "3", "--threads", "1", "--eval-every-steps", "12", "--output-dir", out, "--quiet",
            check=0)
    evals = [(int(e["epoch"]), int(e["step"])) for e in csv.DictReader(open(out / "evals.csv"))]
    assert evals == [(1, 8), (2, 4), (2, 8), (3, 8)]  # step 12 of the run, then each epoch's end (24 is one)


def test_omp_num_threads_sets_the_default_thread_count(monkeypatch):
    from convzoo.engine.runtime import default_threads

    for value, expected in [("1", 1), ("3", 3), (" 2 ", 2), ("3,1", 3), ("", 4), ("0", 4), ("-1", 4), ("1.5", 4),
                            ("two", 4), ("\u00b2", 4), ("99999", 4)]:
        monkeypatch.setenv("OMP_NUM_THREADS", value)
        assert default_threads(4) == expected, value
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert default_threads(4) == 4


@pytest.mark.real_data
def test_train_without_threads_flag_follows_omp_num_threads(tmp_path):
    """$OMP_NUM_THREADS=2 and no --threads: LeNet-5 (1 thread by default) trains on 2; --threads 1 wins."""
    common = ["train", "--model", "lenet5", "--data-path", need(MNIST_DIR), "--train-limit", "256", "--test-limit",
              "256", "--epochs", "1", "--print-freq", "0", "--quiet"]
    for flags, env, expected in [([], {"OMP_NUM_THREADS": "2"}, 2), (["--threads", "1"], {"OMP_NUM_THREADS": "2"}, 1)]:
        out = tmp_path / f"run{expected}"
        run_cli(*common, *flags, "--output-dir", out, env=env, check=0)
        assert yaml.safe_load((out / "config.yaml").read_text())["threads"] == expected


@pytest.mark.real_data
def test_a_diverging_loss_stops_the_run_and_saves_no_nan_weights(tmp_path):
    """--lr 100: epoch 1 stays finite (huge loss), epoch 2 goes NaN at its 2nd step. The run stops there with one
    line naming the epoch and step, exit 2; best.pt and last.pt stay epoch 1's finite weights. --lr 10000 goes NaN
    in epoch 1: no checkpoint at all (was: exit 0, loss nan, best.pt/last.pt of NaN tensors)."""
    from convzoo.engine.checkpoint import load_checkpoint

    common = ["train", "--model", "lenet5", *MNIST, "--train-limit", "256", "--test-limit", "256", "--threads", "1"]
    out = tmp_path / "run"
    line = assert_user_error(run_cli(*common, "--lr", "100", "--epochs", "2", "--print-freq", "1", "--output-dir", out),
                             "training diverged", "nan at epoch 2, step 2", "lower --lr")
    assert str(out) in line
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(out / name)  # refuses non-finite tensors
        assert ckpt["epoch"] == 1 and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    assert len((out / "metrics.csv").read_text().splitlines()) == 2  # header + epoch 1

    out = tmp_path / "early"
    assert_user_error(run_cli(*common, "--lr", "10000", "--epochs", "1", "--output-dir", out),
                      "training diverged", "at epoch 1, within steps 1-4", "no checkpoint was written")
    assert not (out / "best.pt").exists() and not (out / "last.pt").exists()


@pytest.mark.real_data
def test_one_training_at_a_time_per_run_folder(tmp_path):
    """Two `train --exist-ok` into one folder at once both wrote it (train.log held both runs' lines):
    the second is one line while the first runs, and works once it has ended (even by SIGKILL)."""
    out = tmp_path / "run"
    common = ["--model", "lenet5", "--data-path", MNIST_DIR, "--train-limit", "512", "--output-dir", out]
    first = start_cli("train", *common, "--epochs", "1000")
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.csv").exists():  # training, holding the folder
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
        assert_user_error(run_cli("train", *common, "--epochs", "1", "--exist-ok"), "run",
                          "another convzoo train is writing this output folder")
    finally:
        first.kill()
        first.wait()
    run_cli("train", *common, "--epochs", "1", "--exist-ok", check=0)


@pytest.mark.real_data
def test_run_killed_before_its_first_checkpoint(tmp_path):
    """SIGKILL in the first epoch leaves config.yaml and train.log but no last.pt: a re-run was told
    to pass --resume, and --resume then said 'checkpoint not found'. Both now say to start over."""
    out = tmp_path / "run"
    proc = start_cli("train", "--model", "lenet5", *MNIST, "--train-limit", "6400", "--batch-size", "16", "--epochs",
                     "1", "--threads", "1", "--print-freq", "0", "--output-dir", out)
    deadline = time.time() + 120
    while not (out / "config.yaml").exists():  # written once training starts
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (out / "train.log").exists() and not (out / "last.pt").exists()
    base = ["train", "--model", "lenet5", *MNIST, "--epochs", "1", "--output-dir", out]
    line = assert_user_error(run_cli(*base), "saved no checkpoint", "--exist-ok to start it over")
    assert "--resume" not in line
    assert_user_error(run_cli(*base, "--resume"), "last.pt", "no checkpoint to resume from yet", "--exist-ok")


@pytest.mark.real_data
def test_resume_with_other_classes_or_mismatched_weights(tmp_path):
    """`--resume --classes 3,5` on a 10-class run showed torch's cut first line ('Error(s) in loading
    state_dict for LeNet5:'); it is a 'differs from the run's' line now, and a last.pt whose weights
    do not fit names the first mismatching tensor. The run folder is untouched either way."""
    out = tmp_path / "run"
    run_cli("train", "--model", "lenet5", *MNIST, "--train-limit", "320", "--test-limit", "200", "--epochs", "1",
            "--schedule", "constant", "--threads", "1", "--output-dir", out, "--quiet", check=0)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    resume = ["train", *MNIST, "--output-dir", out, "--resume", "--epochs", "2"]
    assert_user_error(run_cli(*resume, "--classes", "3,5"), "last.pt", "--classes 3,5 differs from the run's (not set)")
    assert_user_error(run_cli(*resume, "--val-split", "0.2"), "--val-split 0.2 differs from the run's 0.0")
    state = torch.load(out / "last.pt", weights_only=True)
    state["state_dict"]["fc3.weight"] = torch.zeros(3, 84)
    torch.save(state, out / "last.pt")
    before["last.pt"] = (out / "last.pt").read_bytes()
    assert_user_error(run_cli(*resume), "last.pt", "cannot resume: its weights do not fit",
                      "size mismatch for fc3.weight", "torch.Size([3, 84])")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.real_data
def test_a_config_file_the_user_wrote_trains_and_a_runs_own_config_yaml_retrains(tmp_path):
    """--config FILE.yaml: settings as the flags name them, checked as presets are, flags over the file;
    a run's own config.yaml (with its record keys) gives the same settings back."""
    from convzoo.config import build_config

    mine = tmp_path / "mine.yaml"
    mine.write_text("# my MNIST recipe\nmodel: lenet5\ndataset: mnist\nepochs: 3\nbatch_size: 64\nlr: 0.05\n"
                    "schedule: onecycle\ntrain_limit: 4000\ntest_limit: 2000\n")
    out = tmp_path / "run"
    run_cli("train", "--config", mine, "--epochs", "2", "--data-path", need(MNIST_DIR), "--output-dir", out,
            "--quiet", check=0)
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert (cfg["epochs"], cfg["batch_size"], cfg["lr"], cfg["train_limit"]) == (2, 64, 0.05, 4000)  # the flag won
    assert float(json.loads((out / "summary.json").read_text())["best_acc"]) >= 0.8  # 0.864 measured: it learned
    again = build_config(str(out / "config.yaml"), {})
    assert {k: v for k, v in again.to_dict().items() if k in cfg} == {k: cfg[k] for k in again.to_dict() if k in cfg}


@pytest.mark.parametrize("content, fragment", [
    (None, "config file not found"),
    ("model: [lenet5", "not valid YAML"),
    ("- model: lenet5\n", "holds a list, not a mapping of settings"),
    ("model: lenet5\nepochz: 3\n", "has unknown keys: epochz (did you mean 'epochs'?)"),
    ("model: lenet5\nepochs: three\n", "epochs must be a whole number"),
    ("model: lenet5\nlr: .nan\n", "lr must be a finite number"),
    ("model: resnet\n", "unknown model 'resnet'"),
    (b"model: lenet5 \xff\n", "must be UTF-8"),
    ("a: " + "[" * 50_000 + "]" * 50_000, "not valid YAML"),
    ("#" + "x" * (2 << 20), "larger than 1 MiB"),
])
def test_bad_config_files_are_one_line_naming_the_file(tmp_path, content, fragment):
    path = tmp_path / "bad.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    proc = run_cli("train", "--config", path, "--output-dir", tmp_path / "run")
    message = assert_user_error(proc)
    # a value the file's keys allow but the model registry does not is checked with the flags, as a preset's
    assert fragment in message and ("bad.yaml" in message or "unknown model" in fragment), message
    assert not (tmp_path / "run").exists()


def test_fuzzed_config_files_load_or_are_refused(tmp_path):
    """Seeded: random edits of a real preset's YAML either build a checked config or raise ConfigError."""
    import random
    from importlib import resources

    from convzoo.config import build_config
    from convzoo.errors import ConvzooError

    text = (resources.files("convzoo.configs") / "lenet5-fast.yaml").read_text()
    rng = random.Random(2029)
    built = 0
    for case in range(80):
        chars = list(text)
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(chars))
            if rng.random() < 0.5:
                del chars[i]
            else:
                chars.insert(i, rng.choice(":-[]{}&*!|>'\"#0123456789.e \n\t"))
        path = tmp_path / f"c{case}.yaml"
        path.write_text("".join(chars))
        try:
            build_config(str(path), {})
        except ConvzooError as exc:
            assert "\n" not in str(exc) and str(path) in str(exc) or "unknown" in str(exc) or "must" in str(exc), exc
            continue
        built += 1
    assert 0 < built < 80
