"""ONNX files from other tools and hand-edited ones, through the real onnxruntime and CLI: graphs that end
in Softmax, torch's legacy exporter's batch dims, upper-case names, newer opsets, short external data,
metadata a convzoo cannot read right (unknown data set, fit, format_version) and graphs whose answer
changes from run to run. Each gives the model's own answer or one `convzoo: error: FILE: ...` line."""

from __future__ import annotations

import copy
import json
import random
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx import helper, numpy_helper
from PIL import Image

from conftest import MNIST_DIR, cli_error, need, run_cli
from fuzzing import problems, run_cases

SEED = 8080
SIDES = {"mnist": 28, "MNIST": 28, "fashion_mnist": 28, "cifar10": 32, "folder": 32}  # a folder's: the input's


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The shipped LeNet-5, its convzoo ONNX export, the description in it, and a digit image."""
    import convzoo
    from convzoo.engine.checkpoint import load_checkpoint
    from convzoo.models.registry import create_model

    folder = tmp_path_factory.mktemp("zoo")
    exported = convzoo.export("lenet5:mnist", folder / "good.onnx")["path"]
    good = onnx.load(str(exported))
    meta = json.loads(next(p.value for p in good.metadata_props if p.key == "convzoo"))
    ckpt = load_checkpoint("lenet5:mnist")
    model = create_model("lenet5", num_classes=10, in_channels=1)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    digit = np.zeros((28, 28), np.uint8)
    digit[4:24, 13:16] = 255  # a one
    Image.fromarray(digit).save(folder / "digit.png")
    return {"folder": folder, "onnx": good, "path": exported, "meta": meta, "model": model,
            "digit": folder / "digit.png"}


def legacy_export(module, path, meta: dict, example=None, names=("input", "logits"), opset=17):
    """torch's legacy (TorchScript) exporter, dynamic batch, convzoo's description copied in."""
    example = torch.zeros(1, 1, 32, 32) if example is None else example
    torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=[names[0]],
                      output_names=[names[1]], dynamic_axes={names[0]: {0: "N"}, names[1]: {0: "N"}},
                      opset_version=opset)
    return with_meta(onnx.load(str(path)), path, meta)


def with_meta(model, path, meta) -> str:
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "convzoo", meta if isinstance(meta, str) else json.dumps(meta)
    onnx.save(model, str(path))
    return str(path)


def predicted(*args) -> dict:
    proc = run_cli("predict", *args, "--json", check=0)
    return json.loads(proc.stdout.splitlines()[0])


class Wrapped(torch.nn.Module):
    def __init__(self, model, head):
        super().__init__()
        self.model, self.head = model, head

    def forward(self, x):
        return self.head(self.model(x))


# ---------------------------------------------------------------- 1: a graph that ends in Softmax


def test_graph_ending_in_softmax_is_not_softmaxed_again(zoo, tmp_path):
    """An export of `m(x).softmax(1)` (Ultralytics -cls exports and many others end so) printed "1 (0.2153)"
    where the model says 0.9134: predict, the API and the server's predict_rows took a softmax of its
    probabilities. Its output is used as it is, a LogSoftmax's is exponentiated, and all three agree with
    convzoo's own logits export."""
    import convzoo
    from convzoo.deploy.predict import Predictor

    model, meta = zoo["model"], zoo["meta"]
    files = {"softmax": legacy_export(Wrapped(model, lambda y: y.softmax(1)), tmp_path / "prob.onnx", meta,
                                      names=("images", "output0")),
             "log_softmax": legacy_export(Wrapped(model, lambda y: y.log_softmax(-1)), tmp_path / "logp.onnx", meta),
             "opset11": legacy_export(Wrapped(model, lambda y: y.softmax(1)), tmp_path / "prob11.onnx", meta,
                                      opset=11)}
    want = predicted("--model", zoo["path"], zoo["digit"])
    assert want["class"] == "1" and want["probability"] > 0.5
    for kind, path in files.items():
        got = predicted("--model", path, zoo["digit"])
        assert got["class"] == want["class"], kind
        assert got["probability"] == pytest.approx(want["probability"], abs=1e-4), kind
        api = convzoo.load(path).predict([Image.open(zoo["digit"])])[0]
        assert api["probability"] == pytest.approx(want["probability"], abs=1e-4), kind
        predictor = Predictor(path)
        row = predictor.predict_rows(predictor.inputs([Image.open(zoo["digit"])]))[0]  # the server's path
        assert row["probability"] == pytest.approx(want["probability"], abs=1e-4), kind
        assert sum(t["probability"] for t in predictor.predict_rows(predictor.inputs([Image.open(zoo["digit"])]),
                                                                    topk=10)[0]["topk"]) == pytest.approx(1, abs=1e-4)
    # A softmax over the batch axis is not the classes' probabilities: its output stays logits.
    batch_axis = legacy_export(Wrapped(model, lambda y: y.softmax(0)), tmp_path / "axis0.onnx", meta)
    assert Predictor(batch_axis).outputs == "logits"
    assert Predictor(zoo["path"]).outputs == "logits"


