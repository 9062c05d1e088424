"""ONNX classifiers made elsewhere (no convzoo metadata): described with --classes, --mean, --std,
--input-size, --crop and --preprocess (or by an Ultralytics export's own metadata), they predict exactly
as convzoo's own export of the same network does; channels-last (Keras) graphs run; every bad
description or hostile metadata is one line, exit 2, before a runtime builds anything."""

from __future__ import annotations

import json
import random
import re

import httpx
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import convzoo
from convzoo.errors import ConvzooError

from conftest import MNIST_DIR, assert_user_error, need, run_cli
from test_deploy import mnist_test, png_bytes, serving

pytestmark = pytest.mark.real_data

MNIST = {"mean": 0.1307, "std": 0.3081}  # what the shipped LeNet-5 was normalised with
NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


class Wrapped(torch.nn.Module):
    """The shipped LeNet-5 as other tools export it: channels-last input, or normalisation and a softmax inside."""

    def __init__(self, net, *, nhwc=False, inside=False):
        super().__init__()
        self.net, self.nhwc, self.inside = net, nhwc, inside

    def forward(self, x):
        x = x.permute(0, 3, 1, 2) if self.nhwc else x
        x = (x - MNIST["mean"]) / MNIST["std"] if self.inside else x
        out = self.net(x)
        return out.softmax(1) if self.inside else out


def write(onnx_model, path, props=None):
    del onnx_model.metadata_props[:]
    for key, value in (props or {}).items():
        onnx_model.metadata_props.add(key=key, value=value)
    onnx.save(onnx_model, str(path))
    return path


ULTRALYTICS = {"author": "Ultralytics", "description": "Ultralytics YOLO11n-cls model", "task": "classify",
               "batch": "1", "imgsz": "[32, 32]", "names": repr(dict(enumerate(NAMES)))}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The shipped LeNet-5 (MNIST) as convzoo exports it, and as three other tools would: no metadata;
    channels-last; normalisation and softmax inside with Ultralytics' metadata (batch fixed at 1)."""
    from convzoo.deploy.export import to_onnx
    from convzoo.engine.checkpoint import load_checkpoint, model_from_checkpoint
    from convzoo.models.pretrained import resolve

    out = tmp_path_factory.mktemp("foreign")
    own = out / "own.onnx"
    convzoo.export("lenet5:mnist", own)
    net = model_from_checkpoint(load_checkpoint(resolve("lenet5:mnist"))).eval()
    return {"own": own, "plain": write(onnx.load(str(own)), out / "plain.onnx"),
            "nhwc": write(to_onnx(Wrapped(net, nhwc=True), torch.zeros(2, 32, 32, 1)), out / "nhwc.onnx"),
            "ultralytics": write(to_onnx(Wrapped(net, inside=True), torch.zeros(1, 1, 32, 32), dynamic_batch=False),
                                 out / "ultralytics.onnx", ULTRALYTICS)}


@pytest.fixture(scope="module")
def digits():
    images, labels = mnist_test(200)
    return [im[0] for im in images], labels


def probabilities(model, images) -> np.ndarray:
    return np.array([[t["probability"] for t in sorted(r["topk"], key=lambda t: t["index"])]
                     for r in convzoo.predict(model, images, topk=10)])


def test_a_described_plain_file_predicts_as_convzoos_own_export(files, digits):
    images, labels = digits
    own = probabilities(convzoo.load(files["own"]), images)
    assert (own.argmax(1) == labels).mean() >= 0.98  # the shipped model, on real test digits
    for name in ("plain", "nhwc"):  # the same network, described by hand; channels-last transposed for it
        model = convzoo.load(files[name], classes=NAMES, preprocess="digit", **MNIST)
        assert model.classes == NAMES
        assert np.abs(probabilities(model, images) - own).max() < 1e-5, name


def test_the_cli_flags_describe_the_file(files, digits, tmp_path):
    images, labels = digits
    for i in range(3):
        Image.fromarray(images[i]).save(tmp_path / f"d{i}.png")
    names = tmp_path / "names.txt"
    names.write_text("\n".join(NAMES) + "\n")
    proc = run_cli("predict", "--model", files["plain"], tmp_path, "--classes", names, "--mean", "0.1307",
                   "--std", "0.3081", "--preprocess", "digit", "--json", check=0)
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["class"] for r in results] == [NAMES[k] for k in labels[:3]]


