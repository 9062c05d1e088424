"""Hostile checkpoints made from real files (a small real run's last.pt and best.pt, the shipped
LeNet-5 weights): each is one `convzoo: error: FILE: ...` line, found before anything is built or
trained from it, never a traceback or a misleading message."""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import struct
import zipfile

import pytest
import torch

from conftest import MNIST_DIR, cli_error, need, run_cli
from test_qat_qparams_schema import paths, set_at
from convzoo.engine.checkpoint import check_resume_state, load_checkpoint, load_weights, restore_weights, save_checkpoint
from convzoo.errors import CheckpointError
from convzoo.models.pretrained import pretrained_path
from convzoo.models.registry import create_model

MNIST = ["--dataset", "mnist", "--data-path", str(MNIST_DIR)]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """LeNet-5 trained for one epoch on 640 real MNIST images: a real last.pt and best.pt."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    run_cli("train", "--model", "lenet5", "--dataset", "mnist", "--data-path", need(MNIST_DIR), "--train-limit", "640",
            "--test-limit", "500", "--epochs", "1", "--output-dir", out, "--quiet", check=0)
    return out


def shipped_state() -> dict:
    return load_checkpoint(pretrained_path("lenet5:mnist"))["state_dict"]


# --- 1. sparse and meta tensors -------------------------------------------------------------------

@pytest.mark.real_data
@pytest.mark.parametrize("kind", ["sparse_coo", "sparse_csr", "meta"])
def test_sparse_or_meta_weights_are_one_line(small_run, tmp_path, capsys, kind):
    make = {"sparse_coo": lambda t: t.to_sparse(), "sparse_csr": lambda t: t.to_sparse_csr(),
            "meta": lambda t: t.to("meta")}[kind]
    word = "meta device" if kind == "meta" else "sparse"
    ckpt = load_checkpoint(small_run / "best.pt")
    ckpt["state_dict"]["fc3.weight"] = make(ckpt["state_dict"]["fc3.weight"])
    save_checkpoint(tmp_path / "odd.pt", ckpt)
    for command in (["eval", "--ckpt"], ["export", "--output", tmp_path / "m.onnx", "--ckpt"]):
        cli_error(capsys, *command, tmp_path / "odd.pt", fragments=("odd.pt", "tensor 'fc3.weight'", word,
                                                                    "must be dense"))
    with pytest.raises(CheckpointError, match="tensor 'fc3.weight' is .*must be dense"):
        load_checkpoint(tmp_path / "odd.pt")  # the API
    plain = {**shipped_state()}
    plain["fc3.weight"] = make(plain["fc3.weight"])
    torch.save(plain, tmp_path / "plain.pt")  # a plain state_dict, for --restore
    with pytest.raises(CheckpointError, match=f"plain.pt: tensor 'fc3.weight' is .*{word}"):
        restore_weights(create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "plain.pt")


# --- 2. malformed training state in last.pt --------------------------------------------------------

def forge(state: dict, edit: str) -> None:
    """One hostile edit of a real last.pt's training state."""
    if edit == "best_acc":
        state["best_acc"] = "abc"
    elif edit == "rng_short":
        state["rng"] = {"torch": torch.zeros(3, dtype=torch.uint8)}
    elif edit == "optimizer_shape":
        state["optimizer"]["state"][0]["momentum_buffer"] = torch.zeros(3)
    elif edit == "optimizer_empty":
        state["optimizer"] = {}
    elif edit == "history":
        state["history"] = [{"epoch": "x", "test_acc": "y"}]
    elif edit == "accumulators_nan":
        state["epoch_accumulators"] = {"loss_sum": float("nan"), "correct": 0, "seen": 0, "time": 0.0}
    elif edit == "accumulators_negative":
        state["epoch_accumulators"] = {"loss_sum": 1.0, "correct": -5, "seen": 64, "time": 1.0}
    elif edit == "accumulators_more_correct":
        state["epoch_accumulators"] = {"loss_sum": 1.0, "correct": 65, "seen": 64, "time": 1.0}
    elif edit == "step":
        state["step"] = 10**9


RESUME_EDITS = {"best_acc": "best_acc", "rng_short": "RNG state", "optimizer_shape": "momentum_buffer",
                "optimizer_empty": "must hold 'param_groups'", "history": "history entry 1", "accumulators_nan": "loss_sum",
                "accumulators_negative": "'correct'", "accumulators_more_correct": "65 correct of 64",
                "step": "step 1000000000"}


