"""Accuracy, per-class accuracy and the confusion matrix of a model on a data split."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.tensors import InputSpec, Split, batches, to_model_input
from . import distributed


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    confusion: torch.Tensor  # (classes, classes) counts, rows = true class
    classes: tuple[str, ...]

    @property
    def per_class(self) -> list[float]:
        totals = self.confusion.sum(1).clamp(min=1)
        return (self.confusion.diag() / totals).tolist()

    def table(self) -> str:
        width = max(12, max(len(c) for c in self.classes) + 2)
        lines = [f"{'class':<{width}}{'accuracy':>10}{'correct':>10}{'total':>8}"]
        for i, (name, acc) in enumerate(zip(self.classes, self.per_class)):
            lines.append(f"{name:<{width}}{acc:>10.4f}{int(self.confusion[i, i]):>10}{int(self.confusion[i].sum()):>8}")
        return "\n".join(lines)


@torch.inference_mode()
def evaluate(model, split: Split, spec: InputSpec, *, batch_size: int = 1000, amp_dtype=None) -> EvalResult:
    """Evaluate on `split`; under torch.distributed each rank scores a shard and counts are summed."""
    model.eval()
    k = len(split.classes)
    device = split.labels.device
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    rank, world = distributed.rank(), distributed.world_size()
    shard = split.subset(slice(rank, None, world)) if world > 1 else split
    for _, images, labels in batches(shard, batch_size, shuffle=False):
        x = to_model_input(images, spec)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = model(x)
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        confusion += torch.bincount(labels * k + logits.argmax(1), minlength=k * k)
    distributed.all_reduce_sum(confusion)
    distributed.all_reduce_sum(loss_sum)
    confusion = confusion.view(k, k).cpu()
    total = int(confusion.sum())
    return EvalResult(float(confusion.diag().sum()) / max(total, 1), float(loss_sum) / max(total, 1), confusion,
                      tuple(split.classes))


def evaluate_checkpoint(path, *, dataset: str | None = None, data_path=None, device: str = "auto",
                        batch_size: int = 1000) -> EvalResult:
    """Evaluate a convzoo checkpoint on its data set's test split (or `dataset`'s, same classes)."""
    from ..data.tensors import load_model_data
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .runtime import resolve_device

    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    dev = resolve_device(device)
    _, test = load_model_data(ckpt, path, dataset=dataset, data_path=data_path)
    return evaluate(model.to(dev), test.to(dev), InputSpec.from_dict(ckpt["input"]), batch_size=batch_size)