def test_an_ultralytics_export_needs_no_flags(files, digits):
    """Its names and image size come from its metadata, its preprocessing is Ultralytics' (0..1 pixels, the
    centre square resized), and its softmax output is used as probabilities, not softmaxed again."""
    images, labels = digits
    model = convzoo.load(files["ultralytics"])
    assert model.classes == NAMES and model._predictor.batch_rows == 1  # its batch is fixed at 1
    got = probabilities(model, images)
    plain = convzoo.load(files["plain"], classes=NAMES, mean=MNIST["mean"], std=MNIST["std"])  # same reading
    assert np.abs(got - probabilities(plain, images)).max() < 1e-5
    assert (got.argmax(1) == labels).mean() >= 0.9  # resized, not centred by mass as MNIST was: a little worse


def test_repeated_names_are_numbered_not_refused(files, tmp_path):
    """ImageNet's own label files (torchvision's, Keras', Hugging Face's) name classes 134 and 517 'crane'."""
    names = tmp_path / "names.txt"
    names.write_text("\n".join(["crane", *NAMES[1:5], "crane", *NAMES[6:]]) + "\n")
    model = convzoo.load(files["plain"], classes=str(names), **MNIST)
    assert model.classes[0] == "crane (0)" and model.classes[5] == "crane (5)" and model.classes[1] == "one"
    ultra = write(onnx.load(str(files["ultralytics"])), tmp_path / "u.onnx",
                  {**ULTRALYTICS, "names": repr({i: "x" for i in range(10)})})
    assert convzoo.load(ultra).classes == [f"x ({i})" for i in range(10)]
    clash = ["a", "b", "a", "a (2)", *map(str, range(6))]  # a numbered name that is already taken
    assert convzoo.load(files["plain"], classes=clash, **MNIST).classes[:4] == ["a (0)", "b", "a (2)", "a (2) (3)"]


def test_crop_keeps_the_centre_square(files, digits):
    """--crop F: the centre square of side F x the shorter side, as timm's crop_pct; 1 for a wide image
    keeps its centre square (no squashing)."""
    digit = digits[0][0]
    wide = np.zeros((56, 168), np.uint8)
    wide[:, 56:112] = np.asarray(Image.fromarray(digit).resize((56, 56)))
    wide[:, :20] = 255  # clutter outside the centre square
    framed = np.full((112, 112), 255, np.uint8)
    framed[28:84, 28:84] = wide[:, 56:112]
    centre = Image.fromarray(wide[:, 56:112])

    def model(crop):
        return convzoo.load(files["plain"], classes=NAMES, crop=crop, **MNIST)

    expected = probabilities(model(1.0), [centre])
    assert np.abs(probabilities(model(1.0), [wide]) - expected).max() < 1e-6
    assert np.abs(probabilities(model(0.5), [framed]) - expected).max() < 1e-6
    assert np.abs(probabilities(model(1.0), [framed]) - expected).max() > 1e-3  # the frame is seen without it


@pytest.mark.parametrize("form", ["txt", "json-list", "json-map", "hf-config", "imagenet-index", "commas", "count"])
def test_class_names_come_in_every_common_form(files, tmp_path, form):
    path = tmp_path / ("names.txt" if form == "txt" else "names.json")
    content = {"txt": "\ufeff" + "\r\n".join(NAMES) + "\r\n\r\n", "json-list": json.dumps(NAMES),
               "json-map": json.dumps({str(i): n for i, n in enumerate(NAMES)}),
               "hf-config": json.dumps({"architectures": ["X"], "id2label": {str(i): n for i, n in enumerate(NAMES)}}),
               "imagenet-index": json.dumps({str(i): [f"n{i:08d}", n] for i, n in enumerate(NAMES)})}
    if form in content:
        path.write_text(content[form], encoding="utf-8")
    given = {"commas": ",".join(NAMES), "count": "10"}.get(form, str(path))
    model = convzoo.load(files["plain"], classes=given, **MNIST)
    assert model.classes == ([str(i) for i in range(10)] if form == "count" else NAMES)


