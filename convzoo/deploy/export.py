"""Export a checkpoint to one self-contained ONNX file (preprocessing in its metadata) or a
torch.export archive, and check the ONNX file against PyTorch in onnxruntime."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch

from ..atomic import atomic_path, atomic_write_bytes, check_target, make_folder
from ..engine.checkpoint import load_checkpoint, model_from_checkpoint
from ..errors import CheckpointError
from ..metadata import META_KEY, deployment_metadata
from .runtime import in_fixed_batches, ort_session, session_runner


def export_onnx(ckpt_path, out_path, *, opset: int = 18, dynamic_batch: bool = True, check: bool = True,
                ckpt: dict | None = None, exist_ok: bool = True) -> dict:
    """Write `out_path` (.onnx); returns {'path', 'max_abs_diff'} from the onnxruntime parity check.
    `ckpt`: the checkpoint already loaded (from the bytes the caller hashed), else `ckpt_path` is read.
    Without `exist_ok`, a file that appears at `out_path` during the export is not replaced."""
    check_target(out_path, inputs=[ckpt_path], suffixes=(".onnx",))
    ckpt = ckpt if ckpt is not None else load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path).eval()
    spec = ckpt["input"]
    # A fixed batch is 1, what a graph without a batch dimension serves; 2 keeps a dynamic one symbolic.
    example = torch.zeros(2 if dynamic_batch else 1, spec["channels"], spec["size"], spec["size"])
    samples = parity_samples(example.shape[1:])
    with torch.no_grad():
        expected = model(samples).numpy()
    if not np.isfinite(expected).all():  # finite weights that overflow: nothing is written for a useless model
        raise CheckpointError("the model's logits are not finite (NaN or inf) for ordinary inputs; its weights are "
                              "unusable", ckpt_path)
    onnx_model = to_onnx(model, example, opset=opset, dynamic_batch=dynamic_batch)
    set_metadata(onnx_model, deployment_metadata(ckpt))
    result = {"path": str(out_path)}

    def check_parity(written):  # before the file replaces `out_path`
        result["max_abs_diff"] = parity(model, written, example.shape[1:], samples, expected=expected)
        if not np.isfinite(result["max_abs_diff"]):
            raise CheckpointError("onnxruntime's logits for the exported model are not finite (NaN or inf) where "
                                  "PyTorch's are: its weights overflow there; nothing was written", ckpt_path)

    save_onnx(onnx_model, out_path, verify=check_parity if check else None, replace=exist_ok)
    return result


def calibrated(batches: int, images: int) -> str:
    """What an int8 file's calibration read, as the quantize report and `export --int8` say it: the batches
    there were, not those asked for (a training set of 100 images gives 2 of the default 32)."""
    return f"{batches} training batches ({images:,} images)"


def result_line(result: dict) -> str:
    """The one line `convzoo export` prints (--json: `result` itself)."""
    if "scales" in result:  # int8 (quant/ptq.py)
        return (f"wrote {result['path']}: int8, {result['scales']} scales, calibrated on "
                f"{calibrated(result['calibration_batches'], result['calibration_images'])}")
    if "max_abs_diff" in result:
        return (f"wrote {result['path']}: checked in onnxruntime, max |logit difference| vs PyTorch "
                f"{result['max_abs_diff']:.2g}")
    return f"wrote {result['path']}"


def to_onnx(model: torch.nn.Module, example: torch.Tensor, *, opset: int = 18, dynamic_batch: bool = True):
    """torch.onnx (dynamo) export to an in-memory onnx.ModelProto with the weights inside."""
    dynamic = {"x": {0: torch.export.Dim("batch", min=1, max=65536)}} if dynamic_batch else None
    # The exporter prints progress lines and warns about optional packages (torchvision) it skips.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(model, (example,), dynamo=True, dynamic_shapes=dynamic, input_names=["input"],
                                    output_names=["logits"], opset_version=opset, external_data=False)
    # Serialized in memory, not saved to $TMPDIR and read back: a full temp folder gave a traceback.
    return program.model_proto  # a fresh ModelProto, serialized from the exporter's graph


def set_metadata(onnx_model, meta: dict) -> None:
    del onnx_model.metadata_props[:]
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = META_KEY, json.dumps(meta)


def save_onnx(onnx_model, out_path, verify=None, *, replace: bool = True) -> None:
    """Check the graph, then write it atomically as a single file; `verify(temp_path)` may refuse the
    written file (by raising) before it replaces `out_path` (without `replace`, before it takes that
    name, which must still be free: atomic_path)."""
    import onnx

    for node in onnx_model.graph.node:  # the exporter's per-node notes (stack traces with local paths, module
        del node.metadata_props[:]      # names): no use to a runtime, and 6 KiB of LeNet-5's 78 KiB int8 file
    onnx.checker.check_model(onnx_model, full_check=True)
    make_folder(Path(out_path).parent)
    with atomic_path(out_path, ".onnx", replace=replace) as tmp:
        onnx.save(onnx_model, str(tmp))
        if verify is not None:
            verify(tmp)


def parity_samples(input_shape) -> torch.Tensor:
    return torch.randn(8, *input_shape, generator=torch.Generator().manual_seed(0))


def parity(model: torch.nn.Module, onnx_path, input_shape, samples: torch.Tensor | None = None, *,
           expected: np.ndarray | None = None) -> float:
    """Max |logit difference| between PyTorch (`expected`, computed if None) and onnxruntime on
    `samples` (random if None)."""
    x = samples if samples is not None else parity_samples(input_shape)
    if expected is None:
        with torch.no_grad():
            expected = model(x).numpy()
    session = ort_session(onnx_path)
    rows = session.get_inputs()[0].shape[0]  # a number when the batch is fixed (--no-dynamic-batch), else a name
    run = session_runner(session)
    got = (in_fixed_batches(run, rows) if isinstance(rows, int) and rows > 0 else run)(x.numpy())
    return float(np.abs(expected - got).max())


def export_pt2(ckpt_path, out_path, *, exist_ok: bool = True) -> dict:
    """torch.export archive (.pt2): the graph with weights, loadable with torch.export.load."""
    check_target(out_path, inputs=[ckpt_path], suffixes=(".pt2",))
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, ckpt_path).eval()
    spec = ckpt["input"]
    example = torch.zeros(2, spec["channels"], spec["size"], spec["size"])
    program = torch.export.export(model, (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}})
    out_path = Path(out_path)
    make_folder(out_path.parent)
    # Saved to memory first: torch.export.save on a full disk aborts the interpreter at exit.
    buffer = io.BytesIO()
    torch.export.save(program, buffer, extra_files={"convzoo.json": json.dumps(deployment_metadata(ckpt))})
    atomic_write_bytes(out_path, buffer.getvalue(), replace=exist_ok)
    return {"path": str(out_path)}
