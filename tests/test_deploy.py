"""Export parity, prediction on users' image files, bad images, the HTTP API and the draw page."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from convzoo.data import formats
from convzoo.deploy.preprocess import from_dataset

from conftest import MNIST_DIR, ROOT, assert_user_error, cli_env, need, run_cli


def mnist_test(n: int):
    images = formats.read_idx_images(need(MNIST_DIR) / "t10k-images-idx3-ubyte.gz")[:n]
    labels = formats.read_idx_labels(MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 10)[:n]
    return images, labels


@pytest.mark.real_data
def test_onnx_parity_on_real_test_images(mnist_run, mnist_onnx):
    from convzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint

    model_proto = onnx.load(str(mnist_onnx))
    onnx.checker.check_model(model_proto, full_check=True)
    assert not list(mnist_onnx.parent.glob("*.data"))  # self-contained
    meta = json.loads({p.key: p.value for p in model_proto.metadata_props}["convzoo"])
    assert meta["class_names"] == [str(d) for d in range(10)] and meta["preprocess"] == "digit"
    images, _ = mnist_test(500)
    x = from_dataset(images, meta)
    model = model_from_checkpoint(load_checkpoint(mnist_run / "best.pt")).eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    got = ort.InferenceSession(str(mnist_onnx)).run(None, {"input": x})[0]
    assert np.abs(expected - got).max() <= 1e-4


@pytest.mark.real_data
def test_export_pt2_round_trip(mnist_run, tmp_path):
    out = tmp_path / "model.pt2"
    run_cli("export", "--ckpt", mnist_run / "best.pt", "--format", "pt2", "--output", out, check=0)
    program = torch.export.load(str(out))
    x = torch.randn(3, 1, 32, 32)
    from convzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(mnist_run / "best.pt")).eval()
    assert torch.allclose(program.module()(x), model(x), atol=1e-5)


def user_image(digit: np.ndarray, variant: int, rng) -> tuple[Image.Image, str]:
    """A real MNIST digit (28x28, white on black) turned into a file a user might have."""
    base = Image.fromarray(digit)
    size = int(rng.integers(40, 300))
    big = base.resize((size, size), Image.Resampling.BILINEAR)
    ink = np.asarray(big)
    if variant == 0:  # larger, as is
        return big, "png"
    if variant == 1:  # dark ink on light paper, JPEG, RGB
        return Image.fromarray(255 - ink).convert("RGB"), "jpg"
    if variant == 2:  # off-centre on a wider canvas
        canvas = np.zeros((size + 60, size * 2), np.uint8)
        top, left = int(rng.integers(0, 60)), int(rng.integers(0, size))
        canvas[top: top + size, left: left + size] = ink
        return Image.fromarray(canvas), "png"
    if variant == 3:  # black ink on a transparent background (RGBA)
        rgba = np.zeros((size, size, 4), np.uint8)
        rgba[..., 3] = ink
        return Image.fromarray(rgba), "png"
    if variant == 4:  # 16-bit greyscale, dark on light
        return Image.fromarray(((255 - ink).astype("<u2") * 257)), "png"
    if variant == 5:  # palette image, blue ink on white
        rgb = np.stack([255 - ink, 255 - ink, np.full_like(ink, 255)], -1)
        return Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=64), "png"
    if variant == 6:
        return Image.fromarray(255 - ink), "bmp"
    if variant == 7:
        return Image.fromarray(ink).convert("RGB"), "webp"
    return Image.fromarray(255 - ink), "tiff"


@pytest.mark.real_data
def test_predict_users_images(mnist_onnx, tmp_path):
    images, labels = mnist_test(200)
    rng = np.random.default_rng(0)
    paths = []
    for i, (digit, label) in enumerate(zip(images[:, 0], labels)):
        image, ext = user_image(digit, i % 9, rng)
        path = tmp_path / f"digit{i:03d}_{label}.{ext}"
        image.save(path)
        paths.append(path)
    proc = run_cli("predict", "--model", mnist_onnx, "--json", "--topk", "3", *paths, check=0)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 200 and len(results[0]["topk"]) == 3
    correct = [r["class"] == Path(r["file"]).stem.split("_")[1] for r in results]
    by_variant = {v: np.mean(correct[v::9]) for v in range(9)}
    assert np.mean(correct) >= 0.95, by_variant
    assert min(by_variant.values()) >= 0.85, by_variant


def bad_images(tmp_path) -> dict[str, tuple[Path, str]]:
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)).save(png, "PNG")
    files = {
        "empty.png": (b"", "empty file"),
        "notes.png": (b"this is text, not an image\n", "not an image"),
        "truncated.png": (png.getvalue()[: len(png.getvalue()) // 2], "corrupt or truncated"),
    }
    out = {}
    for name, (data, message) in files.items():
        (tmp_path / name).write_bytes(data)
        out[name] = (tmp_path / name, message)
    bomb = tmp_path / "bomb.png"
    Image.new("L", (8000, 6000)).save(bomb, optimize=False)  # 48 MP of zeros: a small file
    out["bomb.png"] = (bomb, "megapixel")
    return out


@pytest.mark.real_data
def test_predict_cli_bad_images(mnist_onnx, tmp_path):
    for name, (path, message) in bad_images(tmp_path).items():
        assert_user_error(run_cli("predict", "--model", mnist_onnx, path), name, message)
    assert_user_error(run_cli("predict", "--model", mnist_onnx, tmp_path / "missing.png"), "missing.png", "not found")
    assert_user_error(run_cli("predict", "--model", tmp_path / "nope.onnx", tmp_path / "x.png"), "nope.onnx")


# A device, a FIFO and an over-large (sparse) file, each read through load_image with memory capped at 1 GB:
# each must be one ImageError from its stat, not an endless read, a block, or 256 MB read in vain.
READ_ODD_FILES = """
import resource, sys
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
from convzoo.data.images import ImageError, load_image
for path in sys.argv[1:]:
    try:
        load_image(path)
    except ImageError as exc:
        print(exc)
