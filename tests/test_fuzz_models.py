"""Seeded fuzzing of model files through the real CLI: malformed checkpoints, safetensors and ONNX
files (wrong field types, missing keys, forged sizes, graphs that disagree with their metadata,
truncations and bit flips) each end in a prediction or one `convzoo: error:` line with exit 2:
never a traceback, and never more memory than the runner's address-space limit."""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from conftest import MNIST_DIR, need
from fuzzing import problems, run_cases

SEED = 1313

# (path into the description, forged value): each makes the description invalid.
FIELD_EDITS = [
    (("model",), 7), (("model",), None), (("model",), []), (("model",), ""), (("model",), "x" * 1000),
    (("model",), "no-such-model"),
    (("num_classes",), "10"), (("num_classes",), -1), (("num_classes",), 0), (("num_classes",), 10**12),
    (("num_classes",), True), (("num_classes",), 9.5), (("num_classes",), 11),
    (("class_names",), "0123456789"), (("class_names",), list(range(10))), (("class_names",), []),
    (("class_names",), ["a"] * 9), (("class_names",), None), (("class_names",), [None] * 10),
    (("input",), 5), (("input",), "x"), (("input",), []), (("input",), {}),
    (("input", "channels"), "1"), (("input", "channels"), 0), (("input", "channels"), 99), (("input", "channels"), 3),
    (("input", "size"), 12000), (("input", "size"), -32), (("input", "size"), 0), (("input", "size"), "32"),
    (("input", "size"), 31.5), (("input", "size"), 2**40), (("input", "size"), 28),
    (("input", "fit"), "zoom"), (("input", "fit"), 3),
    (("input", "mean"), []), (("input", "mean"), "x"), (("input", "mean"), [float("nan")]), (("input", "mean"), [1, 2]),
    (("input", "std"), [0]), (("input", "std"), [-1]), (("input", "std"), [float("inf")]), (("input", "std"), None),
    (("dataset",), 5), (("preprocess",), "evil"), (("preprocess",), 3),
]
DELETIONS = ["model", "class_names", "input", ("input", "size"), ("input", "std")]
FORGED_DTYPES = [torch.float8_e4m3fn, torch.float8_e4m3fnuz, torch.float8_e5m2, torch.int8, torch.uint8, torch.int32,
                 torch.uint16, torch.uint32, torch.bool]


def edited(meta: dict, path, value=None, delete=False) -> dict:
    meta = copy.deepcopy(meta)
    path = (path,) if isinstance(path, str) else path
    node = meta
    for key in path[:-1]:
        node = node[key]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return meta


