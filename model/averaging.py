"""Exponential moving average of a network's weights (Polyak averaging), for evaluation and export.

The average follows the trained weights with ``shadow <- decay * shadow + (1 - decay) * weight`` after
every optimiser step, so it sits near the centre of the last ``~1 / (1 - decay)`` steps of the trajectory
instead of at its noisy end. The shadow starts at zero and is divided by ``1 - decay ** n`` after ``n``
updates (Adam's bias correction), so the average is an exact weighted mean of the weights seen, with no
pull towards the initial ones. Training itself never sees it: it is swapped in only to evaluate or to
save.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


class WeightAverage:
    """EMA of the trainable parameters of ``net``.

    Args:
        net: the network being trained (its trainable parameters are averaged; buffers are not).
        decay: weight of the old average per step, in (0, 1); ``1 / (1 - decay)`` steps is its horizon.
    """

    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self._params = [p for p in net.parameters() if p.requires_grad]
        self._shadow = [torch.zeros_like(p) for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimiser step)."""
        self.updates += 1
        torch._foreach_lerp_(self._shadow, [p.detach() for p in self._params], 1.0 - self.decay)

    def averaged(self) -> list[torch.Tensor]:
        """The bias-corrected average, one tensor per trainable parameter (the trained weights before the
        first update)."""
        if self.updates == 0:
            return [p.detach().clone() for p in self._params]
        return torch._foreach_div(self._shadow, 1.0 - self.decay ** self.updates)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the network holds the averaged weights; the trained ones come back after."""
        trained = [p.detach().clone() for p in self._params]
        self._copy(self._params, self.averaged())
        try:
            yield
        finally:
            self._copy(self._params, trained)

    @staticmethod
    @torch.no_grad()
    def _copy(targets: list[torch.Tensor], sources: list[torch.Tensor]) -> None:
        torch._foreach_copy_(targets, sources)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": [s.clone() for s in self._shadow]}

    def load_state_dict(self, state: dict) -> None:
        if len(state["shadow"]) != len(self._shadow):
            raise ValueError("EMA state does not match the network's parameters")
        self.decay, self.updates = state["decay"], state["updates"]
        self._copy(self._shadow, state["shadow"])
