"""Every registered model, the moment it is registered: forward, backward, its declared parameter
count and MACs, ONNX export with onnxruntime parity, and QAT preparation where it is quantizable."""

from __future__ import annotations

import pytest
import torch

from convzoo.models.registry import MODELS, create_model

MODEL_NAMES = sorted(MODELS)


def example(info, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, info.in_channels, info.input_size, info.input_size,
                       generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_and_declared_size(name):
    from convzoo.models.summary import summarize

    info = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=info.in_channels).train()
    logits = model(example(info))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    rows = summarize(model, (info.in_channels, info.input_size, info.input_size))
    assert sum(p.numel() for p in model.parameters()) == info.params
    assert sum(r.macs for r in rows) == info.macs
    assert info.fit in ("pad", "resize", "none") and info.description


@pytest.mark.slow
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_onnx_export_parity(name, tmp_path):
    from convzoo.deploy.export import parity, save_onnx, to_onnx

    info = MODELS[name]
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=info.in_channels).eval()
    x = example(info)
    save_onnx(to_onnx(model, x), tmp_path / "m.onnx")
    assert parity(model, tmp_path / "m.onnx", x.shape[1:], samples=example(info, 3)) <= 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in MODEL_NAMES if MODELS[n].quantizable])
def test_qat_prepare(name):
    from convzoo.quant.qat import torchao_pt2e

    info = MODELS[name]
    pt2e = torchao_pt2e()
    model = create_model(name, num_classes=10, in_channels=info.in_channels).eval()
    x = example(info, 4)
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1)}}).module()
    prepared = pt2e["prepare"](exported, pt2e["quantizer"]())
    fake_quant = [n for n, _ in prepared.named_modules() if "fake_quant" in type(_).__name__.lower()
                  or "observer" in type(_).__name__.lower()]
    assert fake_quant, "QAT preparation inserted no fake-quantizers"
    assert prepared(x).shape == (4, 10)
