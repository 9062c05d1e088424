"""Keras-style model.summary(): each layer's output shape, parameters and multiply-accumulates."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class LayerRow:
    name: str
    kind: str
    output_shape: tuple
    params: int
    macs: int


def summarize(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerRow]:
    """Run one zero batch of `input_shape` (C, H, W) through `model`, recording every leaf layer."""
    rows: list[LayerRow] = []
    hooks = []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_hook(_recorder(name, module, rows)))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, *input_shape))
    finally:
        for h in hooks:
            h.remove()
    return rows


def format_summary(model_name: str, rows: list[LayerRow], model: nn.Module) -> str:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [f'Model: "{model_name}"', "=" * 78,
             f"{'Layer (type)':<34}{'Output Shape':<22}{'Param #':>10}{'MACs':>12}", "=" * 78]
    for r in rows:
        shape = "(None, " + ", ".join(str(d) for d in r.output_shape[1:]) + ")"
        lines.append(f"{r.name + ' (' + r.kind + ')':<34}{shape:<22}{r.params:>10,}{r.macs:>12,}")
    lines += ["=" * 78, f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}", f"MACs per image: {sum(r.macs for r in rows):,}", "=" * 78]
    return "\n".join(lines)


def _recorder(name: str, module: nn.Module, rows: list[LayerRow]):
    def hook(mod, inputs, output):
        params = sum(p.numel() for p in mod.parameters(recurse=False))
        rows.append(LayerRow(name, type(mod).__name__, tuple(output.shape), params, _macs(mod, inputs[0], output)))

    return hook


def _macs(module: nn.Module, x: torch.Tensor, out: torch.Tensor) -> int:
    if isinstance(module, nn.Conv2d) or hasattr(module, "kernel_size") and hasattr(module, "out_channels"):
        # weights per output channel (a partially connected conv has fewer than in_channels * k * k)
        return out.numel() * module.weight.numel() // module.out_channels
    if isinstance(module, nn.Linear):
        return out.numel() * module.in_features
    weight = getattr(module, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2 and out.dim() == 2:  # e.g. RBF centres
        return out.numel() * weight.shape[1]
    if isinstance(getattr(module, "centres", None), torch.Tensor):
        return out.numel() * module.centres.shape[1]
    return 0
