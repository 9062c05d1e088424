"""`convzoo convert`: another trainer's weights (a plain state_dict, one under 'model_state_dict', names
with a wrapper's 'model.' prefix) become a checkpoint that eval and predict read exactly as the run's
own best.pt; hostile or unfitting files are one `convzoo: error: FILE: ...` line, and nothing is written."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from conftest import MNIST_DIR, RunsCode, cli_error, run_cli
from fuzzing import problems, run_cases
from convzoo.cli import main
from convzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
from convzoo.models.pretrained import pretrained_path
from convzoo.models.registry import create_model

TO_LENET = ["--model", "lenet5", "--dataset", "mnist"]


def cli_json(capsys, *args) -> list[dict]:
    """`convzoo ARGS --json` in this process: exit 0, its JSON lines."""
    code = main([str(a) for a in args] + ["--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


@pytest.mark.real_data
def test_converted_state_dicts_score_and_predict_as_the_run(mnist_run, tmp_path, capsys):
    best = mnist_run / "best.pt"
    state = torch.load(best, weights_only=True)["state_dict"]
    def converted(name):
        return tmp_path / f"c-{Path(name).stem}.pt"

    forms = {"plain.pt": state, "wrapped.pt": {"model_state_dict": state, "epoch": 4},
             "lightning.pt": {"state_dict": {f"model.{k}": v for k, v in state.items()}},
             # torch.compile under DDP, and DataParallel's names in a .safetensors file: both were refused
             "ddp-compiled.pt": {f"module._orig_mod.{k}": v for k, v in state.items()},
             "dp.safetensors": {f"module.{k}": v.contiguous() for k, v in state.items()}}
    for name, obj in forms.items():
        if name.endswith(".safetensors"):
            from safetensors.torch import save_file

            save_file(obj, tmp_path / name)
        else:
            torch.save(obj, tmp_path / name)
    # the real command line once; the other forms in this process
    proc = run_cli("convert", tmp_path / "plain.pt", *TO_LENET, "--output", tmp_path / "c-plain.pt", check=0)
    assert proc.stdout.strip() == (f"wrote {tmp_path / 'c-plain.pt'}: lenet5 for mnist (10 classes, 10 tensors from "
                                   f"{tmp_path / 'plain.pt'})")
    for name in ("wrapped.pt", "lightning.pt", "ddp-compiled.pt", "dp.safetensors"):
        [result] = cli_json(capsys, "convert", tmp_path / name, *TO_LENET, "--output", converted(name))
        assert result == {"output": str(converted(name)), "source": str(tmp_path / name), "model": "lenet5",
                          "dataset": "mnist", "num_classes": 10, "tensors": 10}

    original = load_checkpoint(best)
    for name in forms:
        ckpt = load_checkpoint(converted(name))
        for key in ("model", "dataset", "class_names", "num_classes", "input", "preprocess"):
            assert ckpt[key] == original[key], key
        assert ckpt["state_dict"].keys() == state.keys()
        assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in state.items())

    score = ["--data-path", MNIST_DIR, "--test-limit", "1000"]
    [expected] = cli_json(capsys, "eval", "--ckpt", best, *score, "--confusion", tmp_path / "original.png")
    assert expected["accuracy"] > 0.9
    for name in forms:
        [got] = cli_json(capsys, "eval", "--ckpt", converted(name), *score)
        assert got["accuracy"] == expected["accuracy"] and got["per_class"] == expected["per_class"], name

    assert main(["data", "sample", "mnist", "--count", "6", "--output", str(tmp_path / "digits"),
                 "--data-path", str(MNIST_DIR)]) == 0
    capsys.readouterr()
    images = sorted(str(p) for p in (tmp_path / "digits").glob("*.png"))
    assert len(images) == 6
    want = cli_json(capsys, "predict", "--model", best, *images)
    got = cli_json(capsys, "predict", "--model", tmp_path / "c-lightning.pt", *images)
    assert [r["class"] for r in got] == [r["class"] for r in want]
    assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in want], abs=1e-6)


# --- hostile and unfitting inputs ------------------------------------------------------------------

@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """The shipped LeNet-5 MNIST weights as another trainer saves them: torch.save(model.state_dict())."""
    path = tmp_path_factory.mktemp("weights") / "weights.pt"
    torch.save(load_checkpoint(pretrained_path("lenet5:mnist"))["state_dict"], path)
    return path


def refused(capsys, source, output, *fragments, flags=TO_LENET) -> str:
    line = cli_error(capsys, "convert", source, *flags, "--output", output, fragments=fragments)
    assert not output.exists(), "written despite the refusal"
    return line


def test_weights_of_another_model_are_refused_naming_the_tensor(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(create_model("alexnet-cifar", num_classes=10, in_channels=3).state_dict(), tmp_path / "alexnet.pt")
    refused(capsys, tmp_path / "alexnet.pt", tmp_path / "out.pt", str(tmp_path / "alexnet.pt"),
            "weights do not fit model 'lenet5'", "missing key", "conv1.weight")
    torch.save(create_model("lenet5", num_classes=1).state_dict(), tmp_path / "one-class.pt")
    refused(capsys, tmp_path / "one-class.pt", tmp_path / "out.pt", str(tmp_path / "one-class.pt"),
            "do not fit model 'lenet5'", "fc3.weight", "torch.Size([1, 84])")
    # MNIST's 1-channel weights for a model of CIFAR-10's 3-channel images
    refused(capsys, tmp_path / "one-class.pt", tmp_path / "out.pt", "conv1.weight", "torch.Size([6, 3, 5, 5])",
            flags=["--model", "lenet5", "--dataset", "cifar10"])


def test_damaged_foreign_or_missing_files_are_one_line(weights, tmp_path, capsys):
    data = weights.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    refused(capsys, tmp_path / "truncated.pt", tmp_path / "out.pt", "truncated.pt", "truncated or corrupt")
    (tmp_path / "notes.pt").write_text("these are not weights\n")
    refused(capsys, tmp_path / "notes.pt", tmp_path / "out.pt", "notes.pt", "not a checkpoint or model")
    refused(capsys, tmp_path / "missing.pt", tmp_path / "out.pt", "missing.pt", "not found")
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "no-tensors.pt")
    refused(capsys, tmp_path / "no-tensors.pt", tmp_path / "out.pt", "no-tensors.pt", "no weights found")
    # a state_dict but for one entry ('no weights found' named nothing): the entry is named
    state = torch.load(weights, weights_only=True)
    for key, value in (("fc3.bias", 3), (7, torch.zeros(2))):
        torch.save({"state_dict": {**state, key: value}, "epoch": 3}, tmp_path / "odd.pt")
        refused(capsys, tmp_path / "odd.pt", tmp_path / "out.pt", "odd.pt", "a state_dict maps names to tensors, but "
                f"'{key}' holds {type(value).__name__}")
    marker = tmp_path / "ran"
    torch.save({"state_dict": RunsCode(marker)}, tmp_path / "evil.pt")
    refused(capsys, tmp_path / "evil.pt", tmp_path / "out.pt", "evil.pt", "arbitrary unpickling")
    assert not marker.exists()


def test_outputs_that_would_destroy_a_file_are_refused(weights, tmp_path, capsys):
    before = weights.read_bytes()
    cli_error(capsys, "convert", weights, *TO_LENET, "--output", weights, fragments=(str(weights), "also the input"))
    assert weights.read_bytes() == before
    taken = tmp_path / "taken.pt"
    taken.write_bytes(b"someone's file")
    cli_error(capsys, "convert", weights, *TO_LENET, "--output", taken, fragments=(str(taken), "already exists",
                                                                                   "--exist-ok"))
    assert taken.read_bytes() == b"someone's file"
    refused(capsys, weights, tmp_path / "model.onnx", "model.onnx", "must end in .pt")
    assert main(["convert", str(weights), *TO_LENET, "--output", str(taken), "--exist-ok"]) == 0
    assert load_checkpoint(taken)["model"] == "lenet5"


def test_unknown_names_and_image_folders_are_refused(weights, tmp_path, capsys):
    out = tmp_path / "out.pt"
    refused(capsys, weights, out, "unknown model 'lenet'", "did you mean 'lenet5'", "alexnet-cifar",
            flags=["--model", "lenet", "--dataset", "mnist"])
    refused(capsys, weights, out, "unknown dataset 'mnsit'", "fashion-mnist", flags=["--model", "lenet5",
                                                                                     "--dataset", "mnsit"])
    refused(capsys, weights, out, "catalog data set", "--restore", flags=["--model", "lenet5", "--dataset", "folder"])
    refused(capsys, weights, out, "alexnet-cifar takes 32x32 images as they are",
            flags=["--model", "alexnet-cifar", "--dataset", "mnist"])


def test_eval_of_a_plain_state_dict_points_to_convert(weights, capsys):
    cli_error(capsys, "eval", "--ckpt", weights, fragments=(str(weights), "not a convzoo checkpoint",
                                                            "convzoo convert"))


def test_seeded_damage_to_real_weights_converts_or_is_one_line(weights, tmp_path):
    """30 seeded byte flips and truncations of a real state_dict file: each is refused with one line
    naming the file, or converts to a checkpoint that loads into its model with the undamaged file's
    exact weights (the damage missed them); never a crash. (Before the zip's CRC-32s were checked,
    flips inside a weight converted: damaged weights, in silence.)"""
    data, rng = weights.read_bytes(), random.Random(0)
    cases = []
    for i in range(30):
        damaged = bytearray(data)
        if i % 2:
            damaged = damaged[: rng.randrange(len(data))]
        else:
            # half of the flips in the first 2 KB: the zip's first header and the pickled index of tensors
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(2048 if rng.random() < 0.5 else len(data))] ^= 1 << rng.randrange(8)
        (tmp_path / f"case{i}.pt").write_bytes(bytes(damaged))
        cases.append(["convert", f"case{i}.pt", *TO_LENET, "--output", f"out{i}.pt"])
    cases.append(["convert", weights, *TO_LENET, "--output", "undamaged.pt"])
    results = run_cases(cases, tmp_path)
    assert problems(results, lambda i: f"case {i} (seed 0)") == []
    intact = load_checkpoint(tmp_path / "undamaged.pt")["state_dict"]
    for i, r in enumerate(results[:-1]):
        if r["rc"] == 0:
            ckpt = load_checkpoint(tmp_path / f"out{i}.pt")
            model_from_checkpoint(ckpt, f"out{i}.pt")
            assert all(torch.equal(ckpt["state_dict"][k], v) for k, v in intact.items()), f"case {i}: damaged weights"
        else:
            assert f"case{i}.pt" in r["stderr"] and not (tmp_path / f"out{i}.pt").exists(), r["stderr"]


def test_convzoo_files_are_not_relabelled_for_another_task(mnist_run, tmp_path, capsys):
    """Shipped MNIST weights, their .safetensors and a convzoo MNIST checkpoint converted `--dataset
    fashion-mnist` were written as a Fashion model of digit weights: refused, naming what each file
    says it holds. The same task converts (a copy), as before."""
    out = tmp_path / "out.pt"
    for source in ("lenet5:mnist", pretrained_path("lenet5:mnist"), mnist_run / "best.pt"):
        refused(capsys, source, out, str(source), "these are lenet5 weights for mnist by the file's own description",
                "not lenet5 for fashion-mnist", "train --restore", flags=["--model", "lenet5", "--dataset", "fashion-mnist"])
        refused(capsys, source, out, "not alexnet-cifar for cifar10", flags=["--model", "alexnet-cifar", "--dataset",
                                                                            "cifar10"])
    assert not out.exists()
    cli_json(capsys, "convert", "lenet5:mnist", *TO_LENET, "--output", out)
    assert load_checkpoint(out)["class_names"] == load_checkpoint(mnist_run / "best.pt")["class_names"]
