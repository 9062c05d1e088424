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
from .checkpoint import (build_model, meta_model, model_from_checkpoint, read_weights, save_checkpoint,
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
    source, described = read_weights(weights)  # validated: only tensors unpickled, finite, dense
    if described:
        check_same_task(described, info.name, data_spec, weights)
    skeleton = meta_model(ckpt)
    own = (skeleton if skeleton is not None else build_model(ckpt)).state_dict()
    ckpt["state_dict"] = strip_wrapper_prefix(source, own)
    net = model_from_checkpoint(ckpt, weights)  # eval's own load: names and shapes on the meta device first
    check_fits(net, torch.zeros(2, spec.channels, spec.size, spec.size), info.name, data_spec.title)
    # The model's own tensors: float32, contiguous, without storage shared with tensors left out.
    ckpt["state_dict"] = net.state_dict()
    make_folder(out.parent)
    save_checkpoint(out, {**ckpt, "converted_from": str(weights)}, replace=exist_ok)
    return {"output": str(out), "source": str(weights), "model": info.name, "dataset": data_spec.name,
            "num_classes": ckpt["num_classes"], "tensors": len(ckpt["state_dict"])}


def check_same_task(described: dict, model: str, data_spec, weights) -> None:
    """A convzoo file (checkpoint, .safetensors, NAME:DATASET) says what its weights are: converting
    lenet5:mnist `--dataset fashion-mnist` wrote digit weights under garment names, every answer wrong."""
    own_model, own_data = described.get("model"), described.get("dataset")
    same_data = own_data == data_spec.name or (own_data in DATASETS and get_spec(own_data).name == data_spec.name)
    if own_model != model or not same_data or list(described.get("class_names") or []) != list(data_spec.classes):
        raise ConfigError(f"these are {own_model} weights for {own_data or 'an image folder'} by the file's own "
                          f"description, not {model} for {data_spec.name}: convert would relabel them (convzoo files "
                          "need no convert; to train from them on other data: train --restore)", weights)


def result_line(result: dict) -> str:
    """The one line the CLI prints."""
    return (f"wrote {result['output']}: {result['model']} for {result['dataset']} ({result['num_classes']} classes, "
            f"{result['tensors']} tensors from {result['source']})")