# ---------------------------------------------------------------- 2, 3, 7: the description


@pytest.mark.parametrize("edit, fragments", [
    ({"input": "fit-none"}, ["fit 'none'", "28x28", "32x32"]),
    ({"dataset": None}, ["missing dataset"]),
    ({"dataset": "../../etc"}, ["dataset must be one of", "'../../etc'"]),
    ({"dataset": ""}, ["dataset must be one of"]),
    ({"preprocess": "resize"}, ["preprocess is 'resize'", "'digit'"]),
    ({"format_version": 999}, ["format_version 999", "newer convzoo"]),
    ({"format_version": "1"}, ["format_version must be a positive integer"]),
    ({"format_version": 1.5}, ["format_version must be a positive integer"]),
    ({"format_version": True}, ["format_version must be a positive integer"]),
])
def test_description_a_convzoo_cannot_read_right_is_refused(zoo, tmp_path, capsys, edit, fragments):
    """`fit: none` on a 28x28 data set's 32x32 model crashed eval and quantize with tracebacks; a missing or
    unknown dataset ('../../etc') read digits by the photo rule (0.15 instead of 0.91) while eval said 100%;
    an inconsistent preprocess did the same; format_version 999 was accepted. Each is one line naming the
    file, for predict and eval."""
    meta = copy.deepcopy(zoo["meta"])
    for key, value in edit.items():
        if key == "input":
            meta["input"]["fit"] = value.removeprefix("fit-")
        elif value is None:
            del meta[key]
        else:
            meta[key] = value
    path = with_meta(copy.deepcopy(zoo["onnx"]), tmp_path / "forged.onnx", meta)
    line = cli_error(capsys, "predict", "--model", path, zoo["digit"], fragments=fragments)
    assert "forged.onnx" in line
    cli_error(capsys, "eval", "--model", path, "--data-path", need(MNIST_DIR), fragments=["forged.onnx", *fragments])


def test_fit_none_and_known_datasets_still_load(zoo, tmp_path):
    """What the zoo writes stays valid: fit 'none' where the data's images have the input's size (airbench,
    alexnet-cifar on CIFAR-10; an image folder read at the input's size), catalog aliases, format_version 1
    and an older description without it."""
    from convzoo.metadata import MetadataError, check_model_meta

    cifar = {"model": "airbench", "dataset": "cifar10", "class_names": [str(i) for i in range(10)],
             "num_classes": 10, "input": {"channels": 3, "size": 32, "fit": "none", "mean": [0.5] * 3,
                                          "std": [0.25] * 3}, "format_version": 1}
    assert check_model_meta(cifar, "m.onnx")["dataset"] == "cifar10"
    assert check_model_meta({**cifar, "dataset": "CIFAR-10"}, "m.onnx")["dataset"] == "cifar10"
    folder = {**cifar, "dataset": "folder", "data": {"image_size": 32, "channels": 3, "test_split": 0.2, "seed": 0}}
    check_model_meta(folder, "m.onnx")
    with pytest.raises(MetadataError, match="48x48"):
        check_model_meta({**folder, "data": {**folder["data"], "image_size": 48}}, "m.onnx")
    older = {k: v for k, v in zoo["meta"].items() if k != "format_version"}
    path = with_meta(copy.deepcopy(zoo["onnx"]), tmp_path / "older.onnx", older)
    assert predicted("--model", path, zoo["digit"])["class"] == "1"