def byte_mutations(data: bytes, rng: random.Random, count: int) -> list[bytes]:
    """Truncations, bit flips, overwritten header bytes, and plain garbage."""
    out = [b"", rng.randbytes(4096)]
    for _ in range(count):
        kind = rng.choice(["truncate", "flip", "header"])
        b = bytearray(data)
        if kind == "truncate":
            b = b[: rng.randrange(1, len(b))]
        elif kind == "flip":
            for _ in range(rng.randint(1, 16)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        else:
            start = rng.randrange(0, 64)
            b[start: start + 8] = rng.randbytes(8)
        out.append(bytes(b))
    return out


@pytest.mark.real_data
def test_malformed_model_files_give_one_line_errors(tmp_path):
    from convzoo.deploy.export import export_onnx
    from convzoo.engine.checkpoint import FORMAT, load_checkpoint
    from convzoo.models.pretrained import pretrained_path

    rng = random.Random(SEED)
    digit = Image.fromarray(np.full((28, 28), 0, np.uint8))
    digit.save(tmp_path / "digit.png")
    good = load_checkpoint("lenet5:mnist")
    meta = {k: good[k] for k in ("model", "num_classes", "class_names", "input", "dataset")}
    torch.save({"format": FORMAT, "version": 1, **meta, "state_dict": good["state_dict"]}, tmp_path / "good.pt")
    export_onnx(tmp_path / "good.pt", tmp_path / "good.onnx")
    good_onnx = onnx.load(str(tmp_path / "good.onnx"))
    shipped = pretrained_path("lenet5:mnist").read_bytes()

    files, must_refuse = [], []

    def add(name: str, payload: bytes, refuse: bool):
        path = tmp_path / "cases" / name
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(payload)
        files.append(path)
        must_refuse.append(refuse)

    def as_pt(description) -> bytes:
        import io

        buf = io.BytesIO()
        torch.save(description if not isinstance(description, dict) else
                   {"format": FORMAT, "version": 1, "state_dict": good["state_dict"], **description}, buf)
        return buf.getvalue()

    def as_safetensors(description, state=None) -> bytes:
        from safetensors.torch import save

        state = good["state_dict"] if state is None else state
        return save({k: v.contiguous() for k, v in state.items()}, {"convzoo": json.dumps(description)})

    def as_onnx(description) -> bytes:
        model = copy.deepcopy(good_onnx)
        model.metadata_props[0].value = json.dumps(description)
        return model.SerializeToString()

    forged = [(p, edited(meta, p, v)) for p, v in FIELD_EDITS] \
        + [(p, edited(meta, p, delete=True)) for p in DELETIONS] + [((), [meta]), ((), 42), ((), "lenet5")]
    for i, (field, description) in enumerate(forged):
        add(f"field{i}.pt", as_pt(description), True)
        add(f"field{i}.safetensors", as_safetensors(description), True)
        # ONNX files carry no num_classes (the class names say it), and their graph needs no registered model.
        if field != ("num_classes",) and description != edited(meta, "model", "no-such-model"):
            add(f"field{i}.onnx", as_onnx(description), True)
    for i, state in enumerate(["x", {"conv1.weight": 1}, {}, {"conv1.weight": torch.zeros(3)}]):
        add(f"state{i}.pt", as_pt({**meta, "state_dict": state}), True)
    # Weights of a dtype loading would cast silently, or that has no isfinite (float8): one tensor each.
    picks = random.Random(SEED + 2)  # its own generator: the cases below stay as they were
    for i, dtype in enumerate(FORGED_DTYPES):
        state = dict(good["state_dict"])
        name = picks.choice(sorted(state))
        state[name] = state[name].to(dtype)
        add(f"dtype{i}.pt", as_pt({**meta, "state_dict": state}), True)
        if dtype != torch.float8_e4m3fnuz:  # safetensors has no such dtype
            add(f"dtype{i}.safetensors", as_safetensors(meta, state), True)
    # Graphs that disagree with their metadata: no input, two inputs, other input or output sizes.
    for i, edit in enumerate(["no_input", "two_inputs", "size28", "out7", "int_input"]):
        model = copy.deepcopy(good_onnx)
        graph = model.graph
        if edit == "no_input":
            del graph.input[:]
        elif edit == "two_inputs":
            graph.input.append(copy.deepcopy(graph.input[0]))
            graph.input[-1].name = "second"
        elif edit == "size28":
            graph.input[0].type.tensor_type.shape.dim[2].dim_value = 28
        elif edit == "out7":
            graph.output[0].type.tensor_type.shape.dim[-1].dim_value = 7
        else:
            graph.input[0].type.tensor_type.elem_type = onnx.TensorProto.INT64
        add(f"graph{i}.onnx", model.SerializeToString(), True)
    for suffix, data in ((".pt", (tmp_path / "good.pt").read_bytes()), (".safetensors", shipped),
                         (".onnx", (tmp_path / "good.onnx").read_bytes())):
        for i, payload in enumerate(byte_mutations(data, rng, 25)):
            add(f"bytes{i}{suffix}", payload, False)

    cases = [["predict", "--model", f, tmp_path / "digit.png"] for f in files]
    # The forged input sizes once sized eval's buffers (15.9 GB): run those through eval as well.
    sized = [f for f in files if f.suffix in (".onnx", ".safetensors") and f.stem.startswith("field")]
    cases += [["eval", "--model", f, "--data-path", need(MNIST_DIR)] for f in sized[:20]]
    must_refuse += [True] * len(sized[:20])
    assert len(files) >= 100
    results = run_cases(cases, tmp_path / "run")
    bad = problems(results, lambda i: f"seed {SEED}, case {i}")
    bad += [f"case {i} was accepted: {' '.join(r['argv'])}" for i, r in enumerate(results)
            if must_refuse[i] and r["rc"] != 2]
    assert not bad, f"{len(bad)} of {len(results)} cases failed:\n" + "\n".join(bad[:10])


# Ops that take an output size from values in the graph (deploy/graph_limits.py): each builds a
# 1-D float tensor of `n` values from constants, or from the input's own batch size times `n`.
SIZED_OPS = ["ConstantOfShape", "Expand", "Tile", "Range", "Pad"]


def sized_branch(op: str, n: int, from_input: bool, input_name: str) -> tuple[list, list]:
    """(nodes, initializers) computing 'sized' with n values (n times the batch size if from_input)."""
    from onnx import helper, numpy_helper

    inits = [numpy_helper.from_array(np.array([n], np.int64), "n"), numpy_helper.from_array(np.ones(1, np.float32), "one")]
    nodes = []
    count = "n"
    if from_input:
        nodes += [helper.make_node("Shape", [input_name], ["batch"], end=1), helper.make_node("Mul", ["batch", "n"], ["bn"])]
        count = "bn"
    if op == "ConstantOfShape":
        nodes.append(helper.make_node("ConstantOfShape", [count], ["sized"]))
    elif op == "Expand":
        nodes.append(helper.make_node("Expand", ["one", count], ["sized"]))
    elif op == "Tile":
        nodes.append(helper.make_node("Tile", ["one", count], ["sized"]))
    elif op == "Range":
        inits += [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(1, np.int64), "step")]
        nodes += [helper.make_node("Squeeze", [count], ["limit"]), helper.make_node("Range", ["zero", "limit", "step"], ["ints"]),
                  helper.make_node("Cast", ["ints"], ["sized"], to=onnx.TensorProto.FLOAT)]
    else:  # Pad [1] with n - 1 zeros after it
        inits.append(numpy_helper.from_array(np.array([1], np.int64), "first"))
        nodes += [helper.make_node("Sub", [count, "first"], ["extra"]),
                  helper.make_node("Concat", ["first", "extra"], ["pads_raw"], axis=0),
                  helper.make_node("Mul", ["pads_raw", "zero_one"], ["pads"]),
                  helper.make_node("Pad", ["one", "pads"], ["sized"])]
        inits.append(numpy_helper.from_array(np.array([0, 1], np.int64), "zero_one"))
    return nodes, inits