def test_a_long_comma_list_is_no_file_name(tmp_path):
    """Longer than a file name may be (255 bytes): pathlib's is_file raised ENAMETOOLONG, a traceback."""
    names = [f"class number {i}" for i in range(100)]
    path = write(foreign_graph(["N", 1, 16, 16], out_classes=100), tmp_path / "g.onnx")
    assert convzoo.load(path, classes=",".join(names), mean=0, std=1).classes == names
    assert "neither a count" in assert_user_error(run_cli("predict", "--model", path, "--classes", "\u00b2", "--mean",
                                                          "0", "--std", "1", "--from-test", "1"))


def test_eval_scores_a_described_file_on_a_named_data_set(files):
    describe = ["--classes", "10", "--mean", "0.1307", "--std", "0.3081", "--preprocess", "digit"]
    data = {"CONVZOO_DATA": str(need(MNIST_DIR).parent)}
    scores = [json.loads(run_cli("eval", "--model", model, *flags, "--test-limit", 500, "--json", env=data,
                                 check=0).stdout)
              ["accuracy"] for model, flags in ((files["own"], []), (files["plain"], [*describe, "--dataset", "mnist"]))]
    assert scores[0] == scores[1] >= 0.98
    assert "eval takes --dataset NAME" in assert_user_error(run_cli("eval", "--model", files["plain"], *describe))
    assert "a checkpoint describes itself" in assert_user_error(run_cli("eval", "--ckpt", "lenet5:mnist", *describe))


def test_a_served_foreign_file_answers_with_its_class_names(files, digits, tmp_path):
    """Two workers: the description travels to each worker process."""
    images, labels = digits
    with serving(files["plain"], "--workers", "2", "--classes", ",".join(NAMES), "--mean", "0.1307",
                 "--std", "0.3081", "--preprocess", "digit", log=tmp_path / "serve.log") as (url, _):
        assert httpx.get(url + "/v1/model").json()["classes"] == NAMES
        for image, label in zip(images[:4], labels[:4]):
            r = httpx.post(url + "/v1/predict", content=png_bytes(image), headers={"content-type": "image/png"})
            assert r.status_code == 200 and r.json()["class"] == NAMES[label], r.text
    assert "Traceback" not in (tmp_path / "serve.log").read_text()


def test_bad_descriptions_are_one_line(files, tmp_path):
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9\n".encode("latin-1"))
    gaps = tmp_path / "gaps.json"
    gaps.write_text(json.dumps({"0": "a", "2": "b"}))
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("[1, ")
    describe = ["--mean", "0.1307", "--std", "0.3081"]
    cases = [
        ([files["plain"]], "describe it with --classes, --mean, --std"),
        ([files["plain"], "--classes", "10"], "describe it with --mean, --std"),
        ([files["plain"], "--classes", "3", *describe], "10 logits but the metadata names 3 classes"),
        ([files["plain"], "--classes", "1", *describe], "at least 2"),
        ([files["plain"], "--classes", latin, *describe], "UTF-8"),
        ([files["plain"], "--classes", gaps, *describe], "0..1, each once"),
        ([files["plain"], "--classes", bad_json, *describe], "not valid JSON"),
        ([files["plain"], "--classes", "nothing-here", *describe], "neither a count"),
        ([files["plain"], "--classes", "a,,b", *describe], "class name"),
        ([files["plain"], "--classes", "10", "--mean", "0.5,0.5,0.5", "--std", "1"], "input mean must be a list of 1"),
        ([files["plain"], "--classes", "10", "--mean", "0.5", "--std", "0"], "input std"),
        ([files["plain"], "--classes", "10", "--mean", "nan", "--std", "1"], "finite"),
        ([files["plain"], "--classes", "10", "--mean", "x", "--std", "1"], "--mean takes numbers"),
        ([files["plain"], "--classes", "10", *describe, "--input-size", "28"], "does not match the graph's fixed"),
        ([files["plain"], "--classes", "10", *describe, "--preprocess", "digit", "--crop", "0.5"], "--crop goes with"),
        ([files["own"], "--classes", "10"], "carries convzoo's own description"),
        (["lenet5:mnist", "--classes", "10"], "a convzoo checkpoint describes itself"),
    ]
    for args, fragment in cases:
        proc = run_cli("predict", "--model", *args, "--from-test", "1")
        assert fragment in assert_user_error(proc), (args, proc.stderr)


