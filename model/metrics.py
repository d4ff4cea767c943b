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


# Link prediction (GATNE protocol, paper Tables 3-5): binary classification of held-out edges against
# sampled non-edges, per edge type, then the mean over edge types; and filtered MRR of the true tail.


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` in ascending order, tied values sharing the mean of their ranks.

    float64 [n] for any 1-D input: ``average_ranks([3, 1, 3]) == [2.5, 1, 2.5]``.
    """
    values = np.asarray(values)
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    first = np.cumsum(counts) - counts + 1
    return (first + (counts - 1) / 2.0)[inverse].astype(np.float64)


def _check_binary(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"labels {labels.shape} and scores {scores.shape} do not match")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    if labels.sum() == 0 or labels.sum() == labels.size:
        raise ValueError("need at least one positive and one negative")
    return labels, scores


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U / (n_pos n_neg)); a tied positive-negative pair counts 1/2.

    The tie rule is the average rank of tied scores, the same value sklearn's ``roc_auc_score`` gives
    (its trapezoids over tied thresholds are exactly the half-credit), so constant scores read 0.5.
    """
    labels, scores = _check_binary(labels, scores)
    ranks = average_ranks(scores)
    n_pos = labels.sum()
    n_neg = labels.size - n_pos
    return float((ranks[labels == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def precision_recall_points(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at each distinct score threshold, highest threshold first, after ``(r=0, p=1)``.

    The curve of sklearn's ``precision_recall_curve`` (which GATNE's evaluation uses): one point per
    distinct score ``s`` predicting ``score >= s`` positive, plus the start point recall 0, precision 1.

    Returns:
        precision, recall: float64 [D + 1] for D distinct scores, recall non-decreasing.
    """
    labels, scores = _check_binary(labels, scores)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_value = np.r_[np.flatnonzero(np.diff(scores)), labels.size - 1]
    tps = np.cumsum(labels)[last_of_value]
    predicted = last_of_value + 1
    precision = np.r_[1.0, tps / predicted]
    recall = np.r_[0.0, tps / labels.sum()]
    return precision, recall


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve by the trapezoid rule over :func:`precision_recall_points`.

    Trapezoid, not average precision, because that is what GATNE and the papers that copy its table report
    (``auc(*precision_recall_curve(...)[1::-1])`` in sklearn): with it our numbers are comparable to
    theirs. Linear interpolation between PR points is optimistic (it passes through the start point (0, 1));
    :func:`average_precision` is the step-wise, conservative estimator and is reported beside it.
    """
    precision, recall = precision_recall_points(labels, scores)
    return float(np.sum(np.diff(recall) * (precision[1:] + precision[:-1]) / 2.0))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision ``sum_k (R_k - R_{k-1}) P_k`` over distinct thresholds (sklearn's estimator)."""
    precision, recall = precision_recall_points(labels, scores)
    return float(np.sum(np.diff(recall) * precision[1:]))


def f1_at_true_count(labels: np.ndarray, scores: np.ndarray) -> float:
    """F1 with GATNE's threshold: the ``n_pos``-th highest score, every score >= it predicted positive.

    So (ties aside) exactly as many pairs are predicted to be edges as there are true edges, and precision
    equals recall; ties at the threshold all count as predicted positives, as in GATNE's code.
    """
    labels, scores = _check_binary(labels, scores)
    n_pos = int(labels.sum())
    threshold = np.sort(scores)[-n_pos]
    predicted = scores >= threshold
    tp = float((predicted & (labels == 1)).sum())
    return 2.0 * tp / (predicted.sum() + n_pos)


def link_prediction_metrics(edge_types: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> dict[str, dict]:
    """ROC-AUC, PR-AUC, average precision and F1 (percent) per edge type and their mean over edge types.

    GATNE reports the unweighted mean over edge types, so a small edge type counts as much as a large one.

    Args:
        edge_types: [n] edge type of each scored pair (any hashable values).
        labels: int [n] 1 = true edge, 0 = sampled non-edge.
        scores: float [n] higher = more likely an edge.

    Returns:
        ``{"per_type": {str(type): {metric: value}}, "mean": {metric: value}}``.
    """
    edge_types = np.asarray(edge_types)
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    per_type: dict[str, dict[str, float]] = {}
    for t in np.unique(edge_types):
        m = edge_types == t
        y, s = labels[m], scores[m]
        per_type[str(t)] = {
            "ROC-AUC": 100.0 * roc_auc(y, s),
            "PR-AUC": 100.0 * pr_auc(y, s),
            "AP": 100.0 * average_precision(y, s),
            "F1": 100.0 * f1_at_true_count(y, s),
            "pairs": float(m.sum()),
        }
    names = ("ROC-AUC", "PR-AUC", "AP", "F1")
    mean = {k: float(np.mean([v[k] for v in per_type.values()])) for k in names}
    return {"per_type": per_type, "mean": mean}


def filtered_ranks(scores: np.ndarray, true_index: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Filtered 1-based rank of each true tail among its candidate tails; ties count against the truth.

    Args:
        scores: float [B, C] scores of the C candidate tails for each query ``(head, relation, ?)``.
        true_index: int [B] column of the true tail.
        known: bool [B, C] candidates that are other known true tails of the query (train, valid or test
            edges); they are removed ("filtered") so another true edge ranked above cannot cost a place.

    Returns:
        int64 [B]: ``1 + #{c != true, not known : scores[b, c] >= scores[b, true]}``.
    """
    scores = np.asarray(scores, dtype=np.float64)
    true_index = np.asarray(true_index, dtype=np.int64)
    rows = np.arange(scores.shape[0])
    true_score = scores[rows, true_index]
    beat = (scores >= true_score[:, None]) & ~np.asarray(known, dtype=bool)
    beat[rows, true_index] = False
    return (1 + beat.sum(1)).astype(np.int64)


def mean_reciprocal_rank(ranks: np.ndarray) -> float:
    """MRR in percent over all ranks (no cut-off)."""
    ranks = np.asarray(ranks, dtype=np.float64)
    return float(100.0 * np.mean(1.0 / ranks)) if ranks.size else 0.0