def test_seeded_description_fuzz(zoo, tmp_path):
    """Seeded: the convzoo description of an ONNX file, a .safetensors file and a checkpoint given a random
    data set name, fit or format_version; every case is a prediction (the names the catalog knows, fits
    that fit) or one line, never a crash or a prediction read by the wrong rule."""
    from safetensors.torch import save

    from convzoo.engine.checkpoint import FORMAT, load_checkpoint

    rng = random.Random(SEED)
    good = load_checkpoint("lenet5:mnist")
    state = {k: v.contiguous() for k, v in good["state_dict"].items()}
    cases, accept = [], []
    for i in range(36):  # a good description, with one field drawn from all kinds of values (or none)
        dataset, fit = rng.choice(["mnist", "MNIST"]), rng.choice(["pad", "resize"])
        version = rng.choice([1, "missing"])
        field = rng.choice(["", "dataset", "dataset", "fit", "version"])
        if field == "dataset":
            dataset = rng.choice(["fashion_mnist", "cifar10", "folder", "", "../../etc", "imagenet", "mnist ", None, 7])
        elif field == "fit":
            fit = rng.choice(["none", "None", "", None])
        elif field == "version":
            version = rng.choice([2, 999, 0, -1, "1", 1.0, None, True])
        meta = copy.deepcopy(zoo["meta"])
        if dataset is None:
            del meta["dataset"]
        else:
            meta["dataset"] = dataset
        meta["input"]["fit"] = fit
        meta.pop("preprocess", None)  # the data set's own rule
        if version == "missing":
            del meta["format_version"]
        else:
            meta["format_version"] = version
        side = SIDES.get(dataset) if isinstance(dataset, str) else None  # of the data set's images
        ok = side is not None and fit in ("pad", "resize", "none") and (fit != "none" or side == 32) \
            and (version == "missing" or type(version) is int and version == 1)
        kind = rng.choice(["onnx", "safetensors", "pt"])
        path = tmp_path / f"case{i}.{kind}"
        if kind == "onnx":
            with_meta(copy.deepcopy(zoo["onnx"]), path, meta)
        elif kind == "safetensors":
            path.write_bytes(save(state, {"convzoo": json.dumps({**meta, "num_classes": 10})}))
        else:
            torch.save({"format": FORMAT, "version": 1, **meta, "num_classes": 10, "state_dict": state}, path)
        cases.append(["predict", "--model", str(path), str(zoo["digit"])])
        accept.append(ok)
    results = run_cases(cases, tmp_path / "run")
    bad = problems(results, lambda i: f"seed {SEED}, case {i}")
    bad += [f"case {i}: exit {r['rc']}, want {'0' if accept[i] else '2'}: {r['stderr'][-300:]}"
            for i, r in enumerate(results) if r["rc"] != (0 if accept[i] else 2)]
    bad += [f"case {i}: the error does not name the file: {r['stderr'][-300:]}" for i, r in enumerate(results)
            if r["rc"] == 2 and f"case{i}." not in r["stderr"]]
    assert accept.count(True) >= 3 and accept.count(False) >= 10
    assert not bad, "\n".join(bad[:10])


# ---------------------------------------------------------------- 4: torch's legacy exporter


class Upsample(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = torch.nn.Conv2d(1, 4, 3, 2, 1), torch.nn.Linear(4096, 10)

    def forward(self, x):
        return self.fc(torch.nn.functional.interpolate(self.conv(x), scale_factor=2).flatten(1))


class TinyViT(torch.nn.Module):
    def __init__(self, dim=32):
        super().__init__()
        self.patch = torch.nn.Conv2d(1, dim, 8, 8)
        self.cls = torch.nn.Parameter(torch.randn(1, 1, dim))
        self.pos = torch.nn.Parameter(torch.randn(1, 17, dim))
        self.head = torch.nn.Linear(dim, 10)

    def forward(self, x):
        tokens = self.patch(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], 1) + self.pos
        return self.head(tokens[:, 0])