"""


def test_predict_refuses_devices_fifos_and_huge_files(tmp_path):
    too_big = (256 << 20) + 1  # data/images.py's MAX_FILE_BYTES, plus one
    (tmp_path / "shots").mkdir()
    fifo = tmp_path / "shots" / "x.png"
    os.mkfifo(fifo)
    big = tmp_path / "big.png"
    with open(big, "wb") as f:
        f.truncate(too_big)  # sparse: no disk used
    cases = {"/dev/zero": "not a regular file", str(fifo): "not a regular file",
             str(big): f"{too_big:,} bytes, more than the 256 MB an image file may have"}
    proc = subprocess.run([sys.executable, "-c", READ_ODD_FILES, *cases], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)
    assert proc.stdout.splitlines() == [f"{path}: {message}" for path, message in cases.items()], proc.stderr
    for path, message in cases.items():
        assert_user_error(run_cli("predict", "--model", "lenet5:mnist", path, timeout=120), f"{path}: {message}")
    # A folder or pattern skips them as it skips other files that are not images.
    seven = tmp_path / "shots" / "seven.png"
    Image.fromarray(mnist_test(1)[0][0, 0]).save(seven)
    for where in (tmp_path / "shots", str(tmp_path / "shots" / "*.png")):
        proc = run_cli("predict", "--model", "lenet5:mnist", "--json", where, timeout=120, check=0)
        assert [json.loads(line)["file"] for line in proc.stdout.splitlines()] == [str(seven)]


@pytest.mark.real_data
def test_predict_from_test_grid(mnist_onnx, tmp_path):
    grid = tmp_path / "grid.png"
    proc = run_cli("predict", "--model", mnist_onnx, "--from-test", "25", "--grid", grid,
                   "--data-path", MNIST_DIR, check=0)
    assert proc.stdout.count("test[") == 25 and proc.stdout.startswith("test[0]: 7")
    with Image.open(grid) as im:
        assert im.format == "PNG" and im.size == (800, 900)


@contextlib.contextmanager
def serving(model, *flags, log: Path, env: dict | None = None):
    """The real `convzoo serve --port 0` in a subprocess (output to `log`, so it never blocks on a full
    pipe; `env` added to the environment): yields (url, process) once /healthz answers; the port is the
    one the server printed."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "convzoo", "serve", "--model", str(model), "--port", "0",
                                 *map(str, flags)], stdout=out, stderr=subprocess.STDOUT,
                                env=cli_env(env))
    import httpx

    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/", log.read_text())):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        url = f"http://127.0.0.1:{found[1]}"
        # The port is bound and listening before the line is printed: the first request just waits.
        assert httpx.get(url + "/healthz", timeout=60).json() == {"status": "ok"}, log.read_text()
        yield url, proc
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def server(mnist_onnx, tmp_path_factory):
    with serving(mnist_onnx, log=tmp_path_factory.mktemp("serve") / "serve.log") as (url, _):
        yield url


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.real_data
def test_api(server, mnist_onnx, tmp_path):
    import hashlib

    import httpx

    images, labels = mnist_test(8)
    info = httpx.get(server + "/v1/model").json()
    assert info["classes"] == [str(d) for d in range(10)]
    assert info["sha256"] == hashlib.sha256(mnist_onnx.read_bytes()).hexdigest()
    assert httpx.get(server + "/docs").status_code == 200 and "/v1/predict" in httpx.get(server + "/openapi.json").text

    def good():
        r = httpx.post(server + "/v1/predict", files={"file": ("d.png", png_bytes(255 - images[0, 0]), "image/png")})
        assert r.status_code == 200 and r.json()["class"] == str(labels[0]), r.text

    good()
    raw = httpx.post(server + "/v1/predict?topk=2", content=png_bytes(images[1, 0]), headers={"content-type": "image/png"})
    assert raw.json()["class"] == str(labels[1]) and len(raw.json()["topk"]) == 2
    batch = [base64.b64encode(png_bytes(im[0])).decode() for im in images]
    r = httpx.post(server + "/v1/predict", json={"images": batch, "topk": 2})
    assert [p["class"] for p in r.json()["predictions"]] == [str(v) for v in labels]

    status = {"empty.png": 422, "notes.png": 415, "truncated.png": 422, "bomb.png": 413}
    for name, (path, message) in bad_images(tmp_path).items():
        r = httpx.post(server + "/v1/predict", files={"file": (name, path.read_bytes(), "image/png")})
        assert r.status_code == status[name] and message in r.json()["error"], (name, r.status_code, r.text)
        good()
    cases = [
        (dict(content=os.urandom(6 * 1024 * 1024), headers={"content-type": "application/octet-stream"}), 413),
        (dict(files={"file": ("big.png", os.urandom(6 * 1024 * 1024), "image/png")}), 413),
        (dict(json={"images": ["@@not base64@@"]}), 422),
        (dict(json={"pictures": []}), 422),
        (dict(content=b"{broken", headers={"content-type": "application/json"}), 422),
        (dict(content=b"raw", headers={"content-type": "text/plain"}), 415),
        (dict(files={"file": ("../../etc/passwd", b"root:x:0:0", "image/png")}), 415),
    ]
    for kwargs, status in cases:
        r = httpx.post(server + "/v1/predict", **kwargs)
        assert r.status_code == status and "error" in r.json(), (kwargs.keys(), r.status_code, r.text)
        good()
    assert httpx.get(server + "/healthz").json() == {"status": "ok"}


