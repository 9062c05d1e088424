"""Accuracy, per-class accuracy and the confusion matrix of a model on a data split, optionally with
test-time augmentation (TTA)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import TTA_CHOICES
from ..data.tensors import InputSpec, Split, batches, to_model_input
from ..errors import printable
from . import distributed


@dataclass
class EvalResult:
    accuracy: float
    loss: float
    confusion: torch.Tensor  # (classes, classes) counts, rows = true class
    classes: tuple[str, ...]

    @property
    def per_class(self) -> list[float | None]:
        """Each class's accuracy; None for a class with no test images (0 of 0 is no score, not 0.0)."""
        pairs = zip(self.confusion.diag().tolist(), self.confusion.sum(1).tolist())
        return [correct / total if total else None for correct, total in pairs]

    def table(self) -> str:
        from tqdm.utils import disp_len  # columns on a terminal: a CJK class name takes two per character

        names = [printable(c) for c in self.classes]  # a newline or tab in a folder name would split a row
        width = max(12, max(map(disp_len, names)) + 2)
        lines = [f"{'class':<{width}}{'accuracy':>10}{'correct':>10}{'total':>8}"]
        for i, (name, acc) in enumerate(zip(names, self.per_class)):
            pad = " " * (width - disp_len(name))
            score = "n/a" if acc is None else f"{acc:.4f}"
            lines.append(f"{name}{pad}{score:>10}{int(self.confusion[i, i]):>10}{int(self.confusion[i].sum()):>8}")
        return "\n".join(lines)


@torch.inference_mode()
def evaluate(model, split: Split, spec: InputSpec, *, batch_size: int = 1000, amp_dtype=None,
             tta: str = "none", channels_last: bool = False) -> EvalResult:
    """Evaluate on `split`; under torch.distributed each rank scores a shard and counts are summed.
    tta: one of config.TTA_CHOICES (see tta_logits)."""
    model.eval()
    k = len(split.classes)
    device = split.labels.device
    confusion = torch.zeros(k * k, dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    rank, world = distributed.rank(), distributed.world_size()
    shard = split.subset(slice(rank, None, world)) if world > 1 else split
    for _, images, labels in batches(shard, batch_size, shuffle=False):
        x = to_model_input(images, spec)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits = tta_logits(model, x, tta).float()
        loss_sum += torch.nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        confusion += torch.bincount(labels * k + logits.argmax(1), minlength=k * k)
    distributed.all_reduce_sum(confusion)
    distributed.all_reduce_sum(loss_sum)
    confusion = confusion.view(k, k).cpu()
    total = int(confusion.sum())
    return EvalResult(float(confusion.diag().sum()) / max(total, 1), float(loss_sum) / max(total, 1), confusion,
                      tuple(split.classes))


def tta_logits(model, x: torch.Tensor, tta: str) -> torch.Tensor:
    """The model's logits for x, with test-time augmentation. flip: averaged with those of the mirror
    images; shift: averaged with the mean of those of the images shifted one pixel up-left and
    down-right (reflect-padded), for data without mirror symmetry (digits); flip-shift: both, with the
    mirrors inside each view (airbench's TTA level 2). Deterministic: no random draws."""
    if tta not in TTA_CHOICES:
        raise ValueError(f"unknown TTA {tta!r}")
    view = (lambda v: (model(v) + model(v.flip(-1))) / 2) if "flip" in tta else model
    if "shift" not in tta:
        return view(x)
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    return (view(x) + (view(padded[..., :h, :w]) + view(padded[..., 2:, 2:])) / 2) / 2


def evaluate_checkpoint(path, *, dataset: str | None = None, data_path=None, device: str = "auto",
                        batch_size: int = 1000, tta: str | None = None, limit: int = 0,
                        ckpt: dict | None = None) -> EvalResult:
    """Evaluate a convzoo checkpoint on its data set's test split (or `dataset`'s, same classes), or
    its first `limit` images; tta None: the TTA the model was trained and scored with (its config's `tta`).
    `ckpt`: the file's contents when the caller has loaded them already (read once, not twice)."""
    from ..data.tensors import load_model_data
    from .checkpoint import load_checkpoint, model_from_checkpoint
    from .runtime import resolve_device

    ckpt = ckpt if ckpt is not None else load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path)
    dev = resolve_device(device)
    _, test = load_model_data(ckpt, path, command="eval", dataset=dataset, data_path=data_path, test_only=True)
    test = test.subset(slice(0, limit or None))
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else {}
    tta = tta or (config.get("tta") if config.get("tta") in TTA_CHOICES else "none")
    return evaluate(model.to(dev), test.to(dev), InputSpec.from_dict(ckpt["input"]), batch_size=batch_size, tta=tta)