def test_legacy_exporter_batch_dims_are_the_batch(zoo, tmp_path):
    """torch's legacy exporter's F.interpolate(scale_factor=2) (Resize from constant scales) and a ViT's
    class-token expand were refused: onnx's inference names their batch dim 'unk__0', not the input's 'N',
    so the size looked data-dependent. They predict, as onnxruntime answers for them."""
    import onnxruntime as ort

    from convzoo.deploy.predict import Predictor

    torch.manual_seed(SEED)
    for name, module in (("upsample", Upsample()), ("vit", TinyViT())):
        path = legacy_export(module, tmp_path / f"{name}.onnx", zoo["meta"])
        assert run_cli("predict", "--model", path, zoo["digit"], check=0).stdout.startswith(str(zoo["digit"]))
        predictor = Predictor(path)
        x = np.random.default_rng(SEED).standard_normal((5, 1, 32, 32)).astype(np.float32)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        np.testing.assert_allclose(predictor.run(x), session.run(None, {"input": x})[0], rtol=1e-5, atol=1e-5)


def sized_graph(zoo, path, build) -> str:
    """The shipped LeNet-5 export plus a branch `build(batch) -> (nodes, inits, tensor)` whose sum times 0
    is added to the logits: the answer is the same, only the branch's memory differs."""
    model = copy.deepcopy(zoo["onnx"])
    graph = model.graph
    logits = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{o}_raw" if o == logits else o for o in node.output]
    nodes = [helper.make_node("Shape", [graph.input[0].name], ["batch"], end=1)]
    more, inits, tensor = build("batch")
    inits.append(numpy_helper.from_array(np.zeros((), np.float32), "nought"))
    nodes += more + [helper.make_node("ReduceSum", [tensor], ["total"], keepdims=0),
                     helper.make_node("Mul", ["total", "nought"], ["tap"]),
                     helper.make_node("Add", [f"{logits}_raw", "tap"], [logits])]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    onnx.save(model, str(path))
    return str(path)


def test_sizes_taken_from_data_are_still_refused(zoo, tmp_path, capsys):
    """A tensor of batch x 2**29 values, and one growing with the batch's square, are refused before
    anything runs (the batch no longer makes a size unknown, so it must not hide one either); a
    batch-sized one of a few values per image runs."""
    def times(n, squared=False):
        def build(batch):
            inits = [numpy_helper.from_array(np.array([n], np.int64), "n"),
                     numpy_helper.from_array(np.array([4], np.int64), "four")]
            nodes = [helper.make_node("Mul", [batch, "n"], ["bn"])]
            if squared:
                nodes.append(helper.make_node("Mul", ["bn", batch], ["bbn"]))
            nodes += [helper.make_node("Concat", ["bbn" if squared else "bn", "four"], ["shape"], axis=0),
                      helper.make_node("ConstantOfShape", ["shape"], ["sized"])]
            return nodes, inits, "sized"
        return build

    huge = sized_graph(zoo, tmp_path / "huge.onnx", times(1 << 27))
    cli_error(capsys, "predict", "--model", huge, zoo["digit"], fragments=["huge.onnx", "sized", "for one image"])
    square = sized_graph(zoo, tmp_path / "square.onnx", times(1 << 10, squared=True))
    cli_error(capsys, "predict", "--model", square, zoo["digit"], fragments=["square.onnx", "cannot be bounded"])
    small = sized_graph(zoo, tmp_path / "small.onnx", times(16))
    assert predicted("--model", small, zoo["digit"])["class"] == "1"


# ---------------------------------------------------------------- 5: upper-case suffix


def test_upper_case_onnx_suffix(zoo, tmp_path):
    """GOOD.ONNX given with --model was called "an ONNX file, not a checkpoint: ... take it with --model"."""
    upper = tmp_path / "GOOD.ONNX"
    shutil.copy(zoo["path"], upper)
    assert predicted("--model", upper, zoo["digit"])["class"] == "1"
    proc = run_cli("eval", "--model", upper, "--data-path", need(MNIST_DIR), "--test-limit", "200", check=0)
    assert "Accuracy" in proc.stdout


# ---------------------------------------------------------------- 6: onnxruntime's refusals, said first