def digit_runs(digit: np.ndarray, scale: float = 10):
    """Horizontal runs of ink in a 28x28 digit, as canvas coordinates: the strokes a hand would draw."""
    for y in range(28):
        x = 0
        while x < 28:
            if digit[y, x] > 100:
                start = x
                while x < 28 and digit[y, x] > 100:
                    x += 1
                yield ((start + 0.5) * scale, (y + 0.5) * scale), ((x - 0.5) * scale, (y + 0.5) * scale)
            x += 1


BROWSER_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


@pytest.mark.browser
@pytest.mark.real_data
def test_draw_digit_in_real_browser(server):
    from playwright.sync_api import sync_playwright

    images, labels = mnist_test(3)
    artifacts = ROOT / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_FLAGS)
        page = browser.new_page(viewport={"width": 900, "height": 600})
        failed = []  # requests the page makes that fail (a 404 for /favicon.ico was a console error)
        page.on("response", lambda r: failed.append(r.url) if r.status >= 400 else None)
        page.on("console", lambda m: failed.append(m.text) if m.type == "error" else None)
        page.goto(server + "/")
        predicted = []
        for digit, label in zip(images[:, 0], labels):
            page.click("#clear")
            box = page.locator("#pad").bounding_box()
            for (x0, y0), (x1, y1) in digit_runs(digit, box["width"] / 28):
                page.mouse.move(box["x"] + x0, box["y"] + y0)
                page.mouse.down()
                page.mouse.move(box["x"] + x1, box["y"] + y1, steps=2)
                page.mouse.up()
            page.wait_for_function("document.getElementById('prediction').dataset.class !== ''")
            page.wait_for_function("!pending && !dirty")  # the page's own flags: the last stroke's answer is shown
            predicted.append(page.locator("#prediction").get_attribute("data-class"))
            page.screenshot(path=str(artifacts / f"draw-digit-{label}.png"))
        browser.close()
    assert predicted == [str(v) for v in labels]
    assert not failed, failed