@pytest.mark.real_data
@pytest.mark.parametrize("edit", list(RESUME_EDITS))
def test_resume_refuses_malformed_training_state_before_training(small_run, tmp_path, capsys, edit):
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    state = torch.load(run / "last.pt", weights_only=True)
    forge(state, edit)
    torch.save(state, run / "last.pt")
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    line = cli_error(capsys, "train", "--resume", "--output-dir", run, "--epochs", "2", *MNIST,
                     fragments=("last.pt", "cannot resume", RESUME_EDITS[edit]))
    assert "diverged" not in line and "--lr" not in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing trained or written


BAD_VALUES = [None, "x", -1, -0.5, 2, 10**9, float("nan"), float("inf"), True, [], {}, [1.0, "a"],
              torch.zeros(3), torch.zeros(2, dtype=torch.uint8), torch.zeros(3).to_sparse()]


@pytest.mark.real_data
def test_seeded_mutations_of_the_training_state_are_refused_or_resume(small_run):
    """300 seeded mutations of a real last.pt's training state: check_resume_state refuses each with
    one CheckpointError line, or what it let through loads into a real optimizer, steps it, sets the
    RNG and restarts the epoch's totals without any other error."""
    from convzoo.config import build_config
    from convzoo.engine.trainer import EpochMeter, build_optimizer

    valid = torch.load(small_run / "last.pt", weights_only=True)
    valid["epoch_accumulators"] = {"loss_sum": 3.5, "correct": 40, "seen": 64, "time": 0.5}
    check_resume_state(valid, "last.pt")
    keys = ("epoch", "step", "global_step", "rng", "optimizer", "history", "best_acc", "epoch_accumulators")
    spots = [p for p in paths({k: valid[k] for k in keys}) if p]  # every path into the training state
    rng, refused = random.Random(0), 0
    cfg = build_config(None, {"model": "lenet5"})
    saved_rng = torch.get_rng_state()
    try:
        for case in range(300):
            state = {**valid, **copy.deepcopy({k: valid[k] for k in keys})}
            spot = rng.choice(spots)
            set_at(state, spot, rng.choice(BAD_VALUES))
            try:
                check_resume_state(state, "last.pt")
            except CheckpointError as exc:
                assert str(exc).startswith("last.pt: ") and "\n" not in str(exc)
                refused += 1
                continue
            except Exception as exc:  # noqa: BLE001 - anything else is the bug this test is for
                pytest.fail(f"case {case} (seed 0) at {spot}: {type(exc).__name__}: {exc}")
            model = create_model("lenet5", num_classes=10, in_channels=1)
            model.load_state_dict(state["state_dict"])
            optimizer = build_optimizer(cfg, model)
            try:
                optimizer.load_state_dict(state["optimizer"])
                model(torch.zeros(2, 1, 32, 32)).sum().backward()
                optimizer.step()
                torch.set_rng_state(state["rng"]["torch"])
                EpochMeter.start(state["epoch_accumulators"], "cpu", lr=0.01)
                assert all(math.isfinite(float(h.get("train_loss") or 0)) for h in state["history"])
            except Exception as exc:  # noqa: BLE001
                pytest.fail(f"case {case} (seed 0) at {spot} passed the check, then: {type(exc).__name__}: {exc}")
    finally:
        torch.set_rng_state(saved_rng)
    assert refused >= 200


# --- 3. forged sizes: nothing large is allocated before the refusal -------------------------------

def test_a_forged_architecture_is_refused_before_the_model_is_built(tmp_path, capsys, monkeypatch):
    """A small .safetensors file claiming AlexNet: its LeNet-sized tensors are compared with AlexNet's
    on the meta device; the real AlexNet (here 10 classes; 100,000 made it 2 GB) is never built."""
    from safetensors.torch import save_file

    import convzoo.models.registry as registry

    meta = {"model": "alexnet", "num_classes": 100000, "class_names": [f"c{i}" for i in range(100000)],
            "input": {"channels": 1, "size": 227, "fit": "pad", "mean": [0.1307], "std": [0.3081]},
            "dataset": "mnist"}
    save_file(shipped_state(), str(tmp_path / "forged.safetensors"), metadata={"convzoo": json.dumps(meta)})
    built = []
    real_create = registry.create_model

    def recording(*args, **kwargs):
        model = real_create(*args, **kwargs)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(registry, "create_model", recording)
    cli_error(capsys, "export", "--ckpt", tmp_path / "forged.safetensors", "--output", tmp_path / "m.onnx",
              fragments=("forged.safetensors", "do not fit model 'alexnet'", "features.0.weight"))
    assert built == ["meta"], built