def test_newer_opset_and_short_external_data_are_said_plainly(zoo, tmp_path, capsys):
    """opset 99 and an external data file shorter than its tensors gave onnxruntime's text cut before the
    reason ("...model_load_utils.h:46 void..."). Each is checked first and said in one line."""
    model = copy.deepcopy(zoo["onnx"])
    model.opset_import[0].version = 99
    onnx.save(model, str(tmp_path / "opset99.onnx"))
    cli_error(capsys, "predict", "--model", tmp_path / "opset99.onnx", zoo["digit"],
              fragments=["opset99.onnx", "uses opset 99", f"up to opset {onnx.defs.onnx_opset_version()}"])

    def external(folder, edit):
        folder.mkdir()
        onnx.save(copy.deepcopy(zoo["onnx"]), str(folder / "m.onnx"), save_as_external_data=True,
                  all_tensors_to_one_file=True, location="m.data", size_threshold=1024)
        edit(folder)
        return folder / "m.onnx"

    short = external(tmp_path / "short", lambda f: (f / "m.data").write_bytes((f / "m.data").read_bytes()[:1000]))
    line = cli_error(capsys, "predict", "--model", short, zoo["digit"],
                     fragments=["m.onnx", "external data file 'm.data' is 1,000 bytes"])
    assert "needs bytes" in line and "onnxruntime_src" not in line

    def forge_length(folder):
        m = onnx.load(str(folder / "m.onnx"), load_external_data=False)
        for tensor in m.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "length":
                    entry.value = "1000000000000"
        onnx.save(m, str(folder / "m.onnx"))

    forged = external(tmp_path / "forged", forge_length)
    cli_error(capsys, "predict", "--model", forged, zoo["digit"],
              fragments=["m.onnx", "external data length is 1,000,000,000,000"])
    good = external(tmp_path / "good", lambda f: None)
    assert predicted("--model", good, zoo["digit"])["class"] == "1"


def test_runtime_errors_keep_their_reason():
    """onnxruntime's message: status, source file and line, C++ signature, then the reason; the reason is kept."""
    from convzoo.deploy.predict import runtime_reason

    text = ("[ONNXRuntimeError] : 1 : FAIL : Exception during initialization: /onnxruntime_src/onnxruntime/core/"
            "optimizer/initializer.cc:51 onnxruntime::Initializer::Initializer(const onnx::TensorProto&, const "
            "std::filesystem::__cxx11::path&) [ONNXRuntimeError] : 1 : FAIL : tensorprotoutils.cc:2201 "
            "GetExtDataFromTensorProto External initializer: conv1.bias offset: 247424 size to read: 24 given "
            "file_length: 1000 are out of bounds or can not be read in full.\n")
    reason = runtime_reason(RuntimeError(text))
    assert "file_length: 1000 are out of bounds" in reason and "onnxruntime_src" not in reason
    plain = "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input: input"
    assert runtime_reason(RuntimeError(plain)) == "Got invalid dimensions for input: input"


def test_a_long_node_name_in_a_runtime_error_is_cheap():
    """onnxruntime quotes node names, which a hostile file makes as long as it likes: runtime_reason's
    source-location search was quadratic in a token of '/'s (16k characters took 2.8 s, on every request
    in serve). A 100k-character one now takes well under 0.1 s, and the reason still leads the line."""
    import time

    from convzoo.deploy.predict import runtime_reason

    name = "/a" * 25_000 + "/" * 50_000
    text = ("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Conv node. "
            f"Name:'{name}' Status Message: /onnxruntime_src/onnxruntime/core/providers/cpu/nn/conv.cc:99 bad")
    start = time.perf_counter()
    reason = runtime_reason(RuntimeError(text))
    assert time.perf_counter() - start < 0.1
    assert reason.startswith("Non-zero status code returned while running Conv node. Name:'/a/a/a")
    assert len(reason) <= 200


# ---------------------------------------------------------------- 8: answers that change from run to run