# Class names as a model file or an image folder's sub-folders may spell them: markup, entities, < and &.
HTML_NAMES = ["zero", "R&D", "a<b", "<b>3</b>", "<script>window.pwned = 4</script>", "&amp;", "6 > 5",
              "<img src=x onerror=\"document.title='XSS-'+document.domain; window.pwned = 7\">7",
              "<svg onload=\"window.pwned = 8\">", "<i>9</i>"]


@pytest.mark.browser
@pytest.mark.real_data
def test_class_names_show_as_text_in_real_browser(pretrained_onnx, tmp_path):
    """The page shows class names from the model as text: markup in them is displayed, never run (the
    top-k bars were built with innerHTML, and an <img onerror> class name retitled the page when a 7 was
    uploaded); 'R&D' and 'a<b' read as written."""
    from playwright.sync_api import sync_playwright

    model = onnx.load(str(pretrained_onnx))
    meta = json.loads(model.metadata_props[0].value)
    meta["class_names"] = HTML_NAMES
    model.metadata_props[0].value = json.dumps(meta)
    onnx.save(model, str(tmp_path / "html.onnx"))
    seven = digit_files(tmp_path / "digits", 1)[0]  # MNIST's first test digit, a 7
    with serving(tmp_path / "html.onnx", log=tmp_path / "serve.log") as (url, _), sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=BROWSER_FLAGS)
        page = browser.new_page()
        page.goto(url + "/")
        title = page.title()
        page.wait_for_function("document.getElementById('model').textContent.includes('10 classes')")
        page.set_input_files("#upload", str(seven))
        page.wait_for_function("document.querySelectorAll('#bars .bar').length === 10")
        page.wait_for_timeout(500)  # an <img src=x> would have failed to load and run its onerror by now
        shown = page.locator("#bars .bar > span:first-child").all_text_contents()
        prediction = page.locator("#prediction").text_content()
        state = page.evaluate("[document.title, window.pwned, document.querySelectorAll('#bars *').length]")
        browser.close()
    assert prediction == HTML_NAMES[7] and shown[0] == HTML_NAMES[7], (prediction, shown)
    assert sorted(shown) == sorted(HTML_NAMES), shown
    assert state == [title, None, 10 * 5], state  # no script ran; each bar is its own 5 elements, no markup


@pytest.mark.real_data
def test_predict_folders_and_patterns(mnist_onnx, tmp_path):
    images, labels = mnist_test(12)
    for i, (digit, label) in enumerate(zip(images[:, 0], labels)):
        folder = tmp_path / "shots" / ("a" if i < 6 else "b/c")
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(digit).save(folder / f"{i:02d}_{label}.{'png' if i % 2 else 'jpg'}")
    (tmp_path / "shots" / "notes.txt").write_text("not an image, and not picked up")
    (tmp_path / "shots" / ".hidden").mkdir()
    (tmp_path / "shots" / ".hidden" / "junk.png").write_bytes(b"not a png")
    proc = run_cli("predict", "--model", mnist_onnx, "--json", tmp_path / "shots", check=0)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [Path(r["file"]).name.split("_")[0] for r in results] == [f"{i:02d}" for i in range(12)]
    assert sum(r["class"] == Path(r["file"]).stem.split("_")[1] for r in results) >= 11
    proc = run_cli("predict", "--model", mnist_onnx, "--json", str(tmp_path / "shots" / "**" / "*.png"), check=0)
    assert len(proc.stdout.splitlines()) == 6
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("predict", "--model", mnist_onnx, tmp_path / "empty"), "empty", "no image files")
    assert_user_error(run_cli("predict", "--model", mnist_onnx, str(tmp_path / "*.gif")), "*.gif", "no files match")


# --- non-finite numbers ---------------------------------------------------------------------------

def strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as every JSON parser but Python's does."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


