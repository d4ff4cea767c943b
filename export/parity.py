"""Parity of an exported artefact with its PyTorch network: the same top-K lists and scores. Needs torch.

Both sides get the same numpy graphs (:mod:`model.graphs`); PyTorch runs in float32 eager mode (no
autocast), onnxruntime runs through :class:`export.scorer.Scorer`, so the check covers the runtime's own
input handling too (including the all-padding history it feeds when a user has none).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from export.artefact import MAX_SCORE_DIFF, MIN_IDENTICAL, MIN_SAME_SET
from export.scorer import Scorer
from model.data import Cases
from model.graphs import SessionGraphs, build_history_graphs, build_session_graphs
from model.network import frozen_items


class ParityError(RuntimeError):
    """The ONNX graph and the PyTorch network disagree beyond the thresholds."""


@dataclass
class ParityReport:
    """Parity figures over ``cases`` prefixes.

    Attributes:
        identical: fraction of cases whose top-K lists (items and order) are identical.
        same_set: fraction whose top-K item sets are identical (order aside: swaps of near-ties).
        max_score_diff: max |onnx - torch| over the K sorted scores of every case.
        max_item_score_diff: max |onnx score of item i - torch log-probability of item i| over returned items.
        with_history: cases scored with a (borrowed) history graph; the rest had none.
        provider: the onnxruntime execution provider that scored (the PyTorch side is always CPU float32).
        fp16: whether the scorer ran its item product in half precision.
        int8: whether the scorer ran its item product in int8 (``export.precision``).
    """

    source: str
    cases: int
    k: int
    identical: float
    same_set: float
    max_score_diff: float
    max_item_score_diff: float
    with_history: int
    torch_seconds: float
    onnx_seconds: float
    min_identical: float = MIN_IDENTICAL
    max_allowed_diff: float = MAX_SCORE_DIFF
    provider: str = "CPUExecutionProvider"
    fp16: bool = False
    min_same_set: float = MIN_SAME_SET
    int8: bool = False

    @property
    def passed(self) -> bool:
        return (self.identical >= self.min_identical and self.same_set >= self.min_same_set
                and self.max_score_diff <= self.max_allowed_diff)

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def summary(self) -> str:
        verdict = "PASSED" if self.passed else "FAILED"
        runtime = self.provider.removesuffix("ExecutionProvider") + (" fp16" if self.fp16 else "") + (
            " int8" if self.int8 else "")
        return (f"parity {verdict} ({runtime}) on {self.cases} {self.source} cases: top-{self.k} identical "
                f"{100 * self.identical:.3f}% (need >= {100 * self.min_identical:.1f}%), same set "
                f"{100 * self.same_set:.3f}% (need >= {100 * self.min_same_set:.1f}%), max |score diff| "
                f"{self.max_score_diff:.2e} (need <= "
                f"{self.max_allowed_diff:.0e}), max |item score diff| {self.max_item_score_diff:.2e}; "
                f"{self.with_history} cases with history; torch {self.torch_seconds:.1f}s, "
                f"onnxruntime {self.onnx_seconds:.1f}s")


def _tensors(graphs: SessionGraphs, history: SessionGraphs | None) -> tuple[torch.Tensor, ...]:
    arrays = graphs.arrays() + ((history.items, history.adj) if history is not None else ())
    return tuple(torch.from_numpy(np.ascontiguousarray(a)) for a in arrays)


def torch_log_probs(net: nn.Module, graphs: SessionGraphs, history: SessionGraphs | None = None) -> np.ndarray:
    """float32 eager log-probabilities ``[B, n_items + 1]`` (no autocast: the reference for parity)."""
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        return net(*_tensors(graphs, history)).float().numpy()


def sample_cases(cases: Cases, n: int | None, seed: int = 0) -> Cases:
    """``n`` cases drawn without replacement (all of them when ``n`` is None, 0 or >= len)."""
    if not n or n >= len(cases):
        return cases
    return cases.subset(np.sort(np.random.default_rng(seed).choice(len(cases), n, replace=False)))


def check_parity(net: nn.Module, scorer: Scorer, cases: Cases, *, source: str = "test", batch_size: int = 256,
                 max_len: int = 50, binary: bool = False, min_identical: float = MIN_IDENTICAL,
                 max_diff: float = MAX_SCORE_DIFF, min_same_set: float = MIN_SAME_SET, seed: int = 0) -> ParityReport:
    """Score every case prefix with both ``net`` (PyTorch) and ``scorer`` (onnxruntime) and compare top-K.

    ``scorer`` should be built with ``history=True`` so the history inputs are compared as well.

    Batches are random mixes of lengths, like the worker's micro-batches (so the scorer's size buckets and
    the padding invariance are exercised); when the model uses history, every other batch borrows the
    previous batch's prefixes as its users' history so the history path is compared too.
    """
    net = net.cpu().eval()
    order = np.random.default_rng(seed).permutation(len(cases))
    k = scorer.k
    identical = same_set = with_history = 0
    max_diff_seen = max_item_diff = 0.0
    t_torch = t_onnx = 0.0
    previous: np.ndarray | None = None
    with frozen_items(net):
        for i, start in enumerate(range(0, len(order), batch_size)):
            prefixes = cases.padded(order[start : start + batch_size], max_len)
            graphs = build_session_graphs(prefixes, binary=binary)
            history = None
            if scorer.uses_history and previous is not None and i % 2:
                borrowed = [[row[row > 0].tolist()] for row in previous[np.arange(len(prefixes)) % len(previous)]]
                history = build_history_graphs(borrowed, scorer.card["graphs"]["history_max_len"], binary=binary)
                with_history += len(prefixes)
            previous = prefixes
            t0 = time.perf_counter()
            logp = torch_log_probs(net, graphs, history)
            ref_scores, ref_items = (t.numpy() for t in torch.topk(torch.from_numpy(logp), k, dim=-1))
            t1 = time.perf_counter()
            items, scores = scorer.recommend(graphs, history)
            t_onnx += time.perf_counter() - t1
            t_torch += t1 - t0
            identical += int((items == ref_items).all(1).sum())
            same_set += int((np.sort(items, 1) == np.sort(ref_items, 1)).all(1).sum())
            max_diff_seen = max(max_diff_seen, float(np.abs(scores - ref_scores).max()))
            max_item_diff = max(max_item_diff, float(np.abs(scores - np.take_along_axis(logp, items, 1)).max()))
    n = max(len(cases), 1)
    return ParityReport(source=source, cases=len(cases), k=k, identical=identical / n, same_set=same_set / n,
                        max_score_diff=max_diff_seen, max_item_score_diff=max_item_diff,
                        with_history=with_history, torch_seconds=t_torch, onnx_seconds=t_onnx,
                        min_identical=min_identical, max_allowed_diff=max_diff, provider=scorer.providers[0],
                        fp16=scorer.fp16, min_same_set=min_same_set, int8=scorer.int8)
