"""Fitting the ecosystem: serving without torch, the wheel's contents, TensorBoard and MLflow
tracking read back with their own readers, and the README's Python API example run as written."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import urllib.request
import zipfile
from pathlib import Path

import pytest

from conftest import MNIST_DIR, ROOT, SHARED_DATA, assert_user_error, cli_env, need, run_cli

# A stand-in package that notes who tried to import it, then fails as a missing package does.
BLOCKED = """import traceback
with open({log!r}, "a") as f:
    f.write("".join(traceback.format_stack()) + "\\n")
raise ImportError("{name} is not installed here (blocked by the test)")
"""


def blocker(folder: Path, *names: str) -> dict:
    """Environment in which importing `names` fails, as in an install without them: stand-in
    packages ahead of site-packages on PYTHONPATH. Attempts are logged in folder/attempts.log."""
    for name in names:
        (folder / name).mkdir(parents=True, exist_ok=True)
        (folder / name / "__init__.py").write_text(BLOCKED.format(name=name, log=str(folder / "attempts.log")))
    return {"PYTHONPATH": os.pathsep.join([str(folder), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}


def attempts(folder: Path) -> str:
    log = folder / "attempts.log"
    return log.read_text() if log.exists() else ""


def digit_png(path: Path) -> Path:
    """A '1' written as dark ink on light paper, as a user's photo would be."""
    from PIL import Image, ImageDraw

    image = Image.new("L", (280, 280), "white")
    ImageDraw.Draw(image).line([(140, 40), (140, 240)], fill="black", width=24)
    image.save(path)
    return path


@pytest.fixture(scope="module")
def pretrained_onnx(tmp_path_factory):
    import convzoo

    out = tmp_path_factory.mktemp("onnx") / "lenet5-mnist.onnx"
    convzoo.export("lenet5:mnist", out)
    return out


# ---------------------------------------------------------------- packaging


def test_serving_extra_has_no_torch():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    base = project["dependencies"] + project["optional-dependencies"]["serve"]
    assert not [d for d in base if re.match(r"torch", d)], base
    everything = [d for group in project["optional-dependencies"].values() for d in group] + base
    assert not [d for d in everything if "==" in d], "exact versions belong in constraints.txt only"