def shipped_weights_with(path: Path, name: str, value: float, *, fill: bool = False) -> Path:
    """The shipped LeNet-5 MNIST weights (.safetensors, or a convzoo .pt) with one value of tensor `name` (all of
    it with `fill`) set to `value`."""
    from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint("lenet5:mnist")
    tensor = ckpt["state_dict"][name]
    if fill:
        tensor.fill_(value)
    else:
        tensor.view(-1)[0] = value
    if path.suffix == ".pt":
        save_checkpoint(path, ckpt)
    else:
        from safetensors import safe_open
        from safetensors.torch import save_file

        from convzoo.models import pretrained

        with safe_open(str(pretrained.resolve("lenet5:mnist")), framework="pt") as f:
            save_file(ckpt["state_dict"], str(path), metadata=f.metadata())
    return path


@pytest.mark.real_data
def in_process(argv: list, capsys) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of `convzoo ARGV` run in this process: torch is already imported
    here, so each call costs its own work only, not an interpreter's start (~4 s)."""
    from convzoo.cli import main

    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_checkpoints_with_non_finite_weights_are_refused(tmp_path, capsys):
    """A NaN or inf weight is one line naming the file and the tensor, before anything is written (was: export
    printed "max_abs_diff": NaN, invalid JSON; quantize died on an AssertionError, leaving model-fp32.onnx)."""
    nan = shipped_weights_with(tmp_path / "nanw.safetensors", "fc1.weight", float("nan"))
    inf = shipped_weights_with(tmp_path / "infw.pt", "conv2.bias", float("inf"))
    for ckpt, tensor, kind in ((nan, "fc1.weight", "NaN"), (inf, "conv2.bias", "inf")):
        for args in (["export", "--ckpt", ckpt, "-o", tmp_path / "out.onnx"],
                     ["quantize", "--ckpt", ckpt, "--method", "ptq", "--output-dir", tmp_path / "quant",
                      "--data-path", MNIST_DIR],
                     ["eval", "--ckpt", ckpt, "--data-path", MNIST_DIR],
                     ["predict", "--model", ckpt, "--from-test", "1", "--data-path", MNIST_DIR]):
            code, _, err = in_process(args, capsys)
            assert code == 2 and err.count("\n") == 1 and err.startswith("convzoo: error:"), (args, err)
            assert all(part in err for part in (ckpt.name, repr(tensor), kind)), err
        assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "quant").exists()
    # Finite weights whose logits overflow in onnxruntime (conv1's bias at 3e38): no NaN in the JSON, and a
    # refused export writes nothing.
    big = shipped_weights_with(tmp_path / "big.safetensors", "conv1.bias", 3e38, fill=True)
    code, out, err = in_process(["export", "--ckpt", big, "-o", tmp_path / "big.onnx", "--json"], capsys)
    if code == 0:
        assert np.isfinite(strict_json(out)["max_abs_diff"])
    else:
        assert code == 2 and "big.safetensors" in err and "not finite" in err and err.count("\n") == 1, err
        assert not (tmp_path / "big.onnx").exists()


ZOO_META = {"model": "lenet5", "dataset": "mnist", "class_names": [str(d) for d in range(10)], "preprocess": "digit",
            "input": {"channels": 1, "size": 32, "fit": "pad", "mean": [0.1307], "std": [0.3081]},
            "format_version": 1}


def tiny_onnx(path: Path, nodes, initializers) -> Path:
    """A hand-built graph input (N, 1, 32, 32) -> logits (N, 10) with LeNet-5 MNIST's convzoo metadata."""
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 32, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
                              initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.metadata_props.add(key="convzoo", value=json.dumps(ZOO_META))
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def nan_models(folder: Path) -> dict[str, Path]:
    """'always': NaN weights, NaN logits for every input; 'ink': sqrt(-max pixel) added to the logits, finite
    for an all-zero or blank input, NaN once any model-input value is positive (every digit's ink)."""
    from onnx import helper, numpy_helper

    flat = helper.make_node("Flatten", ["input"], ["flat"], axis=1)
    weights = np.full((1024, 10), 0.01, np.float32)
    return {
        "always": tiny_onnx(folder / "nan_always.onnx", [flat, helper.make_node("MatMul", ["flat", "w"], ["logits"])],
                            [numpy_helper.from_array(np.full_like(weights, np.nan), "w")]),
        "ink": tiny_onnx(folder / "nan_on_ink.onnx", [
            flat, helper.make_node("MatMul", ["flat", "w"], ["mm"]),
            helper.make_node("ReduceMax", ["flat"], ["top"], axes=[1], keepdims=1),
            helper.make_node("Neg", ["top"], ["neg"]), helper.make_node("Sqrt", ["neg"], ["root"]),
            helper.make_node("Add", ["mm", "root"], ["logits"])], [numpy_helper.from_array(weights, "w")]),
    }


