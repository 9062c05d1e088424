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

from conftest import MNIST_DIR, assert_user_error, cli_error, need, run_cli
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
    assert "a convzoo checkpoint describes itself" in assert_user_error(run_cli("eval", "--ckpt", "lenet5:mnist", *describe))


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
        ([files["plain"], "--classes", "10", "--mean", "0.5,0.5,0.5", "--std", "1"], "mean must be one number or a list of 1 (one per input channel)"),
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


def test_a_class_file_that_would_overwrite_or_shift_names_is_refused(tmp_path, capsys):
    """A JSON key given twice (`"1": "b", "1": "c"`) named class 1 'c' without a word, and a blank line inside
    a text file was dropped, moving every later name to the class before its own: each is one line naming
    the file (the line, for the blank one). Blank lines at a text file's end are only its ending."""
    model = write(foreign_graph(["N", 1, 16, 16], out_classes=3), tmp_path / "g.onnx")
    image = tmp_path / "x.png"
    Image.new("L", (16, 16)).save(image)
    twice, gap, ending = tmp_path / "twice.json", tmp_path / "gap.txt", tmp_path / "ending.txt"
    twice.write_text('{"0": "a", "1": "b", "1": "c", "2": "d"}')
    gap.write_text("a\n\nb\nc\n")
    ending.write_text("a\r\nb\r\nc\r\n\r\n  \n")
    for file, problem in ((twice, "the JSON key '1' is given 2 times; give it once"), (gap, "line 2 is blank")):
        cli_error(capsys, "predict", "--model", model, "--classes", file, "--mean", 0, "--std", 1, image,
                  fragments=[f"{file}: {problem}"])
    assert convzoo.load(model, classes=str(ending), mean=0, std=1).classes == ["a", "b", "c"]


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


def typed_graph(elem_type, shape=("N", 3, 8, 8)):
    """foreign_graph taking and giving `elem_type` (float16 exports, uint8 raw-pixel inputs)."""
    model = foreign_graph(list(shape))
    model.graph.input[0].type.tensor_type.elem_type = elem_type
    model.graph.output[0].type.tensor_type.elem_type = elem_type
    return model


def test_half_precision_and_raw_pixel_inputs_run(tmp_path):
    """float16 graphs (onnxconverter-common's float16 conversion keeps them at both ends) get the batch in
    half precision; uint8 graphs take the pixels 0..255 as they are, with no --mean or --std."""
    rng = np.random.default_rng(7)
    images = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(5)]
    fp32 = probabilities(convzoo.load(write(foreign_graph(["N", 3, 8, 8]), tmp_path / "fp32.onnx"), classes=10,
                                      mean=0.5, std=0.25), images)
    half = convzoo.load(write(typed_graph(onnx.TensorProto.FLOAT16), tmp_path / "fp16.onnx"), classes=10, mean=0.5,
                        std=0.25)
    assert half.input["dtype"] == "float16"
    assert np.abs(probabilities(half, images) - fp32).max() < 2e-3  # float16 rounding of the logits
    raw = convzoo.load(write(typed_graph(onnx.TensorProto.UINT8), tmp_path / "u8.onnx"), classes=10)
    logits = np.stack([im.transpose(2, 0, 1).ravel()[:10] for im in images]).astype(np.float64)  # the pixels
    expected = np.exp(logits - logits.max(1, keepdims=True))
    assert np.abs(probabilities(raw, images) - expected / expected.sum(1, keepdims=True)).max() < 1e-6
    with pytest.raises(ConvzooError, match="--mean and --std do not apply"):
        convzoo.load(tmp_path / "u8.onnx", classes=10, mean=0.5, std=0.25)
    with pytest.raises(ConvzooError, match=r"\): --std does not apply"):  # only the flag the user gave is named
        convzoo.load(tmp_path / "u8.onnx", classes=10, std=0.25)
    # A preprocessing file's mean and std are its training's, which a uint8 graph applies inside: not refused
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "input_size": [3, 8, 8],
                                                     "crop_pct": 1.0, "interpolation": "bilinear"}}))
    from_file = convzoo.load(tmp_path / "u8.onnx", classes=10, preprocessor=cfg)
    assert np.abs(probabilities(from_file, images) - probabilities(raw, images)).max() < 1e-6
    with pytest.raises(ConvzooError, match="--mean does not apply"):  # the user's own flag still is
        convzoo.load(tmp_path / "u8.onnx", classes=10, preprocessor=cfg, mean=0.5)
    doubles = typed_graph(onnx.TensorProto.DOUBLE)
    with pytest.raises(ConvzooError, match="float64: convzoo feeds float32, float16 or uint8"):
        convzoo.load(write(doubles, tmp_path / "f64.onnx"), classes=10, mean=0, std=1)


