"""airbench's Lookahead-EMA: an exponential moving average of the weights that the model is pulled
back to every few steps, with a decay that grows (cubically) over the run, so late, noisy steps
average out; at the last step the model becomes the average."""

from __future__ import annotations

import torch

from ..errors import CheckpointError

EVERY = 5  # steps between pulls
DECAY = 0.95 ** EVERY  # the decay at the end of the run


class Lookahead:
    def __init__(self, model: torch.nn.Module):
        self.average = {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def after_step(self, model: torch.nn.Module, global_step: int, total_steps: int) -> None:
        """Call after optimizer step `global_step` (1-based) of `total_steps`."""
        last = global_step >= total_steps
        if global_step % EVERY and not last:
            return
        decay = 1.0 if last else DECAY * (global_step / total_steps) ** 3
        for name, value in model.state_dict().items():
            if name in self.average:
                self.average[name].lerp_(value, 1 - decay)
                value.copy_(self.average[name])

    def state_dict(self) -> dict:
        return self.average

    def load_state_dict(self, state, path) -> None:
        """A resumed run's average; it must hold exactly the model's float tensors, same shapes."""
        ok = isinstance(state, dict) and state.keys() == self.average.keys() and all(
            isinstance(v, torch.Tensor) and v.shape == self.average[k].shape and v.is_floating_point()
            for k, v in state.items())
        if not ok:
            raise CheckpointError("cannot resume: the lookahead average does not match the model", path)
        for name, value in state.items():
            self.average[name].copy_(value)