@pytest.mark.real_data
def test_predict_refuses_non_finite_outputs(tmp_path):
    """A model whose logits are NaN is refused at load; an image that makes a model's logits NaN is one line naming
    it; --json is strict JSON (was: `0 (nan)` and "probability": NaN)."""
    models = nan_models(tmp_path)
    digit, blank = tmp_path / "seven.png", tmp_path / "blank.png"
    Image.fromarray(mnist_test(1)[0][0, 0]).save(digit)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(blank)
    for flags in ([], ["--json"]):
        assert_user_error(run_cli("predict", "--model", models["always"], *flags, blank), "nan_always.onnx",
                          "non-finite")
        proc = run_cli("predict", "--model", models["ink"], *flags, blank, digit)
        assert_user_error(proc, "seven.png", "nan_on_ink.onnx", "non-finite")
        assert proc.stdout == ""  # every image is run before any result is printed
    proc = run_cli("predict", "--model", models["ink"], "--json", blank, check=0)
    assert np.isfinite(strict_json(proc.stdout)["probability"])


@pytest.mark.real_data
def test_onnxruntime_errors_are_one_line(tmp_path):
    """A graph that fails when run (a Reshape of 1024 values into rows of 7): stderr is one convzoo line, without
    onnxruntime's own coloured [E:onnxruntime:...] log line before it."""
    from onnx import helper, numpy_helper

    model = tiny_onnx(tmp_path / "reshape.onnx", [
        helper.make_node("Flatten", ["input"], ["flat"], axis=1),
        helper.make_node("Reshape", ["flat", "shape"], ["rows"]),
        helper.make_node("MatMul", ["rows", "w"], ["logits"])],
        [numpy_helper.from_array(np.array([-1, 7], np.int64), "shape"),
         numpy_helper.from_array(np.ones((7, 10), np.float32), "w")])
    digit = tmp_path / "seven.png"
    Image.fromarray(mnist_test(1)[0][0, 0]).save(digit)
    proc = run_cli("predict", "--model", model, digit)
    assert_user_error(proc, "reshape.onnx", "failed to run")
    assert proc.stderr.splitlines() == [line for line in proc.stderr.splitlines() if line.startswith("convzoo: error:")]
    assert "onnxruntime:" not in proc.stderr


# --- ONNX files from other exporters ----------------------------------------------------------------

@pytest.fixture(scope="module")
def pretrained_onnx(tmp_path_factory) -> Path:
    """The shipped LeNet-5 MNIST weights exported by `convzoo export` (dynamic batch)."""
    import convzoo

    return Path(convzoo.export("lenet5:mnist", tmp_path_factory.mktemp("pretrained") / "lenet5.onnx")["path"])


def digit_files(folder: Path, n: int) -> list[Path]:
    """The first n real MNIST test digits as PNG files."""
    folder.mkdir(exist_ok=True)
    paths = [folder / f"{i:02d}.png" for i in range(n)]
    for path, digit in zip(paths, mnist_test(n)[0][:, 0]):
        Image.fromarray(digit).save(path)
    return paths