TIMM_CONFIG = {  # timm's hub config.json for resnet50.a1_in1k, at 16 px (the test graph's side) and 10 classes
    "architecture": "resnet50", "num_classes": 10, "num_features": 2048, "global_pool": "avg",
    "pretrained_cfg": {"tag": "a1_in1k", "custom_load": False, "input_size": [3, 16, 16],
                       "test_input_size": [3, 20, 20], "fixed_input_size": False, "interpolation": "bicubic",
                       "crop_pct": 0.95, "test_crop_pct": 1.0, "crop_mode": "center",
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 10,
                       "pool_size": [1, 1], "first_conv": "conv1", "classifier": "fc"}}
# Hugging Face preprocessor_config.json files as the hub holds them (google/vit-base-patch16-224,
# microsoft/resnet-50, facebook/deit-base-distilled-patch16-224 in today's format), sides scaled to the test's.
HF_VIT = {"do_normalize": True, "do_resize": True, "feature_extractor_type": "ViTFeatureExtractor",
          "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 2, "size": 16}
HF_RESNET = {"crop_pct": 0.875, "do_normalize": True, "do_resize": True, "feature_extractor_type":
             "ConvNextFeatureExtractor", "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
             "resample": 3, "size": 16}
HF_DEIT = {"crop_size": {"height": 16, "width": 16}, "do_center_crop": True, "do_normalize": True, "do_rescale": True,
           "do_resize": True, "image_mean": [0.485, 0.456, 0.406], "image_processor_type": "DeiTImageProcessor",
           "image_std": [0.229, 0.224, 0.225], "resample": 3, "rescale_factor": 0.00392156862745098,
           "size": {"shortest_edge": 20}}


def photo(width=37, height=23):
    """A smooth colour image, so resampling filters give measurably different inputs."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x * y) % 256], -1).astype(np.uint8)


def expected_input(image, crop, side, resample, mean, std):
    """What the preprocessing file says, computed here with Pillow: the centre square of `crop` x the
    shorter side, resized to `side`, pixels / 255 normalised."""
    im = Image.fromarray(image)
    w, h = im.size
    edge = round(min(w, h) * crop)
    left, top = (w - edge) // 2, (h - edge) // 2
    im = im.crop((left, top, left + edge, top + edge)).resize((side, side), resample, reducing_gap=2.0)
    x = np.asarray(im, np.float32).transpose(2, 0, 1) / 255
    return (x - np.float32(mean).reshape(3, 1, 1)) / np.float32(std).reshape(3, 1, 1)


@pytest.mark.parametrize("config, crop, resample, mean, std", [
    (TIMM_CONFIG, 0.95, Image.Resampling.BICUBIC, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    (HF_VIT, 1.0, Image.Resampling.BILINEAR, [0.5] * 3, [0.5] * 3),
    (HF_RESNET, 0.875, Image.Resampling.BICUBIC, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    (HF_DEIT, 0.8, Image.Resampling.BICUBIC, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
], ids=["timm", "hf-vit", "hf-resnet", "hf-deit"])
def test_a_preprocessing_file_describes_the_input(tmp_path, config, crop, resample, mean, std):
    """--preprocessor reads mean, std, crop, resampling filter and side from timm's or Hugging Face's own
    file: the input is what their eval transforms make (centre crop, filter, normalisation), and the side
    fills an open graph."""
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config))
    image = photo()
    for shape in (["N", 3, 16, 16], ["N", 3, "H", "W"]):
        model = convzoo.load(write(foreign_graph(shape), tmp_path / "g.onnx"), classes=10, preprocessor=cfg)
        got = model._predictor.inputs([Image.fromarray(image)])[0]
        assert got.shape == (3, 16, 16)
        assert np.abs(got - expected_input(image, crop, 16, resample, mean, std)).max() < 1e-5
    bilinear = convzoo.load(tmp_path / "g.onnx", classes=10, preprocessor=cfg, interpolation="bilinear")
    if resample != Image.Resampling.BILINEAR:  # a flag given overrides the file; the filters really differ
        other = bilinear._predictor.inputs([Image.fromarray(image)])[0]
        assert np.abs(other - expected_input(image, crop, 16, resample, mean, std)).max() > 1e-3


def test_a_rescale_other_than_1_255_is_folded_into_mean_and_std(tmp_path):
    """A processor that takes pixels 0..255 (do_rescale false) normalises with means in that unit."""
    cfg = tmp_path / "preprocessor_config.json"
    cfg.write_text(json.dumps({**HF_VIT, "do_rescale": False, "image_mean": [123.675, 116.28, 103.53],
                               "image_std": [58.395, 57.12, 57.375]}))
    model = convzoo.load(write(foreign_graph(["N", 3, 16, 16]), tmp_path / "g.onnx"), classes=10, preprocessor=cfg)
    image = photo(16, 16)
    want = (image.transpose(2, 0, 1) - np.float32([123.675, 116.28, 103.53]).reshape(3, 1, 1)) / \
        np.float32([58.395, 57.12, 57.375]).reshape(3, 1, 1)
    assert np.abs(model._predictor.inputs([Image.fromarray(image)])[0] - want).max() < 1e-4


def test_the_cli_reads_a_preprocessing_file(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(TIMM_CONFIG))
    graph = write(foreign_graph(["N", 3, 16, 16]), tmp_path / "g.onnx")
    Image.fromarray(photo()).save(tmp_path / "p.png")
    proc = run_cli("predict", "--model", graph, tmp_path / "p.png", "--classes", "10", "--preprocessor", cfg,
                   "--json", check=0)
    want = convzoo.predict(convzoo.load(graph, classes=10, preprocessor=cfg), [tmp_path / "p.png"])[0]
    assert json.loads(proc.stdout)["class"] == want["class"]
    assert abs(json.loads(proc.stdout)["probability"] - want["probability"]) < 1e-6
    for args, fragment in [(["--preprocess", "digit", "--preprocessor", cfg], "--preprocessor describes photos"),
                           (["--interpolation", "bicubic", "--preprocess", "fashion"], "--interpolation goes with")]:
        proc = run_cli("predict", "--model", graph, tmp_path / "p.png", "--classes", "10", "--mean", "0", "--std",
                       "1", *args)
        assert fragment in assert_user_error(proc), (args, proc.stderr)
    proc = run_cli("predict", "--model", "lenet5:mnist", tmp_path / "p.png", "--preprocessor", cfg)
    assert "a convzoo checkpoint describes itself" in assert_user_error(proc)


@pytest.mark.parametrize("content, fragment", [
    ("{", "not valid JSON"),
    ("[1, 2]", "neither a timm config.json"),
    (json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "mean": [0.5, 0.5]}}), "mean must be a list of 1 or 3"),
    (json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "std": [1, "x", 2]}}), "std must be a list"),
    (json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "input_size": [3, 16, 12]}}), "16x12"),
    (json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "crop_pct": "0.9"}}), "crop_pct must be a fraction"),
    (json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "crop_pct": 3}}), "crop_pct must be a fraction"),
    (json.dumps({**HF_RESNET, "crop_pct": -1}), "crop_pct must be a fraction"),
    (json.dumps({"pretrained_cfg": {**TIMM_CONFIG["pretrained_cfg"], "interpolation": "sinc"}}), "interpolation must be one of"),
    (json.dumps({**HF_VIT, "resample": 9}), "resample must be one of Pillow's"),
    (json.dumps({**HF_VIT, "size": {"longest_edge": 16}}), "size must be a number of pixels"),
    (json.dumps({**HF_VIT, "size": 10 ** 9}), "not a side in 1..4096"),
    (json.dumps({**HF_VIT, "rescale_factor": 0, "do_rescale": True}), "rescale_factor must be a positive"),
    (json.dumps({**HF_VIT, "image_std": None}), "image_std must be a list"),
    ('{"image_mean": ' + "[" * 100_000 + "]" * 100_000 + "}", "not valid JSON"),
    (" " * (2 << 20), "larger than 1 MiB"),
])
def test_bad_preprocessing_files_are_one_line_naming_the_file(tmp_path, content, fragment):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(content)
    graph = write(foreign_graph(["N", 3, 16, 16]), tmp_path / "g.onnx")
    with pytest.raises(ConvzooError, match=re.escape(fragment)) as err:
        convzoo.load(graph, classes=10, preprocessor=cfg)
    assert "\n" not in str(err.value) and str(cfg) in str(err.value)


def test_fuzzed_preprocessing_files_load_or_are_refused(tmp_path):
    """Seeded: random edits of the four real files either describe the graph or raise a ConvzooError."""
    rng = random.Random(2911)
    graph = write(foreign_graph(["N", 3, "H", "W"]), tmp_path / "g.onnx")
    alphabet = '{}[]:,"0123456789.-eEtrufalsn '
    loaded = 0
    for case in range(60):
        text = list(json.dumps(rng.choice([TIMM_CONFIG, HF_VIT, HF_RESNET, HF_DEIT])))
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(text))
            if rng.random() < 0.5:
                del text[i]
            else:
                text.insert(i, rng.choice(alphabet))
        cfg = tmp_path / f"c{case}.json"
        cfg.write_text("".join(text))
        try:
            model = convzoo.load(graph, classes=10, preprocessor=cfg)
        except ConvzooError as exc:
            assert "\n" not in str(exc), str(exc)
            continue
        assert len(convzoo.predict(model, [photo()])) == 1
        loaded += 1
    assert 0 < loaded < 60


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
