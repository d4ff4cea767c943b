"""Next-item metrics (HR@K, MRR@K, NDCG@K) ranking all items; the only implementation igrec uses.

numpy only (importable without torch). Ties count against the target: its rank is 1 + the number of
other items scored at least as high, so a scorer with many equal scores cannot look good. Column 0 of a
score row is padding and is never a candidate.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

DEFAULT_KS = (10, 20)


def target_ranks(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based rank of each target.

    Args:
        scores: float [B, V] scores of items ``0..V-1`` (column 0 = padding, ignored).
        targets: int [B] target item ids in ``1..V-1``.

    Returns:
        int64 [B]: ``1 + #{j != target, j >= 1 : scores[b, j] >= scores[b, target]}``. A NaN target
        score ranks last.
    """
    scores = np.asarray(scores)
    targets = np.asarray(targets, dtype=np.int64)
    if scores.ndim != 2 or targets.shape != (scores.shape[0],):
        raise ValueError(f"scores {scores.shape} and targets {targets.shape} do not match")
    if (targets < 1).any() or (targets >= scores.shape[1]).any():
        raise ValueError("targets must be item ids in 1..V-1")
    target_score = scores[np.arange(scores.shape[0]), targets]
    at_least = (scores[:, 1:] >= target_score[:, None]).sum(1)
    ranks = at_least.astype(np.int64)
    nan = np.isnan(target_score)
    ranks[nan] = scores.shape[1] - 1
    return np.maximum(ranks, 1)


def metrics_from_ranks(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """``HR@K``, ``MRR@K``, ``NDCG@K`` in percent from 1-based ranks.

    The ranks are sorted first, so the result depends only on which ranks there are, not on their order:
    a stream evaluation that meets the cases in another order gives bit-identical numbers.
    """
    ranks = np.sort(np.asarray(ranks, dtype=np.float64))
    out: dict[str, float] = {}
    n = max(ranks.size, 1)
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = float(100.0 * hit.sum() / n)
        out[f"MRR@{k}"] = float(100.0 * np.where(hit, 1.0 / ranks, 0.0).sum() / n)
        out[f"NDCG@{k}"] = float(100.0 * np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).sum() / n)
    return out


@dataclass
class RankAccumulator:
    """Collects target ranks batch by batch; :meth:`result` gives the metrics over all cases."""

    ks: tuple[int, ...] = DEFAULT_KS
    _ranks: list[np.ndarray] = field(default_factory=list)

    def add(self, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Rank a batch (see :func:`target_ranks`) and remember the ranks; returns them."""
        ranks = target_ranks(scores, targets)
        self._ranks.append(ranks)
        return ranks

    def add_ranks(self, ranks: np.ndarray) -> None:
        self._ranks.append(np.asarray(ranks, dtype=np.int64))

    @property
    def ranks(self) -> np.ndarray:
        return np.concatenate(self._ranks) if self._ranks else np.zeros(0, np.int64)

    def result(self) -> dict[str, float]:
        out = metrics_from_ranks(self.ranks, self.ks)
        out["cases"] = float(self.ranks.size)
        return out


def ranks_from_top_k(top_items: np.ndarray, top_scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Pessimistic 1-based target ranks from top-K lists (what a served model emits), ``K + 1`` for a miss.

    The same tie rule as :func:`target_ranks`, within the list: ``1 + #{other listed items scored >= the
    target}``. So HR/MRR/NDCG@k for k <= K from these ranks equal :func:`target_ranks` on the full scores
    whenever the K-th listed score is strictly above the first unlisted one.

    Args:
        top_items: int [B, K] item ids, best first (0 = an empty slot).
        top_scores: float [B, K] their scores.
        targets: int [B] the true next items.
    """
    top_items = np.asarray(top_items, dtype=np.int64)
    top_scores = np.asarray(top_scores, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    k = top_items.shape[1]
    hit = (top_items == targets[:, None]) & (top_items > 0)
    found = hit.any(axis=1)
    target_score = np.where(found, np.where(hit, top_scores, -np.inf).max(axis=1), np.inf)
    others = (top_scores >= target_score[:, None]) & ~hit & (top_items > 0)
    return np.where(found, 1 + others.sum(axis=1), k + 1).astype(np.int64)