@pytest.mark.real_data
def test_external_data_is_read_beside_the_model_from_any_folder(pretrained_onnx, tmp_path, monkeypatch):
    """Weights saved as external data (onnx.save(..., save_as_external_data=True)) are found beside the
    model wherever predict runs (they were looked for in the current folder: "not a loadable ONNX model
    (... should be stored in ext.onnx.data, but it is not regular file.)"); a location outside the
    model's folder (../, absolute, a symlink) is still refused."""
    import convzoo

    folder, elsewhere = tmp_path / "models", tmp_path / "elsewhere"
    folder.mkdir(), elsewhere.mkdir()
    model = onnx.load(str(pretrained_onnx))
    onnx.save(model, str(folder / "ext.onnx"), save_as_external_data=True, location="ext.onnx.data",
              size_threshold=1024)
    assert (folder / "ext.onnx.data").stat().st_size > 200_000  # the weights really are outside the .onnx file
    digits = digit_files(tmp_path / "digits", 3)
    expected = [r["class"] for r in convzoo.predict(pretrained_onnx, digits)]
    for model_arg, cwd in ((folder / "ext.onnx", elsewhere), ("models/ext.onnx", tmp_path), ("ext.onnx", folder)):
        proc = run_cli("predict", "--model", model_arg, "--json", *digits, cwd=cwd, check=0)
        assert [json.loads(line)["class"] for line in proc.stdout.splitlines()] == expected, (model_arg, cwd)
    monkeypatch.chdir(elsewhere)  # the API too
    assert [r["class"] for r in convzoo.predict(str(folder / "ext.onnx"), digits)] == expected

    (tmp_path / "secret.data").write_bytes((folder / "ext.onnx.data").read_bytes())
    (folder / "link.data").symlink_to(tmp_path / "secret.data")
    outside = "(external data): not a file in the model's folder"
    for name, location, fragment in (("up", "../secret.data", outside), ("abs", str(tmp_path / "secret.data"), outside),
                                     ("link", "link.data", "which is a symbolic link"),
                                     ("gone", "gone.data", "which is missing in the model's folder")):
        forged = onnx.load(str(folder / "ext.onnx"), load_external_data=False)
        for tensor in forged.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save(forged, str(folder / f"{name}.onnx"))
        assert_user_error(run_cli("predict", "--model", folder / f"{name}.onnx", digits[0], cwd=elsewhere),
                          f"{name}.onnx", f"is stored in {location!r}", fragment)


def fixed_batch_onnx(path: Path, batch: int) -> Path:
    """The shipped LeNet-5 MNIST weights through torch.onnx.export's defaults (TorchScript exporter): the
    input's batch dimension fixed at `batch` (input 'input.1'), then convzoo's metadata added."""
    import warnings

    from convzoo.deploy.export import set_metadata
    from convzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from convzoo.metadata import deployment_metadata

    ckpt = load_checkpoint("lenet5:mnist")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model_from_checkpoint(ckpt, path).eval(), torch.zeros(batch, 1, 32, 32), str(path),
                          dynamo=False)
    model = onnx.load(str(path))
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [batch, 1, 32, 32]
    set_metadata(model, deployment_metadata(ckpt))
    onnx.save(model, str(path))
    return path


@pytest.mark.real_data
def test_fixed_batch_onnx_predicts_any_number_of_images(pretrained_onnx, tmp_path):
    """A graph exported for exactly N images (torch.onnx.export's default) runs 7 images N at a time, the
    last group padded: the same results as the dynamic export, in predict, the API (both runtimes) and
    serve (7 images used to fail: "Got invalid dimensions for input: input.1", and serve did not start).
    A fixed batch larger than convzoo runs at once is one line saying how to re-export."""
    import httpx

    import convzoo
    from convzoo.deploy.runtime import openvino_installed

    digits = digit_files(tmp_path / "digits", 7)
    expected = convzoo.predict(pretrained_onnx, digits, topk=10)
    one, three = fixed_batch_onnx(tmp_path / "fixed1.onnx", 1), fixed_batch_onnx(tmp_path / "fixed3.onnx", 3)

    def same(results):
        assert [r["class"] for r in results] == [r["class"] for r in expected]
        got = np.array([[t["probability"] for t in r["topk"]] for r in results])
        assert np.allclose(got, [[t["probability"] for t in r["topk"]] for r in expected], atol=1e-5)

    proc = run_cli("predict", "--model", one, "--json", "--topk", "10", *digits, check=0)
    same([json.loads(line) for line in proc.stdout.splitlines()])
    for runtime in ("onnxruntime", "openvino") if openvino_installed() else ("onnxruntime",):
        for model in (one, three):
            # threads=2: OpenVINO's two streams must not split a fixed batch between them
            loaded = convzoo.load(model, runtime=runtime, threads=2)
            same(loaded.predict(digits, topk=10))
            same(loaded.predict(digits[:4], topk=10)[:4] + loaded.predict(digits[4:], topk=10))  # 1 + 3 rows
    with serving(one, log=tmp_path / "serve.log") as (url, _):
        r = httpx.post(url + "/v1/predict", json={"images": [base64.b64encode(p.read_bytes()).decode()
                                                             for p in digits], "topk": 10}, timeout=60)
        same(r.json()["predictions"])
    assert "Traceback" not in (tmp_path / "serve.log").read_text()

    big = fixed_batch_onnx(tmp_path / "fixed1000.onnx", 1000)
    assert_user_error(run_cli("predict", "--model", big, digits[0]), "fixed1000.onnx",
                      "batch size is fixed at 1000", "convzoo export")
    # convzoo's own fixed-batch export: batch 1, its parity check run one image at a time (was a traceback)
    exported = json.loads(run_cli("export", "--ckpt", "lenet5:mnist", "--no-dynamic-batch", "--json", "--output",
                                  tmp_path / "own-fixed.onnx", check=0).stdout)
    assert exported["max_abs_diff"] <= 1e-4
    assert onnx.load(str(tmp_path / "own-fixed.onnx")).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    same(convzoo.predict(tmp_path / "own-fixed.onnx", digits, topk=10))