def test_predict_and_api_work_where_torch_cannot_be_imported(tmp_path, pretrained_onnx):
    env = blocker(tmp_path / "blocked", "torch", "torchao")
    probe = subprocess.run([sys.executable, "-c", "import torch"], env={**os.environ, **env}, capture_output=True,
                           text=True)
    assert probe.returncode != 0 and "blocked by the test" in probe.stderr
    (tmp_path / "blocked" / "attempts.log").unlink()
    png = digit_png(tmp_path / "one.png")

    proc = run_cli("predict", "--model", pretrained_onnx, png, "--json", env=env, check=0)
    assert json.loads(proc.stdout.splitlines()[0])["class"] == "1"

    code = ("import sys, numpy as np, convzoo\n"
            f"m = convzoo.load({str(pretrained_onnx)!r})\n"
            "a = np.zeros((28, 28), np.uint8); a[4:24, 13:16] = 255\n"
            f"r = convzoo.predict(m, [{str(png)!r}, a])\n"
            "print(m.classes[1], r[0]['class'], r[1]['class'], 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["1", "1", "1", "False"]
    assert not attempts(tmp_path / "blocked"), "something tried to import torch:\n" + attempts(tmp_path / "blocked")


def test_data_info_and_sample_work_where_torch_cannot_be_imported(tmp_path):
    """`data info` imported torch (2.5 s of its 4.6 s on MNIST) only to hold the decoded arrays."""
    env = blocker(tmp_path / "blocked", "torch", "torchao")
    info = run_cli("data", "info", "mnist", "--data-path", need(MNIST_DIR), "--json", env=env)
    assert json.loads(info.stdout)["counts"]["test"] == 10_000, info.stdout
    sample = run_cli("data", "sample", "mnist", "--data-path", MNIST_DIR, "--count", "2", "--output", tmp_path / "s",
                     env=env)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["test-00000-7.png", "test-00001-2.png"], sample
    assert not attempts(tmp_path / "blocked"), "something tried to import torch:\n" + attempts(tmp_path / "blocked")


def test_serve_works_where_torch_cannot_be_imported(tmp_path, pretrained_onnx):
    from test_deploy import serving  # --port 0 and the printed port: a port picked here could be taken

    env = blocker(tmp_path / "blocked", "torch", "torchao")
    with serving(pretrained_onnx, log=tmp_path / "serve.log", env=env) as (url, _):
        png = digit_png(tmp_path / "one.png").read_bytes()
        request = urllib.request.Request(f"{url}/v1/predict", data=png, headers={"Content-Type": "image/png"})
        with urllib.request.urlopen(request, timeout=30) as r:
            body = json.loads(r.read())
        assert body["class"] == "1", body
        with urllib.request.urlopen(f"{url}/v1/model", timeout=10) as r:
            assert json.loads(r.read())["name"] == "lenet5"
    assert not attempts(tmp_path / "blocked"), "something tried to import torch:\n" + attempts(tmp_path / "blocked")


def test_wheel_holds_presets_weights_and_page(tmp_path):
    """Built from a copy of the sources so the checkout gets no build/ or egg-info from the test."""
    src = tmp_path / "src"
    shutil.copytree(ROOT / "convzoo", src / "convzoo", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                           str(tmp_path / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next((tmp_path / "dist").glob("convzoo-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())

    presets = {p.name for p in (ROOT / "convzoo" / "configs").glob("*.yaml")}
    assert presets and {f"convzoo/configs/{p}" for p in presets} <= names
    index = json.loads((ROOT / "convzoo" / "pretrained" / "index.json").read_text())
    assert index and "convzoo/pretrained/index.json" in names
    assert {f"convzoo/pretrained/{entry['file']}" for entry in index.values()} <= names
    assert "convzoo/deploy/static/index.html" in names

    meta = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    torch_reqs = [r for r in requires if re.match(r"torch\b", r)]
    assert torch_reqs and all("extra ==" in r for r in torch_reqs), torch_reqs  # torch only with an extra
    assert {"serve", "train", "tracking", "all", "dev"} <= {line.split(":", 1)[1].strip() for line in
                                                            meta.splitlines() if line.startswith("Provides-Extra:")}


# ---------------------------------------------------------------- tracking

TRAIN = ["train", "--model", "lenet5", "--dataset", "mnist", "--train-limit", "512", "--batch-size", "64",
         "--threads", "1", "--print-freq", "0", "--quiet"]


@pytest.mark.real_data
def test_mlflow_store_refuses_a_folder_whose_path_reads_as_url_syntax(tmp_path, capsys, monkeypatch):
    """`--output-dir 'runs/x#y'`: the store's sqlite:/// URL ended at '#', so mlflow.db went to `runs/x`
    outside the run folder (with '?': a traceback). One line; the run folder it made is gone again."""
    from conftest import cli_error

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "runs").mkdir()
    cli_error(capsys, *TRAIN, "--data-path", need(MNIST_DIR), "--train-limit", "64", "--epochs", "1", "--logger",
              "mlflow", "--output-dir", tmp_path / "runs" / "x#y", fragments=("x#y", "may not hold '#'",
                                                                             "MLFLOW_TRACKING_URI"))
    assert list((tmp_path / "runs").iterdir()) == []

@pytest.mark.real_data
def test_tensorboard_and_mlflow_logs_read_back_with_their_own_readers(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME"):  # the default: a store in the run directory
        monkeypatch.delenv(name, raising=False)
    env = {}
    run_cli(*TRAIN, "--data-path", need(MNIST_DIR), "--epochs", "2", "--logger", "tensorboard,mlflow",
            "--output-dir", run, env=env, check=0)
    with open(run / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    test_acc = [float(r["test_acc"]) for r in rows]

    events = EventAccumulator(str(run))
    events.Reload()
    assert {"loss/train", "accuracy/train", "accuracy/test", "lr"} <= set(events.Tags()["scalars"])
    scalars = events.Scalars("accuracy/test")
    assert [s.step for s in scalars] == [1, 2]
    assert [s.value for s in scalars] == pytest.approx(test_acc, abs=1e-6)

    client = MlflowClient(f"sqlite:///{run / 'mlflow.db'}")
    (found,) = client.search_runs([client.get_experiment_by_name("convzoo").experiment_id])
    assert found.info.status == "FINISHED"
    assert found.data.params["model"] == "lenet5" and found.data.params["batch_size"] == "64"
    history = client.get_metric_history(found.info.run_id, "test_acc")
    assert [(m.step, m.value) for m in history] == [(1, pytest.approx(test_acc[0])), (2, pytest.approx(test_acc[1]))]
    artifacts = {a.path for a in client.list_artifacts(found.info.run_id)}
    assert {"curves.png", "best.pt", "metrics.csv", "config.yaml", "train.log"} <= artifacts

    # report keeps working on a tracked run; --resume continues the same MLflow run and event stream
    from convzoo.report.tables import build_report

    assert "lenet5" in build_report([run])[0]
    run_cli("train", "--resume", "--epochs", "3", "--output-dir", run, "--quiet", env=env, check=0)
    (again,) = client.search_runs([found.info.experiment_id])
    assert again.info.run_id == found.info.run_id and again.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(found.info.run_id, "test_acc")] == [1, 2, 3]
    # the run's params stay as it began (MLflow's cannot change); what the resume changed is a tag
    assert again.data.params["epochs"] == "2" and again.data.tags["resumed.epochs"] == "3"
    assert "resumed.model" not in again.data.tags
    events = EventAccumulator(str(run))
    events.Reload()
    assert [s.step for s in events.Scalars("accuracy/test")] == [1, 2, 3]
    configs = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("config/text_summary")}
    assert "epochs: 2" in configs[0] and "epochs: 3" in configs[3]  # the resume's settings at its first epoch


def test_missing_tracking_package_is_a_convzoo_error(tmp_path, monkeypatch):
    from convzoo.engine.loggers import open_loggers
    from convzoo.errors import ConvzooError

    for name, module in (("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")):
        monkeypatch.setitem(sys.modules, module, None)  # `import` of it now raises ImportError
        with pytest.raises(ConvzooError, match=rf"--logger needs the {name} package.*convzoo\[tracking\]"):
            open_loggers(name, tmp_path, {})
    assert_user_error(run_cli(*TRAIN, "--logger", "wandb", "--output-dir", tmp_path / "x"), "unknown logger 'wandb'")


# ---------------------------------------------------------------- Python API


def readme_block(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.real_data
def test_readme_python_api_example_runs(tmp_path):
    code = readme_block("## Python API")
    need(MNIST_DIR)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=cli_env({"CONVZOO_DATA": str(SHARED_DATA)}))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (tmp_path / "runs" / "api-demo" / "best.pt").is_file()
    assert (tmp_path / "runs" / "api-demo" / "model.onnx").is_file()
    # the example's last lines: each image's class; both drawings are a '1'
    assert proc.stdout.splitlines()[-2:] == ["photo: 1", "array: 1"], proc.stdout


def test_api_errors_are_one_line_convzoo_errors(tmp_path):
    import numpy as np

    import convzoo

    with pytest.raises(convzoo.ConvzooError, match="unknown train option 'epoch'"):
        convzoo.train(epoch=1)
    model = convzoo.load("lenet5:mnist")
    with pytest.raises(convzoo.ConvzooError, match="shape"):
        model.predict(np.zeros((2, 3, 28, 28)))
    with pytest.raises(convzoo.ConvzooError, match="0..1"):
        model.predict(np.full((28, 28), 7.0))
    # numpy's default int64 holding 0..255 reads as uint8 does (it was refused)
    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 13:16] = 255
    assert model.predict(digit.astype(np.int64)) == model.predict(digit)
    with pytest.raises(convzoo.ConvzooError, match="file not found"):
        convzoo.predict(model, tmp_path / "missing.png")


# ---------------------------------------------------------------- the Python API's arguments
# Each is checked as the CLI checks its flag (same range), before any file is read or model run:
# a ConfigError (or ImageError) naming the argument, never a bare TypeError/IndexError or a wrong result.

@pytest.fixture(scope="module")
def pretrained_model(pretrained_onnx):
    import convzoo

    return convzoo.load(pretrained_onnx)


def one_line_error(call, kind: str, match: str):
    from convzoo import errors
    from convzoo.data.images import ImageError

    with pytest.raises({"ImageError": ImageError}.get(kind) or getattr(errors, kind), match=match) as caught:
        call()
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("topk, image, kind, match", [
    *[(k, "digit", "ConfigError", rf"^topk must be an integer from 1 to 1000, got '{k}'$")
      for k in (0, -1, -9, 1001, None, "3", 2.5, True)],
    (3, "pil 0x0", "ImageError", r"^image\[0\]: image is 0x0: no pixels$"),
    (3, "pil 0x5", "ImageError", r"^image\[0\]: image is 0x5: no pixels$"),
    (3, "pil 7x0 RGB", "ImageError", r"^image\[0\]: image is 7x0: no pixels$"),
    (3, "complex", "ConvzooError", r"^array\[0\]: expected an array of numbers, got dtype complex128$"),
    (3, "int 300", "ConvzooError", r"^array\[0\]: integer arrays must hold values in 0\.\.255 \(got dtype int64\)$"),
    # The files' 40-megapixel limit, from the shape: a broadcast array grew to 9.8 GB before failing.
    (3, "broadcast", "ImageError", r"^array\[0\]: image is 100000x100000 = 10000 megapixels; the limit is 40$"),
    (3, "pil 7000x7000", "ImageError", r"^image\[0\]: image is 7000x7000 = 49 megapixels; the limit is 40$"),
    (3, "pil nan", "ImageError", r"^image\[0\]: image holds NaN or infinite pixel values$"),  # was "image: ..."
])
def test_api_predict_refuses_bad_arguments(pretrained_model, topk, image, kind, match):
    import warnings

    import numpy as np
    from PIL import Image

    import convzoo

    images = {"digit": np.zeros((28, 28), np.uint8), "pil 0x0": Image.new("L", (0, 0)),
              "pil 0x5": Image.new("L", (0, 5)), "pil 7x0 RGB": Image.new("RGB", (7, 0)),
              "complex": np.zeros((28, 28), complex), "int 300": np.full((28, 28), 300),
              "broadcast": np.broadcast_to(np.float32(0.5), (100_000, 100_000)),
              "pil 7000x7000": Image.new("L", (7000, 7000)),
              "pil nan": Image.fromarray(np.full((28, 28), np.nan, np.float32))}[image]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning is not an answer either
        one_line_error(lambda: convzoo.predict(pretrained_model, [images], topk=topk), kind, match)
        one_line_error(lambda: pretrained_model.predict([images], topk=topk), kind, match)
    # the checks let good values through: a numpy integer is an integer
    assert [len(r["topk"]) for r in pretrained_model.predict(np.zeros((28, 28), np.uint8), topk=np.int64(2))] == [2]


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": -1}, "batch_size must be an integer from 1 to 65536, got '-1'"),
    ({"batch_size": 0}, "batch_size must be an integer from 1 to 65536, got '0'"),
    ({"batch_size": "x"}, "batch_size must be an integer from 1 to 65536, got 'x'"),
    ({"batch_size": None}, "batch_size must be an integer from 1 to 65536, got 'None'"),
    ({"threads": -1}, "threads must be an integer from 0 to 1024, got '-1'"),
    ({"threads": "2"}, "threads must be an integer from 0 to 1024, got '2'"),
    ({"device": None}, "device must be a name such as 'auto', 'cpu' or 'cuda', got 'None'"),
    ({"dataset": 5}, "dataset must be a data set name such as 'mnist', got '5'"),
    ({"data_path": 5}, "data_path must be a path, got '5'"),
    ({"runtime": "x"}, "unknown runtime 'x'; choose from: auto, onnxruntime, openvino"),
    ({"runtime": None}, "unknown runtime None; choose from: auto, onnxruntime, openvino"),
    ({"test_limit": -1}, "test_limit must be an integer from 0 to 1000000000, got '-1'"),
    ({"test_limit": "500"}, "test_limit must be an integer from 0 to 1000000000, got '500'"),
    ({"tta": "flips"}, "unknown tta 'flips' (did you mean 'flip'?); choose from: flip, flip-shift, none, shift"),
    ({"tta": 1}, "unknown tta 1; choose from: flip, flip-shift, none, shift"),
])
def test_api_evaluate_refuses_bad_arguments(kwargs, match):
    import re

    import convzoo

    kwargs = {"data_path": MNIST_DIR, **kwargs}
    one_line_error(lambda: convzoo.evaluate("lenet5:mnist", **kwargs), "ConfigError", f"^{re.escape(match)}$")


@pytest.mark.real_data
def test_api_evaluate_takes_the_eval_commands_options(tmp_path):
    """convzoo.evaluate lacked `convzoo eval`'s --test-limit, --tta and the description of an ONNX file
    made elsewhere (--classes, --mean, --std, ...): each was a bare TypeError."""
    import onnx

    import convzoo
    from convzoo.engine.evaluate import evaluate_checkpoint
    from convzoo.models.pretrained import resolve

    data = {"data_path": need(MNIST_DIR), "test_limit": 300}
    short = convzoo.evaluate("lenet5:mnist", **data)
    assert int(short.confusion.sum()) == 300 and short.accuracy >= 0.97
    for tta in ("none", "flip"):  # the engine's own scoring with that TTA, which changes the answers
        engine = evaluate_checkpoint(resolve("lenet5:mnist"), data_path=MNIST_DIR, tta=tta, limit=300)
        assert (convzoo.evaluate("lenet5:mnist", tta=tta, **data).confusion == engine.confusion).all()
    assert (convzoo.evaluate("lenet5:mnist", tta="flip", **data).confusion != short.confusion).any()

    own = tmp_path / "own.onnx"
    convzoo.export("lenet5:mnist", own)
    plain = onnx.load(str(own))
    del plain.metadata_props[:]  # as another tool exports it: no description
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    described = convzoo.evaluate(tmp_path / "plain.onnx", dataset="mnist", classes=10, mean=0.1307, std=0.3081,
                                 preprocess="digit", **data)
    assert described.accuracy == convzoo.evaluate(own, **data).accuracy >= 0.97
    assert int(described.confusion.sum()) == 300
    # a Model loaded with that description is scored as loaded (evaluate re-read its file bare: "no metadata")
    loaded = convzoo.load(tmp_path / "plain.onnx", classes=10, mean=0.1307, std=0.3081, preprocess="digit")
    assert (convzoo.evaluate(loaded, dataset="mnist", **data).confusion == described.confusion).all()
    for model, kwargs, match in [
        (tmp_path / "plain.onnx", {"classes": 10, "mean": 0.1307, "std": 0.3081},
         "evaluate takes dataset='mnist'"),
        (tmp_path / "plain.onnx", {"dataset": "mnist", "classes": 10, "mean": "x", "std": 1}, "mean must be one number or a list of 1"),
        ("lenet5:mnist", {"classes": 10}, "a convzoo checkpoint describes itself"),
        (own, {"tta": "flip"}, "tta applies to a checkpoint"),
    ]:
        one_line_error(lambda: convzoo.evaluate(model, **kwargs, **data), "ConvzooError", re.escape(match))


@pytest.mark.parametrize("model, match", [
    (None, "got 'None'"), (5, "got '5'"), (b"x.pt", "got \"b'x.pt'\""),
    ({"best_acc": 0.9, "checkpoint": "runs/x/best.pt"}, "got train()'s result: pass its ['checkpoint']"),
])
def test_api_evaluate_and_export_take_no_object_as_a_file_name(tmp_path, monkeypatch, model, match):
    """str(model) made any object a file name: evaluate(None) scored a file named 'None' there, export(None)
    wrote None.onnx, and train()'s result dict was 'file name too long'."""
    import re

    import convzoo

    monkeypatch.chdir(tmp_path)
    (tmp_path / "None").write_bytes(b"not a checkpoint")  # what str(None) used to name
    one_line_error(lambda: convzoo.evaluate(model), "ConfigError",
                   f"^model must be a file path or a NAME:DATASET name, {re.escape(match)}$")
    one_line_error(lambda: convzoo.export(model), "ConfigError",
                   f"^checkpoint must be a file path or a NAME:DATASET name, {re.escape(match)}$")
    assert [p.name for p in tmp_path.iterdir()] == ["None"]


@pytest.mark.parametrize("kwargs, match", [
    ({"opset": 0}, "opset must be an integer from 18 to 23, got '0'"),
    ({"opset": 99}, "opset must be an integer from 18 to 23, got '99'"),
    ({"opset": "18"}, "opset must be an integer from 18 to 23, got '18'"),
    ({"format": None}, "unknown export format None; choose from: onnx, pt2"),
    ({"output": 5}, "output must be a path, got '5'"),
    ({"int8": "no"}, "int8 must be True or False, got 'no'"),
    ({"dynamic_batch": None}, "dynamic_batch must be True or False, got 'None'"),
    ({"data_path": 5}, "data_path must be a path, got '5'"),
    ({"data_path": "/nonexistent"}, "--data-path goes with --int8 (the images its calibration and checks read); an "
                                    "fp32 export reads no data"),
])
def test_api_export_refuses_bad_arguments(tmp_path, kwargs, match):
    import re

    import convzoo

    kwargs = {"output": tmp_path / "m.onnx", **kwargs}
    one_line_error(lambda: convzoo.export("lenet5:mnist", **kwargs), "ConfigError", f"^{re.escape(match)}$")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("threads", ["2", None, 1.5, 0, -1, 10**9, True])
def test_api_load_refuses_bad_threads(threads):
    import convzoo

    one_line_error(lambda: convzoo.load("lenet5:mnist", threads=threads), "ConfigError",
                   rf"^threads must be an integer from 1 to 1024, got '{threads}'$")


@pytest.mark.parametrize("config, match", [
    ({"nope": 1}, r"^unknown train option 'nope'"),
    ({"epoch": 1}, r"^unknown train option 'epoch' \(did you mean 'epochs'\?\)"),
    ({1: 2}, r"^unknown train option '1'"),
])
def test_api_train_refuses_unknown_keys_of_a_config_dict(config, match):
    import convzoo

    one_line_error(lambda: convzoo.train(config), "ConfigError", match)


@pytest.mark.parametrize("kwargs, match", [
    # exist_ok="no" is truthy: it trained over the run it was meant to keep
    ({"exist_ok": "no"}, "^exist_ok must be True or False, got 'no'$"),
    ({"resume": "yes"}, "^resume must be True or False, got 'yes'$"),
    ({"quiet": 1}, "^quiet must be True or False, got '1'$"),
    # '' meant the default folder (with exist_ok, another run's)
    ({"output_dir": ""}, "^--output-dir must not be empty$"),
    ({"data_path": " "}, "^--data-path must not be empty$"),
    ({"device": ""}, "^--device must not be empty$"),  # (a config file's `device: ""` was "--device : convzoo runs on")
    # None was the CLI's "not given": epochs=None trained the default 10 epochs, lr=None the default lr
    ({"epochs": None}, r"^--epochs: epochs must be a whole number, got 'None'$"),
    ({"learning_rate": None}, r"^--lr: lr must be a finite number, got 'None'$"),
    ({"model": None}, r"^--model: model must be text, got 'None'$"),
    # where None is a setting's default, over a recipe that sets it it kept the recipe's value
    ({"config": {"model": "lenet5", "classes": [1, 2]}, "classes": None},
     r"^train\(\): classes=None cannot clear the recipe's classes \[1, 2\]; leave the keyword out, or give a value$"),
    ({"config": ""}, r"^config must not be empty \(None trains with the defaults\)$"),  # trained with the defaults
    ({"epochs": 10**20}, r"^--epochs must be in 1\.\.1000000, got 100000000000000000000$"),  # a run that never ended
])
def test_api_train_refuses_odd_switches_and_empty_paths(tmp_path, monkeypatch, kwargs, match):
    import convzoo

    monkeypatch.chdir(tmp_path)
    one_line_error(lambda: convzoo.train(**{"epochs": 1, **kwargs}), "ConfigError", match)
    assert list(tmp_path.iterdir()) == []


def test_a_loaded_model_pickles_for_other_processes(pretrained_model, tmp_path):
    """pickle.dumps(convzoo.load(...)) failed on a local function (joblib, multiprocessing with spawn): a
    Model now pickles as where and how it was loaded, and its copy answers as it does."""
    import pickle

    import numpy as np

    import convzoo
    from test_foreign_onnx import foreign_graph, write

    digit = np.zeros((28, 28), np.uint8)
    digit[6:22, 13:16] = 255  # a stroke: a 1
    copy = pickle.loads(pickle.dumps(pretrained_model))
    assert copy.predict(digit) == pretrained_model.predict(digit) and copy.classes == pretrained_model.classes
    path = write(foreign_graph(["N", 3, 8, 8]), tmp_path / "plain.onnx")
    described = convzoo.load(path, classes=10, mean=0.5, std=0.25, threads=2)
    again = pickle.loads(pickle.dumps(described))  # loaded with its description, not bare ("no metadata")
    assert again.input == described.input and again._predictor.threads == 2


def test_api_load_refuses_odd_class_names_and_sides(tmp_path):
    """classes=[None] * 10 became 'None (0)'..'None (9)' (the repeats numbered) and input_size='8' was
    compared with the graph's 8 and called a mismatch."""
    import convzoo
    from test_foreign_onnx import foreign_graph, write

    path = write(foreign_graph(["N", 3, 8, 8]), tmp_path / "plain.onnx")
    one_line_error(lambda: convzoo.load(path, classes=[None] * 10, mean=0.5, std=0.25), "ConvzooError",
                   "each class name must be a string, got None$")
    one_line_error(lambda: convzoo.load(path, classes=10, mean=0.5, std=0.25, input_size="8"), "ConfigError",
                   "^input_size must be an integer from 1 to 512, got '8'$")
    assert convzoo.load(path, classes=10, mean=0.5, std=0.25, input_size=8).input["size"] == 8
    # numpy numbers as Python's, as train() and predict() take them ("must be a list of 3 numbers", a float
    # being taken); a wrong count says a number or one per channel goes there
    import numpy as np

    loaded = convzoo.load(path, classes=np.int64(10), mean=np.float32(0.5), std=np.array([0.25, 0.25, 0.25]),
                          input_size=np.int64(8))
    assert loaded.input["mean"] == [0.5] * 3 and loaded.input["std"] == [0.25] * 3 and len(loaded.classes) == 10
    one_line_error(lambda: convzoo.load(path, classes=10, mean=[0.5, 0.5], std=0.25, input_size=8), "ConfigError",
                   r"mean must be one number or a list of 3 \(one per input channel\), got '\[0\.5, 0\.5\]'$")


@pytest.mark.real_data
def test_api_refuses_closed_and_truncated_pil_images(pretrained_model, tmp_path):
    """Pillow reads a file's pixels lazily: an image closed by its `with` block or by close(), or a
    truncated JPEG, once reached convzoo's preprocessing as a bare AssertionError, ValueError or OSError."""
    from PIL import Image

    import convzoo
    from convzoo.data import formats

    digit = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[0, 0]  # a 7
    Image.fromarray(digit).save(tmp_path / "seven.png")
    Image.fromarray(digit).resize((280, 280)).save(tmp_path / "seven.jpg", quality=95)
    data = (tmp_path / "seven.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])

    with Image.open(tmp_path / "seven.png") as after_with:
        pass
    closed = Image.open(tmp_path / "seven.png")
    closed.close()
    closed_msg = r"^image\[0\]: the image is closed, or its file was closed before its pixels were read"
    for image, match in [(after_with, closed_msg), (closed, closed_msg),
                         (Image.open(tmp_path / "cut.jpg"), r"^image\[0\]: corrupt or truncated image \(image file "
                                                           r"is truncated")]:
        one_line_error(lambda: convzoo.predict(pretrained_model, image), "ImageError", match)
        one_line_error(lambda: pretrained_model.preprocess(image), "ImageError", match)
    # The CLI says the same of the file.
    assert "corrupt or truncated image" in assert_user_error(run_cli("predict", "--model", pretrained_model.path,
                                                                     tmp_path / "cut.jpg"), "cut.jpg")
    # An image opened lazily and still open is read, and predicted as its file is.
    with Image.open(tmp_path / "seven.jpg") as lazy:
        assert convzoo.predict(pretrained_model, lazy)[0]["class"] == "7"