@pytest.mark.parametrize("op", ["RandomNormalLike", "RandomUniformLike", "Bernoulli", "Multinomial", "Dropout"])
def test_graphs_that_answer_at_random_are_refused(zoo, tmp_path, capsys, op):
    """A RandomNormalLike/RandomUniformLike/Multinomial/Bernoulli node, or a Dropout in training mode, gave a
    different class each run, silently. Refused at load, naming the op; a Dropout in inference mode runs."""
    model = copy.deepcopy(zoo["onnx"])
    graph = model.graph
    logits = graph.output[0].name
    for node in graph.node:
        node.output[:] = [f"{o}_raw" if o == logits else o for o in node.output]
    inits = [numpy_helper.from_array(np.array(0.0, np.float32), "nought")]
    if op == "Dropout":
        inits += [numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                  numpy_helper.from_array(np.array(True), "training")]
        nodes = [helper.make_node("Dropout", [f"{logits}_raw", "ratio", "training"], [logits])]
    else:
        if op == "Multinomial":
            nodes = [helper.make_node("Multinomial", [f"{logits}_raw"], ["drawn"], sample_size=10),
                     helper.make_node("Cast", ["drawn"], ["noise"], to=onnx.TensorProto.FLOAT)]
        elif op == "Bernoulli":
            nodes = [helper.make_node("Sigmoid", [f"{logits}_raw"], ["p"]),
                     helper.make_node("Bernoulli", ["p"], ["noise"])]
        else:
            nodes = [helper.make_node(op, [f"{logits}_raw"], ["noise"])]
        nodes += [helper.make_node("Mul", ["noise", "nought"], ["tap"]),
                  helper.make_node("Add", [f"{logits}_raw", "tap"], [logits])]
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    onnx.save(model, str(tmp_path / "random.onnx"))
    want = "Dropout in training mode" if op == "Dropout" else f"a {op} op"
    cli_error(capsys, "predict", "--model", tmp_path / "random.onnx", zoo["digit"], fragments=["random.onnx", want])
    if op == "Dropout":
        graph.initializer[-1].CopyFrom(numpy_helper.from_array(np.array(False), "training"))
        onnx.save(model, str(tmp_path / "inference.onnx"))
        assert predicted("--model", tmp_path / "inference.onnx", zoo["digit"])["class"] == "1"


def test_dropout_mode_from_a_constants_value_int_is_read():
    """A Constant giving Dropout's training_mode by value_int (or value_ints, value_float), not value, was
    taken for training mode whatever it held; now its value decides, as value's does."""
    from convzoo.deploy.graph_limits import check_deterministic
    from convzoo.errors import ConfigError

    def graph(**constant):
        nodes = [helper.make_node("Constant", [], ["training"], **constant),
                 helper.make_node("Dropout", ["x", "", "training"], ["y"], name="drop")]
        return helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4])],
                                                   [helper.make_tensor_value_info("y", 1, [1, 4])]))

    for off in ({"value_int": 0}, {"value_ints": [0]}, {"value_float": 0.0},
                {"value": numpy_helper.from_array(np.array(False))}):
        check_deterministic(graph(**off), "m.onnx")
    for on in ({"value_int": 1}, {"value_ints": [0, 1]}, {"value": numpy_helper.from_array(np.array(True))}):
        with pytest.raises(ConfigError, match="Dropout in training mode"):
            check_deterministic(graph(**on), "m.onnx")


def test_shape_inference_runs_without_the_weights(monkeypatch):
    """check_tensor_sizes copied the whole graph, weights included, for each of its two inferences (batch 1
    and 2): a 100 MB graph took 2.25 s, AlexNet added ~3 s to every predict and serve start. The probe
    inference sees holds the weights' dims, not their values; the shapes come out as before."""
    from convzoo.deploy import graph_limits

    weight = numpy_helper.from_array(np.ones((2000, 2000), np.float32), "w")  # 16 MB
    shape = numpy_helper.from_array(np.array([-1, 2000], np.int64), "shape")  # read by data propagation
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])]
    model = helper.make_model(helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 1, 40, 50])],
                                                [helper.make_tensor_value_info("y", 1, None)], [weight, shape]))
    seen, infer = [], onnx.shape_inference.infer_shapes
    monkeypatch.setattr(onnx.shape_inference, "infer_shapes",
                        lambda probe, **kw: seen.append(probe.ByteSize()) or infer(probe, **kw))
    graph_limits.check_tensor_sizes(model, "m.onnx", (1, 40, 50))
    assert seen and max(seen) < 10_000, seen
    assert graph_limits.inferred_shapes(graph_limits.light_probe(model), 2, (1, 40, 50), "m.onnx")["y"] == [2, 2000]
    assert len(model.graph.initializer[0].raw_data) == 16_000_000  # the caller's model is left whole
