"""Quantization-aware training with torchao's PT2E flow (never the deprecated torch.ao.quantization).

torch.export -> prepare_qat_pt2e (X86 quantizer: per-channel symmetric int8 weights, uint8
activations, conv-BN folded) -> fine-tune with fake quantization -> convert_pt2e, the PyTorch-side
int8 reference. The fine-tuned float weights are what the ONNX int8 graph is built from.
"""

from __future__ import annotations

import contextlib
import io
import logging

import torch
from torch import nn

from ..data.tensors import InputSpec, Split, batches, step_generator, to_model_input
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
    return dict(prepare=prepare_qat_pt2e, convert=convert_pt2e, train_mode=move_exported_model_to_train,
                eval_mode=move_exported_model_to_eval,
                quantizer=lambda: X86InductorQuantizer().set_global(get_default_x86_inductor_quantization_config(is_qat=True)))


def qat_finetune(model: nn.Module, train: Split, spec: InputSpec, *, epochs: int = 1, batch_size: int = 64,
                 lr: float = 0.001, seed: int = 0, augment: str = "none", shift_pad: int = 2, log=print):
    """Fine-tune `model` with fake quantization; returns (float state_dict, converted int8 GraphModule)."""
    pt2e = torchao_pt2e()
    example = to_model_input(train.images[:batch_size], spec)
    exported = torch.export.export(model.eval(), (example,),
                                   dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}).module()
    prepared = pt2e["prepare"](exported, pt2e["quantizer"]())
    optimizer = torch.optim.SGD(prepared.parameters(), lr=lr, momentum=0.9)
    steps = len(train) // batch_size
    total = max(1, epochs * steps)
    for epoch in range(epochs):
        pt2e["train_mode"](prepared)
        loss_sum, seen = 0.0, 0
        for step, images, labels in batches(train, batch_size, shuffle=True, seed=seed, epoch=epoch, drop_last=True):
            set_lr(optimizer, cosine(lr, 0.0, (epoch * steps + step) / total))  # cosine decay over the fine-tune
            gen = step_generator(seed, epoch, step, images.device) if augment != "none" else None
            x = to_model_input(images, spec, augment=augment, generator=gen, shift_pad=shift_pad)
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
    converted = pt2e["convert"](prepared)
    pt2e["eval_mode"](converted)
    return float_state, converted
