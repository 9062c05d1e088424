"""Quantization-aware training with torchao's PT2E flow (never the deprecated torch.ao.quantization).

torch.export -> prepare_qat_pt2e (X86 quantizer: per-channel symmetric int8 weights held to 7 bits,
uint8 activations, conv-BN folded) -> fine-tune with fake quantization -> convert_pt2e, the PyTorch-side
int8 reference. The ONNX int8 graph is built from the fine-tuned float weights and the scales and
zero-points the fake-quant observers learned (learned_qparams), so it quantizes exactly as QAT did.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import warnings

import torch
from torch import nn

from ..data.tensors import InputSpec, Split, alternating_flips, batches, step_generator, to_model_input
from ..engine.schedule import cosine, set_lr


def torchao_pt2e():
    """Import torchao's PT2E API quietly (it logs about CUDA-only kernels it cannot load on CPU)."""
    for name in ("torchao", "torch.utils._pytree"):  # torchao's import logs notes about CUDA kernels and enums
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        from torchao.quantization.pt2e import move_exported_model_to_eval, move_exported_model_to_train
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
        from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
            X86InductorQuantizer, get_default_x86_inductor_quantization_config)

    def quantizer():
        config = get_default_x86_inductor_quantization_config(is_qat=True)
        weight = dataclasses.replace(config.weight, quant_min=WEIGHT_RANGE[0], quant_max=WEIGHT_RANGE[1])
        return X86InductorQuantizer().set_global(dataclasses.replace(config, weight=weight))

    def convert(prepared):
        with folds_for_present_convs():
            return convert_pt2e(prepared)

    return dict(prepare=prepare_qat_pt2e, convert=convert, train_mode=move_exported_model_to_train,
                eval_mode=move_exported_model_to_eval, quantizer=quantizer)


@contextlib.contextmanager
def folds_for_present_convs():
    """convert_pt2e folds BatchNorm into conv1d, conv2d, conv_transpose1d and conv_transpose2d by matching
    24 pattern graphs per kind, each built by torch.export; kinds absent from the graph are skipped here
    (airbench's convert: 21.6 s -> 6.0 s, the same converted model). A torchao without that private
    helper is left as it is (only slower)."""
    from torchao.quantization.pt2e import qat_utils

    fold = getattr(qat_utils, "_fold_conv_bn_qat_helper", None)
    if fold is None:
        yield
        return

    def only_present(m, conv_fn, *args, **kwargs):
        kind = conv_fn.__name__ + "."  # F.conv2d -> aten's conv2d.default, not conv_transpose2d.input
        if any(n.op == "call_function" and getattr(n.target, "__name__", "").startswith(kind) for n in m.graph.nodes):
            return fold(m, conv_fn, *args, **kwargs)
        return m

    qat_utils._fold_conv_bn_qat_helper = only_present
    try:
        yield
    finally:
        qat_utils._fold_conv_bn_qat_helper = fold


# 7-bit weights: onnxruntime's int8 kernels on AVX2 CPUs without VNNI sum pairs of uint8 x int8 products in
# int16, saturating past 32767; with |w| <= 64, 255 * 64 * 2 never does, so the int8 ONNX file computes what
# QAT trained on every CPU (LeNet-5 here: full 8-bit weights agreed with PyTorch's int8 on 99.67% of the
# MNIST test images and lost 0.13 points in onnxruntime; 7-bit: 99.98%, same accuracy as PyTorch's int8).
WEIGHT_RANGE = (-64, 63)