def foreign_graph(shape, out_classes=10):
    """A tiny valid graph: input of `shape` -> a flat vector sliced to `out_classes` logits."""
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_classes])
    nodes = [helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("Slice", ["f", "starts", "ends", "axes"], ["y"])]
    consts = [helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in (("starts", 0), ("ends", out_classes),
                                                                            ("axes", 1))]
    graph = helper.make_graph(nodes, "g", [inp], [out], consts)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


@pytest.mark.parametrize("shape, fragment", [
    (["N", 3, 32, 16], "is not square"),
    (["N", 3, 32, 32, 1], "is not an image batch"),
    (["N", 8, 32, 32], "no grey (1) or RGB (3) channel axis"),
    (["N", 3, 1024, 1024], "larger than 512"),
    (["N", "H", "W", 3], "--input-size"),
])
def test_inputs_convzoo_cannot_read_are_named(tmp_path, shape, fragment):
    path = write(foreign_graph(shape), tmp_path / "g.onnx")
    with pytest.raises(ConvzooError, match=re.escape(fragment)):
        convzoo.load(path, classes=10, mean=0.5, std=0.25)


def test_a_softmax_behind_quantize_dequantize_or_flatten_is_not_softmaxed_again(tmp_path):
    """onnxruntime's QDQ quantization puts a QuantizeLinear/DequantizeLinear pair after the softmax; other
    exporters a Flatten: the output is still probabilities."""
    from onnx import TensorProto, helper

    model = foreign_graph(["N", 1, 8, 8])
    graph, y = model.graph, model.graph.output[0].name
    graph.node[-1].output[0] = "logits"
    scale = [helper.make_tensor("s", TensorProto.FLOAT, [], [1 / 255]), helper.make_tensor("z", TensorProto.UINT8, [], [0])]
    graph.initializer.extend(scale)
    graph.node.extend([helper.make_node("Softmax", ["logits"], ["p"], axis=1),
                       helper.make_node("QuantizeLinear", ["p", "s", "z"], ["q"]),
                       helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"]),
                       helper.make_node("Flatten", ["d"], [y])])
    path = write(model, tmp_path / "qdq.onnx")
    image = np.zeros((8, 8), np.uint8)
    image[0, :3] = (255, 128, 64)  # logits 1.0, 0.5, 0.25 and seven zeros, in 0..1 pixels with mean 0, std 1
    top = convzoo.predict(convzoo.load(path, classes=10, mean=0, std=1, crop=1.0), [image], topk=1)[0]
    logits = np.array([1.0, 128 / 255, 64 / 255] + [0] * 7)
    expected = np.exp(logits) / np.exp(logits).sum()
    assert top["index"] == 0 and abs(top["probability"] - expected[0]) <= 1 / 255, (top, expected[0])


def test_a_graph_that_drops_or_folds_the_batch_is_refused_at_load(tmp_path):
    from onnx import TensorProto, helper

    model = foreign_graph(["N", 1, 8, 8])
    graph, y = model.graph, model.graph.output[0].name
    graph.node[-1].output[0] = "all"
    graph.initializer.extend([helper.make_tensor(n, TensorProto.INT64, [1], [v]) for n, v in
                              (("r0", 0), ("r1", 1), ("a0", 0))])
    graph.node.append(helper.make_node("Slice", ["all", "r0", "r1", "a0"], [y]))  # the first row only
    path = write(model, tmp_path / "first_row.onnx")
    with pytest.raises(ConvzooError, match=re.escape("outputs shape [1, 10] for 2 images")):
        convzoo.load(path, classes=10, mean=0, std=1)


def test_an_input_with_every_axis_open_takes_its_channels_from_the_mean(tmp_path):
    """Hugging Face's exports declare pixel_values (batch, num_channels, height, width), all open."""
    path = write(foreign_graph(["batch", "num_channels", "height", "width"]), tmp_path / "hf.onnx")
    model = convzoo.load(path, classes=10, mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], input_size=16)
    assert model.input["channels"] == 3 and model.input["layout"] == "nchw"
    with pytest.raises(ConvzooError, match="leaves the channels open"):
        convzoo.load(path, classes=10, mean=0.5, std=0.5, input_size=16)