def deflated_copy(source, target) -> None:
    """`source`'s zip entries written DEFLATE-compressed (torch.save stores them), streamed."""
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as dst:
        for entry in src.infolist():
            with src.open(entry) as reader, dst.open(entry.filename, "w", force_zip64=True) as writer:
                shutil.copyfileobj(reader, writer, 1 << 20)


@pytest.mark.real_data
def test_a_compressed_checkpoint_bomb_is_refused_before_loading(small_run, tmp_path, capsys):
    """A real checkpoint holding 64 MB of zeros, re-zipped with DEFLATE into a few hundred KB: refused
    from its zip directory (1000:1) before torch.load allocates it, for eval, --restore and --resume."""
    ckpt = load_checkpoint(small_run / "best.pt")
    ckpt["state_dict"]["padding"] = torch.zeros(16 << 20)
    save_checkpoint(tmp_path / "big.pt", ckpt)
    deflated_copy(tmp_path / "big.pt", tmp_path / "bomb.pt")
    (tmp_path / "big.pt").unlink()
    assert (tmp_path / "bomb.pt").stat().st_size < 2 << 20
    cli_error(capsys, "eval", "--ckpt", tmp_path / "bomb.pt", fragments=("bomb.pt", "declare 67,", "data/"))
    with pytest.raises(CheckpointError, match="bomb.pt: its zip entries declare"):
        load_weights(tmp_path / "bomb.pt")
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    shutil.copy(tmp_path / "bomb.pt", run / "last.pt")
    cli_error(capsys, "train", "--resume", "--output-dir", run, "--epochs", "2", *MNIST,
              fragments=("last.pt", "zip entries declare"))
    # a re-zipped checkpoint of ordinary (incompressible) weights still loads
    deflated_copy(small_run / "best.pt", tmp_path / "rezipped.pt")
    assert load_checkpoint(tmp_path / "rezipped.pt")["model"] == "lenet5"