def qat_finetune(model: nn.Module, train: Split, spec: InputSpec, *, epochs: int = 1, batch_size: int = 64,
                 lr: float = 0.001, seed: int = 0, augment: str = "none", shift_pad: int = 2, log=print):
    """Fine-tune `model` with fake quantization; returns (float state_dict, converted int8 GraphModule,
    learned_qparams of the fine-tuned observers)."""
    pt2e = torchao_pt2e()
    example = to_model_input(train.images[:batch_size], spec)
    exported = torch.export.export(model.eval(), (example,),
                                   dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}).module()
    with warnings.catch_warnings():
        # A max-pool after a float op (airbench's BatchNorm/GELU) stays float: torchao says so in a 1,000-character
        # warning per pool, which is the intended graph here, not news for the user.
        warnings.filterwarnings("ignore", message="The input of maxpool2d is not quantized", category=UserWarning)
        prepared = pt2e["prepare"](exported, pt2e["quantizer"]())
    optimizer = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9)
    steps = len(train) // batch_size
    total = max(1, epochs * steps)
    for epoch in range(epochs):
        pt2e["train_mode"](prepared)
        loss_sum, seen = 0.0, 0
        for step, images, labels, index in batches(train, batch_size, shuffle=True, seed=seed, epoch=epoch,
                                                   drop_last=True, with_index=True):
            set_lr(optimizer, cosine(lr, 0.0, (epoch * steps + step) / total))  # cosine decay over the fine-tune
            gen = step_generator(seed, epoch, step, images.device) if augment != "none" else None
            flips = alternating_flips(index, seed, epoch, len(train)) if "altflip" in augment else None
            x = to_model_input(images, spec, augment=augment, generator=gen, shift_pad=shift_pad, flips=flips)
            loss = nn.functional.cross_entropy(prepared(x), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum, seen = loss_sum + loss.item() * len(labels), seen + len(labels)
        log(f"QAT epoch: [{epoch + 1:2d}/{epochs:2d}], avg loss: {loss_sum / max(seen, 1):.4f}")
    pt2e["eval_mode"](prepared)
    # The prepared graph keeps the float tensors under their names (BatchNorm's num_batches_tracked
    # aside, which the QAT graph drops and the model keeps).
    tuned = prepared.state_dict()
    float_state = {k: tuned.get(k, v).detach().clone() for k, v in model.state_dict().items()}
    learned = learned_qparams(prepared)  # before convert_pt2e, which replaces the observers
    converted = pt2e["convert"](prepared)
    pt2e["eval_mode"](converted)
    return float_state, converted, learned


LAYER_OPS = {torch.ops.aten.conv2d.default: "Conv", torch.ops.aten.linear.default: "Gemm"}


def learned_qparams(prepared: torch.fx.GraphModule) -> list[dict]:
    """Each Conv/Linear of the QAT graph in execution order: the qparams of its input activation and of its
    weight (per output channel; for a conv-BN pair the folded weight, which is what QAT fake-quantizes).
    Plain JSON (it travels in qat.pt) with the ONNX op each layer becomes, to check the match on export."""
    layers = []
    for node in prepared.graph.nodes:
        if node.op == "call_function" and node.target in LAYER_OPS:
            activation, weight = (fake_quantizer(prepared, arg) for arg in node.args[:2])
            layers.append({"op": LAYER_OPS[node.target], "input": qparams(activation),
                           "weight": {**qparams(weight), "axis": int(weight.ch_axis)}})
    return layers


def fake_quantizer(prepared: torch.fx.GraphModule, arg) -> nn.Module:
    """The fake-quantize module computing `arg` (get_submodule: a shared one, e.g. after a max-pool, has two names)."""
    module = prepared.get_submodule(arg.target) if isinstance(arg, torch.fx.Node) and arg.op == "call_module" else None
    if not hasattr(module, "calculate_qparams"):
        raise RuntimeError(f"QAT graph: {arg} feeds a Conv/Linear without a fake-quantizer")
    return module


def qparams(fake_quant: nn.Module) -> dict:
    """What convert_pt2e bakes in: the observer's calculate_qparams() (a list per channel, else one number)."""
    scale, zero_point = fake_quant.calculate_qparams()
    limits = {"range": [int(fake_quant.quant_min), int(fake_quant.quant_max)]}
    if scale.numel() == 1 and fake_quant.qscheme in (torch.per_tensor_affine, torch.per_tensor_symmetric):
        return {"scale": float(scale.item()), "zero_point": int(zero_point.item()), **limits}
    return {"scale": scale.flatten().tolist(), "zero_point": zero_point.flatten().int().tolist(), **limits}
