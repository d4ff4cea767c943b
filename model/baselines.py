"""Baselines without training, in numpy: POP and session-kNN (SKNN). Same cases, same metrics module.

(The trained baselines, SR-GNN and GRU4Rec, are ``igrec train --arch srgnn|gru4rec``.)
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from model.data import Cases, SessionSplit, item_counts
from model.metrics import RankAccumulator


def _csr(sessions) -> tuple[np.ndarray, np.ndarray]:
    """(indptr, indices) of each session's unique items."""
    uniq = [np.unique(np.asarray(s, dtype=np.int64)) for s in sessions]
    sizes = np.array([u.size for u in uniq], dtype=np.int64)
    indptr = np.concatenate([[0], np.cumsum(sizes)])
    indices = np.concatenate(uniq) if uniq else np.zeros(0, np.int64)
    return indptr, indices


def _gather_ranges(indptr: np.ndarray, indices: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated ``indices[indptr[r]:indptr[r+1]]`` for ``rows`` and the row position of each entry."""
    starts, ends = indptr[rows], indptr[rows + 1]
    lengths = ends - starts
    owner = np.repeat(np.arange(rows.size), lengths)
    offsets = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return indices[np.repeat(starts, lengths) + offsets], owner


class SessionKNN:
    """SKNN (Jannach & Ludewig 2017): cosine similarity of item sets between the current session and the
    ``sample`` most recent training sessions sharing an item with it; the ``k`` most similar vote for
    their items with their similarity."""

    def __init__(self, sessions, n_items: int, k: int = 100, sample: int = 1000):
        self.n_items, self.k, self.sample = n_items, k, sample
        self.indptr, self.indices = _csr(sessions)
        self.size = np.diff(self.indptr).astype(np.float64)
        owner = np.repeat(np.arange(len(sessions)), np.diff(self.indptr))
        order = np.lexsort((owner, self.indices))
        self.item_ptr = np.concatenate([[0], np.cumsum(np.bincount(self.indices, minlength=n_items + 1))])
        self.item_sessions = owner[order]

    def scores(self, prefix: np.ndarray, out: np.ndarray) -> None:
        """Write the scores of items ``0..n_items`` for one prefix into ``out`` (zeroed first)."""
        out[:] = 0.0
        items = np.unique(prefix)
        cand, _ = _gather_ranges(self.item_ptr, self.item_sessions, items)
        if cand.size == 0:
            return
        sess, overlap = np.unique(cand, return_counts=True)
        if sess.size > self.sample:
            sess, overlap = sess[-self.sample :], overlap[-self.sample :]
        sim = overlap / np.sqrt(items.size * self.size[sess])
        if sess.size > self.k:
            top = np.argpartition(-sim, self.k - 1)[: self.k]
            sess, sim = sess[top], sim[top]
        neighbour_items, owner = _gather_ranges(self.indptr, self.indices, sess)
        np.add.at(out, neighbour_items, sim[owner])


def evaluate_baseline(name: str, split: SessionSplit, k: int = 100, sample: int = 1000,
                      batch: int = 256) -> dict[str, float]:
    """HR/MRR/NDCG@{10,20} of ``pop`` or ``sknn`` on ``split.test``."""
    cases: Cases = split.test
    acc = RankAccumulator()
    width = split.n_items + 1
    if name == "pop":
        counts = item_counts(split.train, split.n_items).astype(np.float64)
        for i in range(0, len(cases), batch):
            target = cases.target[i : i + batch]
            acc.add(np.broadcast_to(counts, (target.size, width)), target)
        return acc.result()
    if name != "sknn":
        raise ValueError(f"unknown baseline {name!r}")
    knn = SessionKNN(split.train, split.n_items, k=k, sample=sample)
    buf = np.zeros((batch, width), dtype=np.float64)
    for i in tqdm(range(0, len(cases), batch), desc="sknn", mininterval=5.0):
        index = np.arange(i, min(i + batch, len(cases)))
        for row, c in enumerate(index):
            knn.scores(cases.flat[cases.start[c] : cases.start[c] + cases.length[c]], buf[row])
        acc.add(buf[: index.size], cases.target[index])
    return acc.result()
