"""Session-graph construction in numpy: the one implementation used by training and by the stream worker.

No torch here (the worker imports this on every event). Everything is vectorised over the batch: a batch
of 1..256 sessions costs a handful of numpy calls, with no Python loop over sessions or clicks.

Graph of a session (SR-GNN, Wu et al. 2019, Fig. 2): the unique items are the nodes; each consecutive
click pair ``(v_t, v_t+1)`` is a directed edge weighted by how often it occurs; the connection matrix is
``A = [A_in | A_out]`` where ``A_out[u, v] = c(u->v) / sum_w c(u->w)`` and
``A_in[v, u] = c(u->v) / sum_w c(w->v)`` (each block row-normalised by the node's out/in degree).

A 0 inside a sequence is a break (no edge across it); this is how several historical sessions of a user
share one graph (:func:`build_history_graphs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_PAD_KEY = np.iinfo(np.int64).max


@dataclass(frozen=True)
class SessionGraphs:
    """A padded batch of session graphs (B sessions, N nodes, L clicks).

    Attributes:
        items: int64 [B, N] item id of each node; 0 pads rows with fewer than N nodes. Nodes are the
            session's unique items in ascending id order.
        alias: int64 [B, L] node index of each click (0 where ``mask`` is 0).
        adj: float32 [B, N, 2N] ``[A_in | A_out]``, each block row-normalised.
        mask: float32 [B, L] 1 for a click, 0 for padding; clicks are left-aligned, so the last click
            of row b is at ``mask[b].sum() - 1``.
    """

    items: np.ndarray
    alias: np.ndarray
    adj: np.ndarray
    mask: np.ndarray

    @property
    def batch_size(self) -> int:
        return int(self.items.shape[0])

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(items, alias, adj, mask)``: the order the network's forward and the ONNX graph take them."""
        return self.items, self.alias, self.adj, self.mask


@dataclass(frozen=True)
class GlobalGraph:
    """Item-transition graph over all training sessions (GCE-GNN style), top-K neighbours per item.

    Attributes:
        neighbors: int64 [n_items + 1, K] neighbour item ids by decreasing weight, 0-padded.
        weights: float32 [n_items + 1, K] transition counts of those neighbours (0 for padding).
    """

    neighbors: np.ndarray
    weights: np.ndarray


def pad_sessions(sessions: Sequence[Sequence[int]] | np.ndarray, max_len: int | None = None) -> np.ndarray:
    """Left-aligned, 0-padded int64 ``[B, L]`` array of the sessions' last ``max_len`` clicks.

    A 2-D integer array is taken as already padded (only truncated to ``max_len`` if needed, keeping
    the most recent clicks).
    """
    if isinstance(sessions, np.ndarray) and sessions.ndim == 2:
        seq = sessions.astype(np.int64, copy=False)
        if max_len is not None and seq.shape[1] > max_len:
            lengths = (seq > 0).sum(1)
            shift = np.maximum(lengths - max_len, 0)
            idx = np.minimum(shift[:, None] + np.arange(max_len)[None, :], seq.shape[1] - 1)
            seq = np.where(np.arange(max_len)[None, :] < lengths[:, None] - shift[:, None],
                           np.take_along_axis(seq, idx, 1), 0)
        return seq
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    flat = np.fromiter((i for s in sessions for i in s), dtype=np.int64, count=int(lengths.sum()))
    width = max(int(lengths.max(initial=0)), 1)
    out = np.zeros((len(sessions), width), dtype=np.int64)
    out[np.arange(width)[None, :] < lengths[:, None]] = flat
    return pad_sessions(out, max_len) if max_len is not None and width > max_len else out