# --- normalisation bounds --------------------------------------------------------------------------

def test_normalisation_the_schema_accepts_never_overflows():
    """Seeded: mean and std drawn from 1e-40..1e40 (either sign): the schema accepts exactly |mean| <= 1e4
    and 1e-6 <= std <= 1e6, and every accepted pair normalises 0..1 pixels to finite float32 with no
    numpy warning (mean 1e30 with std 1e-30 passed before, and overflowed with a RuntimeWarning)."""
    import random
    import warnings

    from convzoo.deploy.preprocess import normalise
    from convzoo.metadata import MetadataError, check_input_spec

    rng = random.Random(2024)
    pixels = np.linspace(0, 1, 64, dtype=np.float32).reshape(1, 1, 8, 8)
    values = [0.0, 1e4, -1e4, 1e-6, 1e6, 1.0001e4, 0.99e-6, 1.01e6, 1e30, 1e-30]
    values += [rng.choice((-1, 1)) * 10 ** rng.uniform(-40, 40) for _ in range(300)]
    accepted = 0
    for mean, std in zip(values, values[1:] + values[:1]):
        spec = {"channels": 1, "size": 8, "fit": "none", "mean": [mean], "std": [std]}
        ok = abs(mean) <= 1e4 and 1e-6 <= std <= 1e6
        try:
            checked = check_input_spec(spec, "m.onnx")
        except MetadataError as exc:
            assert not ok and "\n" not in str(exc) and str(exc).startswith("m.onnx: input "), (mean, std, exc)
            continue
        assert ok, (mean, std)
        accepted += 1
        with warnings.catch_warnings(), np.errstate(over="raise", invalid="raise", divide="raise"):
            warnings.simplefilter("error")
            assert np.isfinite(normalise(pixels, checked)).all(), (mean, std)
    assert accepted >= 10


@pytest.mark.real_data
def test_extreme_normalisation_is_refused_at_load(pretrained_onnx, tmp_path):
    """A model file claiming mean [1e30] and std [1e-30] (ONNX or checkpoint) is one line at load naming the
    field, and nothing else on stderr (was numpy's two-line overflow RuntimeWarning, then a
    non-finite-output error); a 0..255-style mean 127.5, std 64 still predicts."""
    from convzoo.engine.checkpoint import load_checkpoint, save_checkpoint

    digit = digit_files(tmp_path / "digits", 1)[0]

    def forged(name: str, mean: float, std: float) -> Path:
        if name.endswith(".pt"):
            ckpt = load_checkpoint("lenet5:mnist")
            ckpt["input"] = {**ckpt["input"], "mean": [mean], "std": [std]}
            save_checkpoint(tmp_path / name, ckpt)
        else:
            model = onnx.load(str(pretrained_onnx))
            meta = json.loads(model.metadata_props[0].value)
            meta["input"].update(mean=[mean], std=[std])
            model.metadata_props[0].value = json.dumps(meta)
            onnx.save(model, str(tmp_path / name))
        return tmp_path / name

    for mean, std, suffix, field in ((1e30, 1e-30, ".onnx", "input mean"), (0.1, 1e-30, ".onnx", "input std"),
                                     (0.1, 1e7, ".onnx", "input std"), (1e30, 1e-30, ".pt", "input mean")):
        model = forged(f"m{mean:g}-{std:g}{suffix}", mean, std)
        proc = run_cli("predict", "--model", model, digit, env={"PYTHONWARNINGS": "default"})
        assert_user_error(proc, model.name, field, "numbers in")
        assert proc.stderr.count("\n") == 1, proc.stderr
    run_cli("predict", "--model", forged("wide.onnx", 127.5, 64.0), digit, check=0)
