"""Exponential moving average of a network's weights (Polyak averaging), for evaluation and export.

The average follows the trained weights with ``shadow <- d * shadow + (1 - d) * weight`` after every
optimiser step, so it sits near the centre of the recent trajectory instead of at its noisy end. The
per-step decay is ``d = min(decay, (1 + n) / (10 + n))`` after ``n`` updates (as TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``): the average spans about the last tenth of the steps so
far, growing with training until it reaches ``1 / (1 - decay)`` steps. (A fixed 2,000-step horizon with
bias correction was tried on Diginetica and lost to the trained weights in the first three epochs: it
lagged them while they still moved fast; docs/results.md, 2026-12-01.) Training itself never sees the
average: it is swapped in only to evaluate or to save.
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
        decay: the largest weight of the old average per step, in (0, 1); ``1 / (1 - decay)`` steps is the
            longest horizon (a 6-epoch Diginetica run, 8,274 steps, never reaches 0.999).
    """

    def __init__(self, net: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.updates = 0
        self._params = [p for p in net.parameters() if p.requires_grad]
        self._shadow = [p.detach().clone() for p in self._params]

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the current weights (call after each optimiser step)."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._shadow, [p.detach() for p in self._params], 1.0 - decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the network holds the averaged weights; the trained ones come back after."""
        trained = [p.detach().clone() for p in self._params]
        self._copy(self._params, self._shadow)
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