def _unique_nodes(seq: np.ndarray, n_nodes: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Per row: sorted unique nonzero items ``[B, N]`` and each click's node index ``[B, L]``."""
    b, length = seq.shape
    key = np.where(seq > 0, seq, _PAD_KEY)
    order = np.argsort(key, axis=1, kind="stable")
    srt = np.take_along_axis(key, order, 1)
    valid = srt != _PAD_KEY
    new = np.empty_like(valid)
    new[:, 0] = True
    np.not_equal(srt[:, 1:], srt[:, :-1], out=new[:, 1:])
    new &= valid
    rank = np.cumsum(new, axis=1)
    rank -= 1
    width = max(int(rank[:, -1].max(initial=0)) + 1, 1)
    if n_nodes is not None:
        if n_nodes < width:
            raise ValueError(f"n_nodes={n_nodes} < {width} unique items in a session")
        width = n_nodes
    alias = np.zeros((b, length), dtype=np.int64)
    np.put_along_axis(alias, order, np.where(valid, rank, 0), axis=1)
    items = np.zeros((b, width), dtype=np.int64)
    rows, cols = np.nonzero(new)
    items[rows, rank[rows, cols]] = srt[rows, cols]
    return items, alias


def _adjacency(seq: np.ndarray, alias: np.ndarray, n: int, binary: bool) -> np.ndarray:
    """``[A_in | A_out]`` float32 ``[B, N, 2N]`` from consecutive nonzero click pairs.

    Work is O(edges): edge counts and degrees come from bincounts over the edge list, and only the
    nonzero entries are written into a zeroed output (no dense [B, N, N] count matrix or reductions).
    """
    b = seq.shape[0]
    rows, t = np.nonzero((seq[:, :-1] > 0) & (seq[:, 1:] > 0))
    src = alias[rows, t]
    dst = alias[rows, t + 1]
    key, count = np.unique((rows * n + src) * n + dst, return_counts=True)
    weight = np.ones(key.size, np.float32) if binary else count.astype(np.float32)
    row, rest = np.divmod(key, n * n)
    src, dst = np.divmod(rest, n)
    out_deg = np.bincount(row * n + src, weights=weight, minlength=b * n)
    in_deg = np.bincount(row * n + dst, weights=weight, minlength=b * n)
    adj = np.zeros((b, n, 2 * n), dtype=np.float32)
    adj[row, dst, src] = weight / in_deg[row * n + dst]
    adj[row, src, n + dst] = weight / out_deg[row * n + src]
    return adj


def build_session_graphs(sessions: Sequence[Sequence[int]] | np.ndarray, max_len: int | None = None, *,
                         n_nodes: int | None = None, binary: bool = False) -> SessionGraphs:
    """Session graphs of a batch of click sequences.

    Args:
        sessions: B sequences of item ids (>= 1) in click order, or a 0-padded int array ``[B, L]``.
            A 0 between clicks breaks the chain (no edge across it).
        max_len: keep only each session's last ``max_len`` clicks.
        n_nodes: pad the node axis to exactly this many nodes (default: the batch's maximum).
        binary: weight each distinct edge 1 (the SR-GNN code) instead of by its count (the paper).

    Returns:
        :class:`SessionGraphs` with ``items [B, N]``, ``alias [B, L]``, ``adj [B, N, 2N]``, ``mask [B, L]``.
    """
    seq = pad_sessions(sessions, max_len)
    items, alias = _unique_nodes(seq, n_nodes)
    adj = _adjacency(seq, alias, items.shape[1], binary)
    return SessionGraphs(items=items, alias=alias, adj=adj, mask=(seq > 0).astype(np.float32))


def build_history_graphs(histories: Sequence[Sequence[Sequence[int]]], max_len: int | None = 50,
                         binary: bool = False) -> SessionGraphs:
    """One graph per user over that user's historical sessions (edges only inside a session).

    Args:
        histories: for each of B users, their earlier sessions (oldest first); may be empty.
        max_len: keep the last ``max_len`` positions of the joined history (separators included).

    Returns:
        :class:`SessionGraphs` (``N >= 1``; a user without history has one padding node, all-zero mask).
    """
    joined = []
    for user_sessions in histories:
        seq: list[int] = []
        for s in user_sessions:
            if seq:
                seq.append(0)
            seq.extend(s)
        joined.append(seq)
    seq_arr = pad_sessions(joined, max_len)
    # A cut may leave a leading separator; shift it out so clicks stay left-aligned from a real item.
    lead = (seq_arr[:, 0] == 0) & (seq_arr > 0).any(1)
    if lead.any():
        seq_arr[lead] = np.concatenate([seq_arr[lead, 1:], np.zeros((int(lead.sum()), 1), np.int64)], 1)
    return build_session_graphs(seq_arr, binary=binary)


def build_global_graph(sessions: Sequence[Sequence[int]], n_items: int, n_neighbors: int = 12,
                       hops: int = 1) -> GlobalGraph:
    """Global item-transition graph: for every pair of items at distance 1..``hops`` inside a training
    session (both directions, self-pairs excluded), count occurrences; keep each item's top
    ``n_neighbors`` by count (ties broken by smaller neighbour id, for determinism).

    This is GCE-GNN's global graph (eps-neighbourhood, top-12); it gives a session item the context of
    what other sessions did around it.
    """
    lengths = np.fromiter((len(s) for s in sessions), dtype=np.int64, count=len(sessions))
    flat = np.fromiter((i for s in sessions for i in s), dtype=np.int64, count=int(lengths.sum()))
    sess_id = np.repeat(np.arange(len(sessions)), lengths)
    srcs, dsts = [], []
    for h in range(1, hops + 1):
        same = sess_id[h:] == sess_id[:-h]
        a, b = flat[:-h][same], flat[h:][same]
        srcs += [a, b]
        dsts += [b, a]
    src = np.concatenate(srcs) if srcs else np.zeros(0, np.int64)
    dst = np.concatenate(dsts) if dsts else np.zeros(0, np.int64)
    keep = src != dst
    pair, count = np.unique(src[keep] * (n_items + 1) + dst[keep], return_counts=True)
    a, b = pair // (n_items + 1), pair % (n_items + 1)
    order = np.lexsort((b, -count, a))
    a, b, count = a[order], b[order], count[order]
    first = np.searchsorted(a, a, side="left")
    rank = np.arange(a.size) - first
    top = rank < n_neighbors
    neighbors = np.zeros((n_items + 1, n_neighbors), dtype=np.int64)
    weights = np.zeros((n_items + 1, n_neighbors), dtype=np.float32)
    neighbors[a[top], rank[top]] = b[top]
    weights[a[top], rank[top]] = count[top]
    return GlobalGraph(neighbors=neighbors, weights=weights)