@pytest.mark.real_data
def test_bytes_overwritten_inside_a_checkpoint_are_caught_by_its_checksums(small_run, tmp_path, capsys):
    """`printf junk | dd of=last.pt seek=N conv=notrunc`: torch.load does not check the zip's CRC-32s,
    so the run resumed and "diverged" (blaming --lr) and eval scored 0.086 in silence. Now one line naming
    the damaged entry, for eval, --resume and the API; an intact copy still loads."""
    with zipfile.ZipFile(small_run / "last.pt") as archive:
        biggest = max(archive.infolist(), key=lambda e: e.file_size)  # conv/fc weights: stored, not compressed
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    data = bytearray((run / "last.pt").read_bytes())
    name_len, extra_len = struct.unpack_from("<HH", data, biggest.header_offset + 26)  # the local header's own
    offset = biggest.header_offset + 30 + name_len + extra_len
    data[offset + biggest.file_size // 2: offset + biggest.file_size // 2 + 4] = b"junk"
    (run / "last.pt").write_bytes(bytes(data))
    fragment = f"the bytes of its entry '{biggest.filename}' do not match their checksum"
    cli_error(capsys, "eval", "--ckpt", run / "last.pt", *MNIST, fragments=("last.pt", fragment))
    cli_error(capsys, "train", "--resume", "--output-dir", run, "--epochs", "2", *MNIST, fragments=("last.pt", fragment))
    with pytest.raises(CheckpointError, match="do not match their checksum"):
        load_checkpoint(run / "last.pt")
    assert load_checkpoint(small_run / "last.pt")["model"] == "lenet5"


# --- 4. TorchScript ------------------------------------------------------------------------------

def test_a_torchscript_archive_is_named_as_one(tmp_path, capsys):
    model = create_model("lenet5", num_classes=10, in_channels=1)
    model.load_state_dict(shipped_state())
    torch.jit.save(torch.jit.script(model.eval()), tmp_path / "scripted.pt")
    cli_error(capsys, "eval", "--ckpt", tmp_path / "scripted.pt",
              fragments=("scripted.pt", "TorchScript archive", "does not run", "state_dict", "--restore", "ONNX"))
    with pytest.raises(CheckpointError, match="TorchScript"):
        restore_weights(create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "scripted.pt")


# --- 5. format version -----------------------------------------------------------------------------

@pytest.mark.real_data
@pytest.mark.parametrize("version,fragment", [
    (99, "checkpoint format version 99 was written by a newer convzoo (this one reads up to 1); upgrade"),
    ("abc", "checkpoint format version must be a positive integer, got 'abc'"),
    (0, "checkpoint format version must be a positive integer, got 0")])
def test_checkpoint_format_version_is_checked(small_run, tmp_path, capsys, version, fragment):
    state = torch.load(small_run / "best.pt", weights_only=True)
    state["version"] = version
    torch.save(state, tmp_path / "v.pt")
    cli_error(capsys, "eval", "--ckpt", tmp_path / "v.pt", fragments=("v.pt", fragment))
    run = tmp_path / "run"
    shutil.copytree(small_run, run)
    last = torch.load(run / "last.pt", weights_only=True)
    last["version"] = version
    torch.save(last, run / "last.pt")
    before = (run / "last.pt").read_bytes()
    cli_error(capsys, "train", "--resume", "--output-dir", run, "--epochs", "2", *MNIST, fragments=("last.pt", fragment))
    assert (run / "last.pt").read_bytes() == before


# --- 6. a PyTorch checkpoint named .safetensors -------------------------------------------------------

def test_a_torch_file_named_safetensors_is_named(tmp_path, capsys):
    torch.save(shipped_state(), tmp_path / "weights.safetensors")
    cli_error(capsys, "eval", "--ckpt", tmp_path / "weights.safetensors",
              fragments=("weights.safetensors", "not a safetensors file", "PyTorch checkpoint", "rename", ".pt"))
    with pytest.raises(CheckpointError, match="PyTorch checkpoint"):
        load_weights(tmp_path / "weights.safetensors")


# --- 7. Lightning / Hugging Face 'model.' prefix ----------------------------------------------------

def test_restore_strips_a_model_prefix_only_when_that_matches(tmp_path):
    from safetensors.torch import save_file

    state = shipped_state()
    prefixed = {f"model.{name}": tensor for name, tensor in state.items()}
    torch.save({"state_dict": prefixed, "epoch": 3}, tmp_path / "lightning.ckpt")
    save_file(prefixed, str(tmp_path / "hf.safetensors"))
    for path in (tmp_path / "lightning.ckpt", tmp_path / "hf.safetensors"):
        model = create_model("lenet5", num_classes=10, in_channels=1)
        report = restore_weights(model, path, exclude=["fc3.*"])
        assert sorted(report["loaded"]) == sorted(n for n in state if not n.startswith("fc3.")), path
        assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    other = {f"model.backbone.{name}": tensor for name, tensor in state.items()}  # stripping does not help: kept
    torch.save(other, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"no tensor matches .*'model\.backbone\.conv1\."):
        restore_weights(create_model("lenet5", num_classes=10, in_channels=1), tmp_path / "other.pt")


@pytest.mark.real_data
def test_optimizer_state_is_checked_against_the_run_optimizer(small_run):
    """Momentum buffers swapped between two parameters: each shape is some weight's (the check without
    the model lets it through), but not its own parameter's, which the run's optimizer knows."""
    from convzoo.config import build_config
    from convzoo.engine.trainer import build_optimizer

    state = torch.load(small_run / "last.pt", weights_only=True)
    buffers = state["optimizer"]["state"]
    buffers[0]["momentum_buffer"], buffers[2]["momentum_buffer"] = buffers[2]["momentum_buffer"], buffers[0]["momentum_buffer"]
    check_resume_state(state, "last.pt")
    model = create_model("lenet5", num_classes=10, in_channels=1)
    optimizer = build_optimizer(build_config(None, {"model": "lenet5"}), model)
    with pytest.raises(CheckpointError, match=r"last.pt: cannot resume: optimizer state 'momentum_buffer' of parameter 0 "
                                              r"has shape \(16, 6, 5, 5\).*\(the parameter is \(6, 1, 5, 5\)\)"):
        check_resume_state(state, "last.pt", optimizer)
