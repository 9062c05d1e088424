"""`convzoo convert`: another trainer's weights (a plain state_dict, one inside a dict, names under a
wrapper's 'model.' prefix) -> a convzoo checkpoint described as train describes best.pt, so eval,
predict, export, serve and quantize take it.

The weights carry no description of their own: the data set named here gives the classes, input
spec and preprocessing, so they must have been trained on its images as convzoo feeds them.
"""

from __future__ import annotations

import torch

from ..atomic import check_target, make_folder
from ..data.catalog import DATASETS, get_spec
from ..errors import ConfigError
from ..models.registry import get_model_info
from .checkpoint import (build_model, load_weights, meta_model, model_from_checkpoint, save_checkpoint,
                         strip_wrapper_prefix)
from .trainer import check_fits, check_input_fit, describe_model, input_spec

SUFFIXES = (".pt", ".pth")  # what eval and predict read as a torch checkpoint


def convert(weights, *, model: str, dataset: str, output, exist_ok: bool = False) -> dict:
    """Check `weights` fit `model` for `dataset` and write them to `output` as a convzoo checkpoint;
    returns what was written. Every refusal comes before anything is written."""
    info, data_spec = get_model_info(model), get_spec(dataset)
    if data_spec.folder:  # its classes, mean and std are read from the images: train reads them
        catalog = ", ".join(name for name, spec in DATASETS.items() if not spec.folder)
        raise ConfigError(f"convert takes a catalog data set ({catalog}); for an image folder start a run from the "
                          "weights: train --dataset folder --data-path FOLDER --restore WEIGHTS")
    check_input_fit(info, data_spec, info.input_size)
    out = check_target(output, inputs=[weights], suffixes=SUFFIXES, exist_ok=exist_ok)
    spec = input_spec(info, data_spec)
    ckpt = describe_model(info.name, data_spec.classes, data_spec, spec)
    source = load_weights(weights)  # validated: only tensors unpickled, finite, dense
    skeleton = meta_model(ckpt)
    own = (skeleton if skeleton is not None else build_model(ckpt)).state_dict()
    ckpt["state_dict"] = strip_wrapper_prefix(source, own)
    net = model_from_checkpoint(ckpt, weights)  # eval's own load: names and shapes on the meta device first
    check_fits(net, torch.zeros(2, spec.channels, spec.size, spec.size), info.name, data_spec.title)
    # The model's own tensors: float32, contiguous, without storage shared with tensors left out.
    ckpt["state_dict"] = net.state_dict()
    make_folder(out.parent)
    save_checkpoint(out, {**ckpt, "converted_from": str(weights)})
    return {"output": str(out), "source": str(weights), "model": info.name, "dataset": data_spec.name,
            "num_classes": ckpt["num_classes"], "tensors": len(ckpt["state_dict"])}


def result_line(result: dict) -> str:
    """The one line the CLI prints."""
    return (f"wrote {result['output']}: {result['model']} for {result['dataset']} ({result['num_classes']} classes, "
            f"{result['tensors']} tensors from {result['source']})")

