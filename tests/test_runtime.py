"""--runtime: OpenVINO predicts as onnxruntime does on real MNIST test images (fp32 and int8 files),
through the API, `predict` and `serve`; a missing OpenVINO is one line; a bad --runtime is refused
by the parser."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import convzoo
from convzoo.cli import main
from convzoo.deploy.predict import Predictor
from convzoo.deploy.preprocess import from_dataset
from convzoo.deploy.runtime import openvino_installed
from convzoo.errors import ConfigError

from conftest import MNIST_DIR, assert_user_error, need, run_cli
from test_deploy import mnist_test, png_bytes, serving
from test_ecosystem import blocker

needs_openvino = pytest.mark.skipif(not openvino_installed(), reason="OpenVINO is not installed: "
                                    "pip install 'convzoo[openvino]' (the [dev] extra has it)")


@pytest.fixture(scope="module")
def lenet_fp32(tmp_path_factory) -> Path:
    """The shipped LeNet-5 MNIST weights as an fp32 ONNX file."""
    return Path(convzoo.export("lenet5:mnist", tmp_path_factory.mktemp("fp32") / "fp32.onnx")["path"])


@pytest.fixture(scope="module")
def lenet_files(lenet_fp32, tmp_path_factory) -> dict:
    """... and as int8 files by PTQ on the real MNIST training images: convzoo's own ('int8', 7-bit
    weights) and one with full 8-bit weights ('int8-8bit', convzoo's before). onnxruntime's u8 x s8
    kernels on CPUs without VNNI (this project's AVX2 machines) add pairs of products in int16, which
    saturates with 8-bit weights (onnxruntime's documented reduce_range caveat); 7-bit weights never
    saturate, so every runtime computes convzoo's file alike."""
    from convzoo.data.tensors import InputSpec, load_model_data
    from convzoo.engine.checkpoint import load_checkpoint
    from convzoo.metadata import deployment_metadata
    from convzoo.models.pretrained import resolve
    from convzoo.quant.ptq import calibration_batches, quantize_onnx

    folder = tmp_path_factory.mktemp("int8")
    convzoo.export("lenet5:mnist", folder / "int8.onnx", int8=True, data_path=need(MNIST_DIR))
    ckpt = load_checkpoint(resolve("lenet5:mnist"))
    train, _ = load_model_data(ckpt, data_path=MNIST_DIR)
    quantize_onnx(lenet_fp32, folder / "int8-8bit.onnx", calibration_batches(train, InputSpec.from_dict(ckpt["input"]), 32),
                  deployment_metadata(ckpt), reduce_range=False)
    return {"fp32": lenet_fp32, "int8": folder / "int8.onnx", "int8-8bit": folder / "int8-8bit.onnx"}


def classes(predictor: Predictor, images: np.ndarray) -> np.ndarray:
    return np.array([r["index"] for r in predictor.predict_arrays(from_dataset(images, predictor.meta))])


@needs_openvino
@pytest.mark.real_data
@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_openvino_agrees_with_onnxruntime_on_1000_real_images(lenet_files, kind):
    images, labels = mnist_test(1000)
    ort = Predictor(lenet_files[kind], threads=2, runtime="onnxruntime")
    ov = Predictor(lenet_files[kind], threads=2, runtime="openvino")
    assert (ort.runtime, ov.runtime) == ("onnxruntime", "openvino")
    expected, got = classes(ort, images), classes(ov, images)
    assert (expected == got).mean() >= 0.995, (expected != got).sum()
    assert (got == labels).mean() >= 0.97
    # auto: OpenVINO runs int8 graphs (faster there), onnxruntime fp32 ones
    assert Predictor(lenet_files[kind], runtime="auto").runtime == ("openvino" if "int8" in kind else "onnxruntime")


@needs_openvino
@pytest.mark.real_data
def test_openvino_computes_fp32_files_in_fp32(lenet_files):
    """On a CPU with AVX512-BF16 or AMX, OpenVINO's default ran fp32 files in bf16: logits up to 0.008
    away from onnxruntime's on a Xeon with AVX512-BF16 (the probabilities of a fixed-batch test moved by
    2e-4). On other CPUs both defaults are fp32, so this holds either way there."""
    from convzoo.deploy.runtime import open_runner

    images, _ = mnist_test(256)
    x = from_dataset(images, Predictor(lenet_files["fp32"]).meta).astype(np.float32)
    ort = open_runner(lenet_files["fp32"], 2, "onnxruntime")
    ov = open_runner(lenet_files["fp32"], 2, "openvino")
    assert np.abs(ov(x) - ort(x)).max() <= 1e-4


@needs_openvino
@pytest.mark.real_data
def test_openvino_int8_is_at_least_as_close_to_fp32_as_onnxruntime(lenet_files):
    """An 8-bit file, where onnxruntime may saturate (see lenet_files): OpenVINO's predictions agree
    with fp32's at least as often as onnxruntime's, and with onnxruntime's on >= 99%."""
    images, _ = mnist_test(1000)
    fp32 = classes(Predictor(lenet_files["fp32"], runtime="onnxruntime"), images)
    ort = classes(Predictor(lenet_files["int8-8bit"], threads=2, runtime="onnxruntime"), images)
    ov = classes(Predictor(lenet_files["int8-8bit"], threads=2, runtime="openvino"), images)
    assert (ov == fp32).mean() >= (ort == fp32).mean() - 0.002  # a CPU with VNNI does not saturate: a tie
    assert (ov == ort).mean() >= 0.99


@needs_openvino
@pytest.mark.real_data
def test_openvino_runner_is_safe_for_concurrent_callers(lenet_files):
    """The server calls one Predictor from several threads: each call gets its own rows' logits."""
    predictor = Predictor(lenet_files["int8"], threads=2, runtime="openvino")
    x = from_dataset(mnist_test(300)[0], predictor.meta)
    chunks = [x[:1], x[1:4], x[4:260], x[260:261], x[261:]]
    expected = [predictor.run(c) for c in chunks]
    got, errors = {}, []

    def call(i):
        try:
            for _ in range(20):
                got.setdefault(i, []).append(predictor.run(chunks[i]))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(chunks))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i, outputs in got.items():
        for out in outputs:
            np.testing.assert_allclose(out, expected[i], rtol=1e-5, atol=1e-5)


def test_unknown_runtime_is_refused(lenet_fp32, capsys):
    with pytest.raises(ConfigError, match="unknown runtime 'tensorrt'"):
        Predictor(lenet_fp32, runtime="tensorrt")
    for command in (["predict", "--model", str(lenet_fp32), "x.png"], ["serve", "--model", str(lenet_fp32)],
                    ["eval", "--model", str(lenet_fp32)], ["quantize", "--ckpt", "x.pt"]):
        with pytest.raises(SystemExit) as exit_:  # the parser's one line, before any file is read
            main([*command, "--runtime", "tensorrt"])
        error = capsys.readouterr().err
        assert exit_.value.code == 2 and error.count("\n") == 1 and "--runtime: invalid choice" in error, error


@pytest.mark.real_data
def test_missing_openvino_is_one_line(lenet_files, tmp_path):
    env = blocker(tmp_path / "blocked", "openvino")
    png = tmp_path / "digit.png"
    images, labels = mnist_test(1)
    png.write_bytes(png_bytes(images[0, 0]))
    for command in (["predict", "--model", lenet_files["int8"], png], ["serve", "--model", lenet_files["int8"]],
                    ["eval", "--model", lenet_files["int8"], "--data-path", MNIST_DIR]):
        assert_user_error(run_cli(*command, "--runtime", "openvino", env=env), "pip install 'convzoo[openvino]'")
    # auto falls back to onnxruntime
    proc = run_cli("predict", "--model", lenet_files["int8"], png, "--json", env=env, check=0)
    assert json.loads(proc.stdout)["class"] == str(labels[0])


@needs_openvino
@pytest.mark.real_data
def test_predict_runtime_flag(lenet_files):
    outputs = {}
    for runtime in ("onnxruntime", "openvino"):
        proc = run_cli("predict", "--model", lenet_files["int8"], "--from-test", 200, "--json", "--runtime", runtime,
                       "--grid", lenet_files["int8"].parent / f"grid-{runtime}.png", "--data-path", MNIST_DIR, check=0)
        outputs[runtime] = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    predicted = {k: [json.loads(line)["class"] for line in v] for k, v in outputs.items()}
    assert len(predicted["openvino"]) == 200
    agree = np.mean([a == b for a, b in zip(predicted["onnxruntime"], predicted["openvino"])])
    assert agree >= 0.995


@needs_openvino
@pytest.mark.real_data
def test_predict_auto_runs_int8_files_in_onnxruntime(lenet_files, tmp_path):
    """`predict` is one short process: `auto` never imports OpenVINO there (its import and compile cost
    more than its int8 kernels save), while `--runtime openvino` does; -X importtime lists every import."""
    png = tmp_path / "digit.png"
    images, labels = mnist_test(1)
    png.write_bytes(png_bytes(images[0, 0]))
    imported = {}
    for runtime in ("auto", "openvino"):
        proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "convzoo", "predict", "--model",
                               lenet_files["int8"], png, "--json", "--runtime", runtime], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert json.loads(proc.stdout)["class"] == str(labels[0])
        imported[runtime] = {line.rsplit("|", 1)[-1].strip() for line in proc.stderr.splitlines()
                             if line.startswith("import time:")}
    assert "openvino" in imported["openvino"] and "openvino" not in imported["auto"]
    assert "onnxruntime" in imported["auto"]


@needs_openvino
@pytest.mark.real_data
def test_serve_runtime_flag(lenet_files, tmp_path):
    import httpx

    images, labels = mnist_test(16)
    batch = [base64.b64encode(png_bytes(im[0])).decode() for im in images]
    answers = {}
    for runtime in ("onnxruntime", "openvino"):
        with serving(lenet_files["int8"], "--runtime", runtime, log=tmp_path / f"{runtime}.log") as (url, _):
            assert httpx.get(url + "/v1/model").json()["runtime"] == runtime
            one = httpx.post(url + "/v1/predict", content=png_bytes(images[0, 0]), headers={"content-type": "image/png"})
            assert one.json()["class"] == str(labels[0]), one.text
            answers[runtime] = [p["class"] for p in httpx.post(url + "/v1/predict", json={"images": batch}).json()
                                ["predictions"]]
    assert answers["openvino"] == answers["onnxruntime"]
    assert np.mean([a == str(b) for a, b in zip(answers["openvino"], labels)]) >= 0.9


@pytest.mark.real_data
def test_int8_file_is_at_most_30_percent_of_fp32(lenet_files):
    """The int8 goal's size bound; neither file carries the exporter's per-node notes (local paths)."""
    import onnx

    assert lenet_files["int8"].stat().st_size <= 0.30 * lenet_files["fp32"].stat().st_size
    for path in (lenet_files["fp32"], lenet_files["int8"]):
        assert not any(node.metadata_props for node in onnx.load(str(path)).graph.node)