@pytest.mark.real_data
def test_graphs_that_size_tensors_from_data(tmp_path):
    """Seeded: a branch that builds a tensor of n values (from constants or from the input's batch
    size) is added to a working LeNet-5 graph, its sum times 0 added to the logits. Small n: the file
    predicts as before where the size is a plain constant (else it may be refused in one line, its
    size not bounded before running); n beyond the
    limit: refused in one line before anything runs, never a crash or the runner's 3 GB limit."""
    from onnx import helper

    import convzoo
    from convzoo.deploy.graph_limits import MAX_ELEMENTS

    rng = random.Random(SEED + 1)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "digit.png")
    good = convzoo.export("lenet5:mnist", tmp_path / "good.onnx")["path"]
    files, must_refuse = [], []
    for i in range(30):
        op, from_input = rng.choice(SIZED_OPS), rng.random() < 0.3
        huge = rng.random() < 0.5
        n = rng.randint(MAX_ELEMENTS + 1, 2 ** 40) if huge else rng.randint(1, 4096)
        model = onnx.load(good)
        graph = model.graph
        logits = graph.output[0].name
        for node in graph.node:
            node.output[:] = [f"{o}_raw" if o == logits else o for o in node.output]
        nodes, inits = sized_branch(op, n, from_input, graph.input[0].name)
        inits.append(onnx.numpy_helper.from_array(np.zeros((), np.float32), "nought"))
        nodes += [helper.make_node("ReduceSum", ["sized"], ["total"], keepdims=0),
                  helper.make_node("Mul", ["total", "nought"], ["tap"]),
                  helper.make_node("Add", [f"{logits}_raw", "tap"], [logits])]
        graph.node.extend(nodes)
        graph.initializer.extend(inits)
        path = tmp_path / f"sized{i}-{op}-{'input' if from_input else 'const'}-{n}.onnx"
        onnx.save(model, str(path))
        files.append(path)
        must_refuse.append(huge)
    results = run_cases([["predict", "--model", f, tmp_path / "digit.png"] for f in files], tmp_path / "run")
    bad = problems(results, lambda i: f"seed {SEED + 1}, case {i} ({files[i].name})")
    bad += [f"case {i} was not refused before running: {files[i].name}: {r['stderr'][-300:]}"
            for i, r in enumerate(results) if must_refuse[i] and (r["rc"] != 2 or not any(
                why in r["stderr"] for why in ("values for one image", "cannot be bounded", "shapes do not add up")))]
    # Sizes onnx's inference reads straight from constants must not be refused (Range's and Pad's are
    # computed here through Squeeze/Concat, which it does not fold: those may be refused, in one line).
    direct = ("ConstantOfShape-const", "Expand-const", "Tile-const")
    small_ok = [r["rc"] == 0 for r, refuse, f in zip(results, must_refuse, files)
                if not refuse and any(d in f.name for d in direct)]
    assert small_ok and all(small_ok), [(f.name, r["stderr"][-300:]) for r, f in zip(results, files) if r["rc"]]
    assert not bad, f"{len(bad)} of {len(results)} cases failed:\n" + "\n".join(bad[:10])
