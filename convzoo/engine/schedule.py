"""Learning-rate schedules as pure functions of the global step, so a resumed run (and the QAT
fine-tune) gets exactly the rate an uninterrupted one would."""

from __future__ import annotations

import math


def cosine(high: float, low: float, t: float) -> float:
    """From `high` at t=0 down to `low` at t=1 along half a cosine."""
    return low + (high - low) * (1 + math.cos(math.pi * min(max(t, 0.0), 1.0))) / 2


def lr_at(step: int, total: int, steps_per_epoch: int, cfg) -> float:
    """The learning rate at a global step: linear warm-up, then cfg.schedule (constant | step | cosine
    | onecycle: a cosine rise from lr/25 over 30% of the run, then a cosine fall to ~0 | triangle:
    airbench's linear rise from 0.2 lr to lr over 23% of the run, then a linear fall to 0.07 lr)."""
    if cfg.schedule == "triangle":
        peak = max(1, int(0.23 * total))
        if step < peak:
            return cfg.lr * (0.2 + 0.8 * step / peak)
        return cfg.lr * (1 - 0.93 * min(1.0, (step - peak) / max(1, total - peak)))
    warm = int(cfg.warmup_epochs * steps_per_epoch)
    if cfg.schedule == "onecycle":
        up = warm or max(1, int(0.3 * total))
        if step < up:
            return cosine(cfg.lr / 25, cfg.lr, step / up)
        return cosine(cfg.lr, cfg.lr / 25 / 1e4, (step - up) / max(1, total - up))
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "constant":
        return cfg.lr
    if cfg.schedule == "step":
        return cfg.lr * cfg.gamma ** ((step // steps_per_epoch) // cfg.step_size)
    return cosine(cfg.lr, 0.0, (step - warm) / max(1, total - warm))


def set_lr(optimizer, lr: float) -> float:
    """Every parameter group gets `lr` times its own "lr_scale" (1 unless a group declares one)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    return lr