def test_a_half_precision_input_is_named(tmp_path):
    model = foreign_graph(["N", 3, 8, 8])
    model.graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    path = tmp_path / "fp16.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(ConvzooError, match="is float16, not float32"):
        convzoo.load(path, classes=10, mean=0, std=1)


def test_two_workers_serve_a_model_of_21843_classes(tmp_path):
    """The settings once travelled in an environment variable: 21,843 names (ImageNet-21k) passed Linux's
    128 KiB limit and no worker ever started."""
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"synset {i:05d} of a long winter" for i in range(21843)))
    path = write(foreign_graph(["N", 3, 128, 128], out_classes=21843), tmp_path / "big.onnx")
    with serving(path, "--workers", "2", "--classes", names, "--mean", "0", "--std", "1",
                 log=tmp_path / "serve.log") as (url, _):
        classes = httpx.get(url + "/v1/model", timeout=60).json()["classes"]
        assert len(classes) == 21843 and classes[-1] == "synset 21842 of a long winter"


def test_an_open_channels_last_input_runs_at_the_given_size(tmp_path):
    path = write(foreign_graph(["N", "H", "W", 3]), tmp_path / "g.onnx")
    model = convzoo.load(path, classes=10, mean=0.5, std=0.25, input_size=24)
    assert model._predictor.meta["input"]["layout"] == "nhwc" and model._predictor.meta["input"]["size"] == 24
    image = np.zeros((24, 24, 3), np.uint8)
    image[0, :4] = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]
    # The graph's first 10 values, channels last: pixel (0, 0)'s R, G, B, then pixel (0, 1)'s ...
    logits = (np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 0, 0]]).ravel()[:10] / 255 - 0.5) / 0.25
    expected = np.exp(logits) / np.exp(logits).sum()
    result = convzoo.predict(model, [image], topk=10)[0]
    got = np.array([t["probability"] for t in sorted(result["topk"], key=lambda t: t["index"])])
    assert np.abs(got - expected).max() < 1e-5


@pytest.mark.parametrize("props, fragment", [
    ({"task": "detect"}, "'detect' model"),
    ({"names": "{0: 'a', 2: 'b'}"}, "number its classes 0..1"),
    ({"names": "__import__('os').system('false')"}, "not a {index: name} mapping"),
    ({"names": "[" * 200_000 + "]" * 200_000}, "not a {index: name} mapping"),
    ({"names": "{0: 'a'}" + " " * (5 << 20)}, "longer than"),
    ({"names": "{0: 'a', 0: 'b'}"}, "repeats index 0"),
    ({"imgsz": "[32, 16]"}, "not one square side"),
    ({"imgsz": "[28, 28]"}, "says imgsz 28"),
])
def test_hostile_ultralytics_metadata_is_one_line(files, tmp_path, props, fragment):
    path = write(onnx.load(str(files["ultralytics"])), tmp_path / "u.onnx", {**ULTRALYTICS, **props})
    with pytest.raises(ConvzooError, match=re.escape(fragment)):
        convzoo.load(path)


def test_fuzzed_ultralytics_metadata_loads_or_is_refused(files, tmp_path):
    """Seeded: random edits of the names and imgsz entries either give a working model or a ConvzooError."""
    rng = random.Random(1508)
    base = onnx.load(str(files["ultralytics"]))
    alphabet = "{}[]():,' 0123456789-xeE\"\\"
    loaded = 0
    for case in range(40):
        props = dict(ULTRALYTICS)
        key = rng.choice(["names", "imgsz"])
        text = list(props[key])
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(text) + 1)
            op = rng.random()
            if op < 0.4 and text:
                del text[min(i, len(text) - 1)]
            elif op < 0.8:
                text.insert(i, rng.choice(alphabet))
            else:
                text[i:i] = text[: rng.randint(1, 20)]
        props[key] = "".join(text)
        path = write(onnx.ModelProto.FromString(base.SerializeToString()), tmp_path / f"f{case}.onnx", props)
        try:
            model = convzoo.load(path)
        except ConvzooError as exc:
            assert "\n" not in str(exc), str(exc)
            continue
        assert len(model.classes) == 10 and len(convzoo.predict(model, [np.zeros((28, 28), np.uint8)])) == 1
        loaded += 1
    assert 0 < loaded < 40  # the fuzz both kept and broke files
