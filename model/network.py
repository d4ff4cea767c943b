"""The igrec scorer: multi-interest gated graph neural network over session graphs (PyTorch).

Every network here takes the numpy :class:`model.graphs.SessionGraphs` arrays as tensors, in the order
``forward(items, alias, adj, mask, hist_items, hist_adj)``, and returns log-probabilities of the next item
over ids ``0..n_items`` (column 0, padding, is ``-1e9``). Training and the stream worker therefore share
the graph code, and the ONNX exporter traces exactly this forward (opset 18: dense batched tensors, no
Python control flow on tensor values, Gumbel noise only in training mode).

Message passing is written as dense batched matmuls over ``[A_in | A_out]``: session graphs are tiny
(N <= L <= 50), so a padded ``[B, N, 2N]`` bmm is several times faster on CPU than a sparse
torch-geometric scatter over an edge list, and it exports to ONNX as plain MatMul.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

NEG = -1e9


@dataclass
class ModelConfig:
    """Hyper-parameters of :class:`IGRec` (stored as a plain dict in checkpoints).

    Attributes:
        n_items: largest item id; embeddings cover ``0..n_items`` (0 = padding).
        dim: embedding / hidden size D.
        interests: k interest graphs (1 = a single graph, no interest split).
        tau: Gumbel-softmax temperature of the interest assignment (and softmax temperature at inference).
        steps: GGNN propagation steps.
        dropout: dropout on item embeddings and on the session representation.
        use_global: add a GCE-GNN-style aggregation over each item's global transition neighbours.
        global_neighbors: K neighbours per item kept in the global graph.
        use_history: fuse the user's historical-session graph (gated); off for datasets without users.
        use_repeat: repeat/explore mixture: a pointer distribution over the session's own items,
            driven by node state, recency and click count, mixed with the all-item softmax.
        use_prior: add a co-occurrence prior to the explore logits: every item that co-occurs (within
            ``prior_hops`` clicks, in training sessions) with a session item gets a bias that grows with
            its share of that item's top-``prior_neighbors`` co-occurrences, weighted by how recently the
            session item was clicked (a learned weight per recency). A session-kNN signal inside the network.
        prior_neighbors: co-occurring items kept per item for the prior.
        prior_hops: co-occurrence window of the prior, in clicks.
        use_positions: reversed position embeddings in the readout (GCE-GNN).
        normalize: score with L2-normalised session and item vectors times ``scale`` (NISER).
        scale: logit scale when ``normalize``.
        max_len: longest click sequence the position/recency embeddings distinguish.
        arch: ``igrec`` (this network, also SR-GNN with everything off) or ``gru4rec``.
    """

    n_items: int
    dim: int = 100
    interests: int = 3
    tau: float = 0.5
    steps: int = 1
    dropout: float = 0.2
    use_global: bool = True
    global_neighbors: int = 12
    use_history: bool = True
    use_repeat: bool = True
    use_prior: bool = False
    prior_neighbors: int = 30
    prior_hops: int = 2
    use_positions: bool = True
    normalize: bool = True
    scale: float = 12.0
    max_len: int = 50
    arch: str = "igrec"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def srgnn(cls, n_items: int, **overrides) -> ModelConfig:
        """SR-GNN (Wu et al. 2019): one graph, no interests, global graph, history, repeat or positions."""
        base = dict(interests=1, use_global=False, use_history=False, use_repeat=False, use_prior=False,
                    use_positions=False, normalize=False, dropout=0.0)
        base.update(overrides)
        return cls(n_items=n_items, **base)


class ItemEmbedding(nn.Module):
    """The default item encoder: an id embedding (row 0 = padding, kept at zero).

    Pluggable hook: any module with ``forward(ids: LongTensor[...]) -> [..., D]`` and
    ``table() -> [n_items + 1, D]`` can replace it (a later multimodal encoder fuses text/image/KG
    features into the same interface); its parameters form their own optimiser group (``item_encoder``).
    """

    def __init__(self, n_items: int, dim: int):
        super().__init__()
        self.weight = nn.Embedding(n_items + 1, dim, padding_idx=0)
        nn.init.uniform_(self.weight.weight, -1.0 / math.sqrt(dim), 1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.weight.weight[0].zero_()

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight(ids)

    def table(self) -> torch.Tensor:
        return self.weight.weight


class GatedGraphCell(nn.Module):
    """One GGNN step (SR-GNN eq. 1-5): messages over ``[A_in | A_out]``, GRU-gated node update.

    Computed in a folded form. The edge projections and the input gates are linear on the feature axis and
    the adjacency product works on the node axis, so they commute:
    ``input_gates([A_in (h W_in^T + b_in) + c_in, A_out (...) + c_out])`` equals
    ``[A_in | A_out] [h F_in^T; h F_out^T]`` plus bias terms, with ``F = (input gate block) W_edge``
    ([3D, D], weights only). Each node then needs one ``[D] x [D, 9D]`` product (both folded blocks and the
    hidden gates) instead of ``2 D^2 + 6 D^2 + 3 D^2`` multiply-adds, and the k interest graphs, whose node
    states are row-scaled copies of the same embeddings, share it: ``(y h) F^T = y (h F^T)``.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.edge_in = nn.Linear(dim, dim)
        self.edge_out = nn.Linear(dim, dim)
        self.bias_in = nn.Parameter(torch.zeros(dim))
        self.bias_out = nn.Parameter(torch.zeros(dim))
        self.input_gates = nn.Linear(2 * dim, 3 * dim)
        self.hidden_gates = nn.Linear(dim, 3 * dim)

    def _folded(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(node projection [9D, D], edge biases [2, 3D] (in, out), constant bias [3D]), multiplied out from
        the weights outside autocast (in their own dtype, float32 in training and serving)."""
        d = self.edge_in.weight.shape[0]
        with torch.autocast(device_type=self.edge_in.weight.device.type, enabled=False):
            gate_in, gate_out = self.input_gates.weight[:, :d], self.input_gates.weight[:, d:]
            weight = torch.cat([gate_in @ self.edge_in.weight, gate_out @ self.edge_out.weight,
                                self.hidden_gates.weight], 0)
            edge_bias = torch.stack([gate_in @ self.edge_in.bias, gate_out @ self.edge_out.bias])
            bias = gate_in @ self.bias_in + gate_out @ self.bias_out + self.input_gates.bias
        return weight, edge_bias, bias

    def forward(self, adj: torch.Tensor, hidden: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """adj [M, N, 2N] or [M, 1, N, 2N], hidden [M, N, D] or [M, k, N, D] -> new hidden, shaped as hidden.

        With ``scale`` [M, k, N] (and adj [M, N, 2N], hidden [M, N, D]): the step on the k graphs of one
        adjacency whose node states are ``scale[:, j, :, None] * hidden`` -> [M, k, N, D].
        """
        n, d = hidden.shape[-2], self.edge_in.weight.shape[0]
        weight, edge_bias, bias = self._folded()
        proj = torch.matmul(hidden, weight.t().to(hidden.dtype))
        nodes = torch.cat([proj[..., : 3 * d], proj[..., 3 * d : 6 * d]], -2)
        has_edges = torch.stack([adj[..., :n].sum(-1), adj[..., n:].sum(-1)], -1)
        fixed = torch.matmul(has_edges, edge_bias.to(adj.dtype)) + bias
        gh = proj[..., 6 * d :]
        if scale is not None:
            adj = adj[:, None] * torch.cat([scale, scale], -1)[:, :, None, :]
            nodes, fixed = nodes[:, None], fixed[:, None]
            gh = scale[..., None] * gh[:, None]
            hidden = scale[..., None] * hidden[:, None]
        gi = torch.matmul(adj.to(nodes.dtype), nodes) + fixed.to(nodes.dtype)
        gh = gh + self.hidden_gates.bias
        i_r, i_z, i_n = gi.split(d, -1)
        h_r, h_z, h_n = gh.split(d, -1)
        reset = torch.sigmoid(i_r + h_r)
        update = torch.sigmoid(i_z + h_z)
        candidate = torch.tanh(i_n + reset * h_n)
        return candidate + update * (hidden - candidate)


class GlobalAggregator(nn.Module):
    """Attention over an item's global neighbours (GCE-GNN): which of the transitions other sessions made
    from this item fit the current session. Output ``[B, N, D]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.score = nn.Linear(dim + 1, dim)
        self.query = nn.Linear(dim, 1, bias=False)
        self.combine = nn.Linear(2 * dim, dim)

    def forward(self, node_emb: torch.Tensor, nbr_emb: torch.Tensor, nbr_weight: torch.Tensor,
                session_mean: torch.Tensor) -> torch.Tensor:
        """node_emb [B,N,D], nbr_emb [B,N,K,D], nbr_weight [B,N,K] (0 = no neighbour), session_mean [B,D]."""
        feats = torch.cat([nbr_emb * session_mean[:, None, None, :], torch.log1p(nbr_weight)[..., None]], -1)
        logits = self.query(F.leaky_relu(self.score(feats), 0.2)).squeeze(-1)
        logits = logits.masked_fill(nbr_weight <= 0, NEG)
        attn = torch.softmax(logits, -1) * (nbr_weight > 0).to(logits.dtype)
        agg = (attn[..., None] * nbr_emb).sum(-2)
        return torch.relu(self.combine(torch.cat([node_emb, agg], -1)))


class Readout(nn.Module):
    """Attention readout with the last click as query (SR-GNN eq. 6-7), optionally position-aware.

    Returns the session vector ``[M, D]`` and the attention-ready sequence states ``[M, L, D]``.
    """

    def __init__(self, dim: int, max_len: int, use_positions: bool):
        super().__init__()
        self.use_positions = use_positions
        if use_positions:
            self.positions = nn.Embedding(max_len, dim)
            self.mix = nn.Linear(2 * dim, dim)
        self.w_last = nn.Linear(dim, dim)
        self.w_seq = nn.Linear(dim, dim, bias=False)
        self.q = nn.Linear(dim, 1, bias=False)
        self.out = nn.Linear(2 * dim, dim)

    def _position_keys(self) -> torch.Tensor:
        """The positions' share of ``mix`` (with its bias), per position [max_len, D]: ``mix`` is linear, so
        ``mix([seq, pos]) = seq W_seq^T + (pos W_pos^T + b)`` and the second term is one row per position,
        weights only, instead of a ``2D``-wide product for every click."""
        dim = self.positions.weight.shape[1]
        return F.linear(self.positions.weight, self.mix.weight[:, dim:], self.mix.bias)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, last: torch.Tensor, rev_pos: torch.Tensor) -> torch.Tensor:
        """seq [..., L, D] click states, mask [..., L], last [..., D] the last click's state, rev_pos [..., L]
        (0 = last click) -> [..., D]. Leading dims broadcast: the k interest graphs' clicks ``[B, k, L, D]``
        share one mask and positions ``[B, 1, L]``."""
        keys = seq
        if self.use_positions:
            dim = self.w_last.weight.shape[0]
            keys = torch.tanh(F.linear(seq, self.mix.weight[:, :dim]) + self._position_keys()[rev_pos])
        alpha = self.q(torch.sigmoid(self.w_last(last)[..., None, :] + self.w_seq(keys)))
        pooled = (alpha * seq * mask[..., None]).sum(-2)
        return self.out(torch.cat([last, pooled], -1))


def node_recency(items: torch.Tensor, alias: torch.Tensor, mask: torch.Tensor,
                 max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per node: clicks since its last click (0 = the last click) and its click count, both clamped to
    ``max_len - 1``; items [B,N], alias [B,L], mask [B,L] -> (recency [B,N], count [B,N]) int64."""
    n = items.shape[1]
    nodes = torch.arange(n, device=items.device)
    hit = (alias[:, :, None] == nodes[None, None, :]).to(mask.dtype) * mask[:, :, None]
    count = hit.sum(1)
    step = torch.arange(1, alias.shape[1] + 1, device=items.device).to(mask.dtype)
    last_pos = (hit * step[None, :, None]).amax(1)
    rec = (mask.sum(1, keepdim=True) - last_pos).clamp(0, max_len - 1).long()
    return rec, count.clamp(0, max_len - 1).long()


class CooccurrencePrior(nn.Module):
    """Logit bias from item co-occurrence (``use_prior``): a session-kNN signal the network can weigh.

    Slot (node n, neighbour j) adds ``w(recency_n) * log1p(share_nj / 0.05)`` to item ``nbr_nj``'s logit,
    where ``share_nj`` is j's share of n's kept co-occurrence counts and ``w`` a learned non-negative weight
    per recency; slots of the same item add up. Returns (item ids [B, N*K], bias [B, N*K] float32);
    padding slots have id 0 and bias 0.
    """

    def __init__(self, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.recency_weight = nn.Parameter(torch.full((max_len,), -1.0))
        with torch.no_grad():
            self.recency_weight[0] = 0.5

    def forward(self, items: torch.Tensor, alias: torch.Tensor, mask: torch.Tensor, nbr: torch.Tensor,
                share: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """items [B,N], alias [B,L], mask [B,L], each node's neighbours nbr [B,N,K] and shares [B,N,K]."""
        rec, _ = node_recency(items, alias, mask, self.max_len)
        weight = F.softplus(self.recency_weight)[rec] * (items > 0).float()
        bias = weight[..., None] * torch.log1p(share / 0.05)
        return nbr.flatten(1), bias.flatten(1)


class RepeatHead(nn.Module):
    """Pointer distribution over the session's own items (the repeat/copy signal).

    Node logit = f(node state, session vector, recency of its last click, its click count); the mixing
    gate p(repeat) depends on the session vector. Returns node probabilities ``[B, N]`` and the gate
    ``[B, 1]``.
    """

    def __init__(self, dim: int, max_len: int):
        super().__init__()
        self.max_len = max_len
        self.recency = nn.Embedding(max_len, dim)
        self.count = nn.Embedding(max_len, dim)
        self.node = nn.Linear(dim, dim)
        self.session = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, 1, bias=False)
        self.gate = nn.Linear(2 * dim, 1)

    def forward(self, node_h: torch.Tensor, items: torch.Tensor, alias: torch.Tensor, mask: torch.Tensor,
                session: torch.Tensor, last: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """node_h [B,N,D], items [B,N], alias [B,L], mask [B,L], session [B,D], last [B,D]
        -> (node log-probabilities [B, N] float32, gate logit [B, 1] float32)."""
        rec, cnt = node_recency(items, alias, mask, self.max_len)
        feats = torch.tanh(self.node(node_h) + self.session(session)[:, None, :]
                           + self.recency(rec) + self.count(cnt))
        logits = _float32(self.v(feats).squeeze(-1)).masked_fill(items == 0, NEG)
        return torch.log_softmax(logits, -1), _float32(self.gate(torch.cat([session, last], -1)))


class IGRec(nn.Module):
    """Multi-interest GGNN session recommender (ARCHITECTURE.md "The model").

    forward(items [B,N], alias [B,L], adj [B,N,2N], mask [B,L], hist_items [B,H]?, hist_adj [B,H,2H]?)
    -> log-probabilities [B, n_items + 1] (column 0 = -1e9).
    """

    def __init__(self, config: ModelConfig, item_encoder: nn.Module | None = None):
        super().__init__()
        if config.steps < 1:
            raise ValueError(f"steps must be at least 1, got {config.steps}")
        self.config = config
        self._items_frozen: dict[str, torch.Tensor] | None = None
        d = config.dim
        self.item_encoder = item_encoder or ItemEmbedding(config.n_items, d)
        self.interest_proj = nn.Parameter(torch.randn(d, config.interests) / math.sqrt(d))
        self.cell = GatedGraphCell(d)
        self.readout = Readout(d, config.max_len, config.use_positions)
        self.fuse_key = nn.Linear(d, d)
        self.fuse_query = nn.Linear(d, d, bias=False)
        self.fuse_v = nn.Linear(d, 1, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        if config.use_global:
            self.global_agg = GlobalAggregator(d)
            k = config.global_neighbors
            self.register_buffer("global_neighbors", torch.zeros(config.n_items + 1, k, dtype=torch.long))
            self.register_buffer("global_weights", torch.zeros(config.n_items + 1, k))
        if config.use_history:
            self.hist_attn = nn.Linear(d, d, bias=False)
            self.hist_gate = nn.Linear(2 * d, d)
        if config.use_repeat:
            self.repeat = RepeatHead(d, config.max_len)
        if config.use_prior:
            self.prior = CooccurrencePrior(config.max_len)
            k = config.prior_neighbors
            self.register_buffer("prior_neighbors", torch.zeros(config.n_items + 1, k, dtype=torch.long))
            self.register_buffer("prior_shares", torch.zeros(config.n_items + 1, k))

    def set_global_graph(self, neighbors, weights) -> None:
        """Load the numpy :class:`model.graphs.GlobalGraph` arrays into the buffers."""
        self.global_neighbors.copy_(torch.as_tensor(neighbors)[:, : self.config.global_neighbors])
        self.global_weights.copy_(torch.as_tensor(weights)[:, : self.config.global_neighbors])

    def _neighbour_shares(self, neighbors, counts) -> tuple[torch.Tensor, torch.Tensor]:
        """A co-occurrence graph's first ``prior_neighbors`` neighbours per item and their shares of its
        kept counts: (neighbors [V+1, K] int64, shares [V+1, K] float32)."""
        k = self.config.prior_neighbors
        counts = torch.as_tensor(counts, dtype=torch.float32)[:, :k]
        return torch.as_tensor(neighbors)[:, :k], counts / counts.sum(1, keepdim=True).clamp(min=1e-9)

    def set_prior_graph(self, neighbors, weights) -> None:
        """Load a co-occurrence :class:`model.graphs.GlobalGraph` (counts) as neighbour shares per item."""
        neighbors, shares = self._neighbour_shares(neighbors, weights)
        self.prior_neighbors.copy_(neighbors)
        self.prior_shares.copy_(shares)

    def set_training_prior_graphs(self, graphs: Sequence[tuple]) -> None:
        """Co-occurrence graphs ``[(neighbors, counts), ...]`` of disjoint parts of the training sessions,
        for training only (not saved). A training case's own session is in the full graph's counts, which
        would point the prior straight at its target (a leak the network learns to trust, and test sessions
        do not have); so in training each case reads a graph that does not hold its session (the
        ``prior_graph`` argument of :meth:`log_likelihood`). Evaluation and serving read the full graph."""
        neighbors, shares = zip(*(self._neighbour_shares(n, w) for n, w in graphs), strict=True)
        device = self.prior_neighbors.device
        self.register_buffer("prior_fold_neighbors", torch.stack(neighbors).to(device), persistent=False)
        self.register_buffer("prior_fold_shares", torch.stack(shares).to(device), persistent=False)

    def _prior(self, items, alias, mask, graph: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(item ids [B, M], bias [B, M]) of the co-occurrence prior, or None without ``use_prior``;
        ``graph`` [B] picks each case's training graph (:meth:`set_training_prior_graphs`), else the full one."""
        if not self.config.use_prior:
            return None
        if graph is None:
            nbr, share = self.prior_neighbors[items], self.prior_shares[items]
        else:
            nbr = self.prior_fold_neighbors[graph[:, None], items]
            share = self.prior_fold_shares[graph[:, None], items]
        return self.prior(items, alias, mask, nbr, share)

    def _interest_weights(self, emb: torch.Tensor) -> torch.Tensor:
        """y [B, N, k]: Gumbel-softmax (training) or softmax (inference) of v_i^T W_l / tau."""
        logits = torch.matmul(emb, self.interest_proj).float()
        if self.training and self.config.interests > 1:
            return F.gumbel_softmax(logits, tau=self.config.tau, hard=False, dim=-1).to(emb.dtype)
        return torch.softmax(logits / self.config.tau, -1).to(emb.dtype)

    def _propagate(self, adj: torch.Tensor, hidden: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """``steps`` GGNN steps: adj [M, N, 2N], hidden [M, N, D] -> [M, N, D]; with ``scale`` [M, k, N], on
        the k interest graphs whose node states are hidden scaled row-wise (:class:`GatedGraphCell`) ->
        [M, k, N, D]."""
        hidden = self.cell(adj, hidden, scale)
        if scale is not None:
            adj = adj[:, None]
        for _ in range(self.config.steps - 1):
            hidden = self.cell(adj, hidden)
        return hidden

    def _global_context(self, items: torch.Tensor, emb: torch.Tensor, nbr_emb: torch.Tensor) -> torch.Tensor:
        """items [B,N], node embeddings emb [B,N,D], their global neighbours' embeddings nbr_emb [B,N,K,D]."""
        node_mask = (items > 0).to(emb.dtype)
        mean = (emb * node_mask[..., None]).sum(1) / node_mask.sum(1, keepdim=True).clamp(min=1)
        weights = self.global_weights[items].to(emb.dtype)
        return self.dropout(self.global_agg(emb, nbr_emb, weights, mean))

    def _embed(self, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(node embeddings [B, N, D], global neighbours' embeddings [B, N, K, D] or None) from one call of
        the item encoder: each call's backward zero-fills and adds a dense [V, D] gradient."""
        if not self.config.use_global:
            return self.item_encoder(items), None
        b, n = items.shape
        nbrs = self.global_neighbors[items]
        rows = self.item_encoder(torch.cat([items, nbrs.reshape(b, -1)], 1))
        return rows[:, :n], rows[:, n:].reshape(b, n, nbrs.shape[-1], -1)

    def _fuse_interests(self, reps: torch.Tensor, last_emb: torch.Tensor) -> torch.Tensor:
        """reps [B, k, D] -> [B, D], attention over interests with the last click as query."""
        logits = self.fuse_v(torch.tanh(self.fuse_key(reps) + self.fuse_query(last_emb)[:, None, :]))
        return (torch.softmax(logits, 1) * reps).sum(1)

    def _history(self, session: torch.Tensor, hist_items: torch.Tensor, hist_adj: torch.Tensor) -> torch.Tensor:
        """Gated fusion of the historical graph into the session vector; no-op for users without history."""
        h = self._propagate(hist_adj, self.item_encoder(hist_items))
        valid = hist_items > 0
        logits = (self.hist_attn(h) * session[:, None, :]).sum(-1).masked_fill(~valid, NEG)
        pooled = (torch.softmax(logits.float(), -1).to(h.dtype)[..., None] * h).sum(1)
        gate = torch.sigmoid(self.hist_gate(torch.cat([session, pooled], -1)))
        has = valid.any(1, keepdim=True).to(session.dtype)
        return session + has * (1 - gate) * (pooled - session)

    def session_vector(self, items, alias, adj, mask, hist_items=None, hist_adj=None):
        """Session representation [B, D] and the final node states [B, N, D] (shared by the heads)."""
        cfg = self.config
        raw, nbr_emb = self._embed(items)
        emb = self.dropout(raw)
        k = cfg.interests
        shares = self._interest_weights(emb).transpose(1, 2)
        h = self._propagate(adj.to(emb.dtype), emb, shares)
        if cfg.use_global:
            h = h + shares[..., None] * self._global_context(items, emb, nbr_emb)[:, None]
        length = mask.sum(1)
        last_index = (length - 1).clamp(min=0).long()
        steps = torch.arange(alias.shape[1], device=alias.device)
        rev_pos = (length.long()[:, None] - 1 - steps[None, :]).clamp(0, cfg.max_len - 1)
        dim = cfg.dim
        seq = torch.gather(h, 2, alias[:, None, :, None].expand(-1, k, -1, dim))
        last_node = torch.gather(alias, 1, last_index[:, None])
        last = torch.gather(h, 2, last_node[:, None, :, None].expand(-1, k, 1, dim)).squeeze(2)
        reps = self.readout(seq, mask[:, None].to(seq.dtype), last, rev_pos[:, None])
        last_emb = torch.gather(raw, 1, last_node[..., None].expand(-1, 1, dim)).squeeze(1)
        session = self._fuse_interests(reps, last_emb)
        if cfg.use_history and hist_items is not None:
            session = self._history(session, hist_items, hist_adj)
        node_h = (shares[..., None] * h).sum(1)
        return self.dropout(session), node_h, last_emb

    def logits(self, session: torch.Tensor, prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Explore logits [B, n_items] of the real items (column j is item j + 1): session . item for every
        item, plus the co-occurrence ``prior`` (ids in 0..n_items, bias; id 0 = padding, bias 0) where given.

        The padding row is left out of the product rather than masked with NEG: the [B, V] tensor dominates
        inference on CPU, and the masking add was a whole pass over it (~6 % of onnxruntime's time per
        session). The scale goes on the [B, D] side, so [B, V] is written once by the product.
        """
        session, table = self._score_inputs(session)
        logits = _product(session, table, self.training)
        if prior is not None:
            ids, bias = prior
            logits = logits.scatter_add_(1, (ids - 1).clamp(min=0), bias.to(logits.dtype))
        return logits

    def _score_inputs(self, session: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(query [B, D], table [V, D] of the real items) whose dot products are the explore logits."""
        return self._query(session), self._item_table()

    def _query(self, session: torch.Tensor) -> torch.Tensor:
        """The session vector as the item product's query [B, D]: NISER-normalised and scaled."""
        return F.normalize(session, dim=-1) * self.config.scale if self.config.normalize else session

    def _item_table(self) -> torch.Tensor:
        """The real items' rows [V, D] of the item product (row j is item j + 1), normalised with the query."""
        return self._from_items("table", self._fresh_item_table)

    def _fresh_item_table(self) -> torch.Tensor:
        table = self.item_encoder.table()[1:]
        return row_normalize(table) if self.config.normalize else table

    def _from_items(self, name: str, build: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``build()``, a tensor derived from the item encoder alone, built once and reused within
        :func:`frozen_items` (inference only), else built on every call."""
        cache = self._items_frozen
        if cache is None or self.training or torch.is_grad_enabled() or _tracing():
            return build()
        if name not in cache:
            cache[name] = build()
        return cache[name]

    def log_likelihood(self, target, items, alias, adj, mask, hist_items=None, hist_adj=None,
                       prior_graph=None) -> torch.Tensor:
        """log p(target) [B] (float32) without materialising [B, V] log-probabilities: the training loss.

        Equals ``forward(...).gather(1, target)`` but touches the [B, V] logits only through one
        logsumexp, which roughly halves the CPU step time against log_softmax + nll. ``prior_graph`` [B]:
        the training co-occurrence graph of each case (see :meth:`set_training_prior_graphs`).
        """
        session, node_h, last_emb = self.session_vector(items, alias, adj, mask, hist_items, hist_adj)
        explore = target_log_likelihood(*self._score_inputs(session), target,
                                        self._prior(items, alias, mask, prior_graph))
        explore = explore[:, None]
        if not self.config.use_repeat:
            return explore.squeeze(1)
        node_logp, gate = self.repeat(node_h, items, alias, mask, session, last_emb)
        in_session = items == target[:, None]
        repeat = torch.logsumexp(node_logp.masked_fill(~in_session, NEG), -1, keepdim=True)
        return _logaddexp(explore + F.logsigmoid(-gate), repeat + F.logsigmoid(gate)).squeeze(1)

    def _explore(self, session: torch.Tensor, items, alias, mask) -> torch.Tensor:
        """Explore log-probabilities [B, n_items] of the real items (column j is item j + 1): log-softmax of
        the logits (with the prior, if any)."""
        return torch.log_softmax(self.logits(session, self._prior(items, alias, mask)), -1)

    def _repeat_mixture(self, session_explore, node_h, items, alias, mask, session, last_emb):
        """:func:`_mix` with the repeat head's node log-probabilities and gate for these node states."""
        node_logp, gate = self.repeat(node_h, items, alias, mask, session, last_emb)
        return _mix(session_explore, node_logp, gate, items)

    def forward(self, items, alias, adj, mask, hist_items=None, hist_adj=None) -> torch.Tensor:
        session, node_h, last_emb = self.session_vector(items, alias, adj, mask, hist_items, hist_adj)
        explore = self._explore(session, items, alias, mask)
        padded = F.pad(explore, (1, 0), value=NEG)
        if not self.config.use_repeat:
            return padded
        session_explore = torch.gather(explore, 1, (items - 1).clamp(min=0))
        log_explore, mixed = self._repeat_mixture(session_explore, node_h, items, alias, mask, session, last_emb)
        return (padded + log_explore).scatter_(1, items, mixed)

    def top_k(self, k: int, items, alias, adj, mask, hist_items=None, hist_adj=None):
        """(item ids int64 [B, k], log-probabilities [B, k]) = ``torch.topk(forward(...), k)`` up to the
        order of exact ties, without materialising the mixed ``[B, n_items + 1]`` log-probabilities: what
        the ONNX artefact computes.

        Outside the session an item's log-probability is its explore log-probability plus
        ``log p(explore)``, the same shift for every item of a row; a session item's repeat mixture is at
        least that. So the top-K lies among the top-K explore items and the session's own items: one
        product and one pick of its top K (:func:`block_top_k`), and the repeat mixture for the session
        items only.

        The ``[B, V]`` product only ranks and normalises: its top k columns (the candidates) and the session's
        own items are scored again exactly (their table rows times the query, plus the prior), and the top-K
        is taken from those. In float32 this changes nothing (a few ulps); it lets a cheaper, approximate
        product stand in for the big one (:mod:`export.precision` swaps it in the ONNX graph and raises the
        candidate count to 64) without changing the top-K whenever the exact top-K is among its top
        candidates. The log-normaliser comes from onnxruntime's fused LogSoftmax over the full logits (a
        separate ReduceLogSumExp over ``[B, V]`` measured 5x slower), corrected with the candidates' exact
        terms (:func:`_log_normaliser`).
        """
        return self.head(k, items, self.head_inputs(items, alias, adj, mask, hist_items, hist_adj))

    def head_inputs(self, items, alias, adj, mask, hist_items=None, hist_adj=None) -> HeadInputs:
        """Everything of :meth:`top_k` before the ``[B, V]`` item product: the graph network, run per session.

        The split lets a runtime run this part per group of similar graph sizes (little padding) and
        :meth:`head` once over all of them (the item table read once): see ``export.scorer.Scorer``.
        """
        session, node_h, last_emb = self.session_vector(items, alias, adj, mask, hist_items, hist_adj)
        query = self._query(session)
        prior = self._prior(items, alias, mask)
        repeat = self.repeat(node_h, items, alias, mask, session, last_emb) if self.config.use_repeat else (None, None)
        return HeadInputs(query, *(prior or (None, None)), *repeat)

    def head(self, k: int, items: torch.Tensor, inputs: HeadInputs):
        """(item ids int64 [B, k], log-probabilities [B, k]) from :meth:`head_inputs`: the item product
        (:func:`padded_product`), its top candidates (:func:`block_top_k`) scored again exactly, the
        log-normaliser, and the repeat mixture of the session's own items. Padding along the node axis
        (items 0) and the prior's slots (id 0, bias 0) changes nothing, so rows from differently padded
        :meth:`head_inputs` calls can be stacked after padding them alike."""
        query = inputs.query
        table = self._item_table()
        prior = None if inputs.prior_ids is None else (inputs.prior_ids, inputs.prior_bias)
        logits = padded_product(query, self._from_items("wide", lambda: padded_table(table)), self.training)
        if prior is not None:
            ids, bias = prior
            logits = logits.scatter_add(1, (ids - 1).clamp(min=0), _float32(bias))
        columns = block_top_k(logits, k)
        exact = _logits_at(query, table, prior, columns)
        log_norm = _log_normaliser(logits, columns, exact)
        top_explore, order = torch.topk(exact - log_norm, k, dim=-1)
        top_items = torch.gather(columns, 1, order) + 1
        if inputs.node_logp is None:
            return top_items, top_explore
        session_explore = _logits_at(query, table, prior, (items - 1).clamp(min=0)) - log_norm
        log_explore, mixed = _mix(session_explore, inputs.node_logp, inputs.gate, items)
        in_session = (top_items[:, :, None] == items[:, None, :]).any(-1)
        candidates_mixed = (top_explore + log_explore).masked_fill(in_session, NEG)
        scores, where = torch.topk(torch.cat([candidates_mixed, mixed], 1), k, dim=-1)
        return torch.gather(torch.cat([top_items, items], 1), 1, where), scores


@contextlib.contextmanager
def frozen_items(net: nn.Module) -> Iterator[None]:
    """Within: an :class:`IGRec` computes its item table (normalised, and padded for the head) once and
    reuses it in every inference call (eval mode, no autograd); other networks are left as they are.

    For loops over unchanging weights (evaluation, parity, benchmarks). Eager PyTorch otherwise redoes
    those passes over the 17 MB Diginetica table on every call, about 5 ms on one core: more than the rest
    of a batch-1 call. An exported graph folds them into constants once. The weights and the autocast
    setting must not change within: nothing here could notice (writes through ``.data`` or a fused
    optimizer leave no trace in a parameter's version counter).
    """
    if not isinstance(net, IGRec) or net._items_frozen is not None:
        yield
        return
    net._items_frozen = {}
    try:
        yield
    finally:
        net._items_frozen = None


class HeadInputs(NamedTuple):
    """What :meth:`IGRec.head` needs of each session besides its items (None where the config has no such
    part): the scaled query [B, D]; the co-occurrence prior's item ids and biases [B, P] (``use_prior``);
    the repeat head's node log-probabilities [B, N] and gate logit [B, 1] (``use_repeat``)."""

    query: torch.Tensor
    prior_ids: torch.Tensor | None = None
    prior_bias: torch.Tensor | None = None
    node_logp: torch.Tensor | None = None
    gate: torch.Tensor | None = None


def _mix(session_explore: torch.Tensor, node_logp: torch.Tensor, gate: torch.Tensor, items: torch.Tensor):
    """(log p(explore) [B, 1], mixed log-probabilities of the session's own items [B, N], padding NEG): a
    session item's probability is p(explore) * p_explore(item) + p(repeat) * p_repeat(item), where
    ``session_explore`` [B, N] holds p_explore of each session node's item (any value for padding) and
    ``node_logp`` [B, N], ``gate`` [B, 1] are the repeat head's."""
    log_explore, log_repeat = F.logsigmoid(-gate), F.logsigmoid(gate)
    mixed = _logaddexp(session_explore + log_explore, node_logp + log_repeat)
    return log_explore, mixed.masked_fill(items == 0, NEG)


TOPK_BLOCK = 64
"""Columns per block of :func:`block_top_k`; the item product's width is a multiple of it."""


def padded_table(table: torch.Tensor) -> torch.Tensor:
    """The item table [V, D] as :func:`padded_product` reads it: [W, D + 1], W = V rounded up to
    :data:`TOPK_BLOCK`, a trailing column 0 for the real items and NEG for the padding rows."""
    n, dim = table.shape
    wide = F.pad(table, (0, 1, 0, -n % TOPK_BLOCK))
    wide[n:, dim] = NEG
    return wide


def padded_product(query: torch.Tensor, wide: torch.Tensor, training: bool) -> torch.Tensor:
    """Logits [B, W] = query [B, D] . table [V, D]^T (see :func:`_product`), columns V.. set to NEG, for
    :func:`block_top_k`; ``wide`` [W, D + 1] is :func:`padded_table` of the table.

    The padding is written by the product itself: the query gets a trailing 1, so no pass over [B, W]
    copies or masks the logits. The extra term of the real columns is 1 x 0: they equal the unpadded
    product's (bit for bit in onnxruntime and PyTorch on the CPUs measured).
    """
    return _product(F.pad(query, (0, 1), value=1.0), wide, training)


def block_top_k(logits: torch.Tensor, k: int, block: int = TOPK_BLOCK) -> torch.Tensor:
    """Column indices [B, k] of the k largest ``logits`` [B, W] (W a multiple of ``block``), equal to
    ``torch.topk(logits, k).indices`` up to the order of exact ties.

    Each of the k largest values lies in one of the k blocks with the largest maxima, so one pass over
    the row (the block maxima) and two TopKs over small tensors (the maxima; those blocks' k x block
    columns) replace a TopK over the whole row: 17 against 59 us per row for k = 20 over 43,097 items in
    onnxruntime on one Xeon core, and 21 against 62 in PyTorch (docs/results.md).
    """
    blocks = logits.unflatten(1, (-1, block))
    top_blocks = torch.topk(blocks.amax(-1), min(k, blocks.shape[1]), dim=-1).indices
    candidates = torch.gather(blocks, 1, top_blocks[:, :, None].expand(-1, -1, block)).flatten(1)
    within = torch.topk(candidates, k, dim=-1).indices
    return torch.gather(top_blocks, 1, torch.div(within, block, rounding_mode="floor")) * block + within % block


def _log_normaliser(logits: torch.Tensor, columns: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """log sum_j exp(logit_j) [B, 1] of ``logits`` [B, W] (NEG padding adds nothing), with the terms of
    ``columns`` [B, M] taken from ``exact`` [B, M] instead: where ``logits`` is approximate, the largest
    terms (the top candidates) are then exact, and the normaliser's error is only the tail's. Equal to
    logsumexp(logits) when exact."""
    log_norm = logits[:, :1] - torch.log_softmax(logits, -1)[:, :1]
    shares = torch.exp(exact - log_norm).sum(-1, keepdim=True) - torch.exp(
        torch.gather(logits, 1, columns) - log_norm).sum(-1, keepdim=True)
    return log_norm + torch.log1p(shares)


def _logits_at(query: torch.Tensor, table: torch.Tensor, prior: tuple[torch.Tensor, torch.Tensor] | None,
               columns: torch.Tensor) -> torch.Tensor:
    """Explore logits [B, M] at ``columns`` [B, M] (column j is item j + 1), computed directly: query [B, D]
    . table [V, D] rows, plus the co-occurrence prior (ids [B, P], bias [B, P]; id 0 = padding) where given."""
    with torch.autocast(device_type=query.device.type, enabled=False):
        dots = torch.matmul(_float32(table)[columns], _float32(query)[:, :, None]).squeeze(-1)
    if prior is None:
        return dots
    ids, bias = prior
    hits = (columns[:, :, None] == (ids - 1)[:, None, :]) & (ids > 0)[:, None, :]
    return dots + torch.matmul(hits.to(dots.dtype), _float32(bias)[:, :, None]).squeeze(-1)


class GRU4Rec(nn.Module):
    """GRU4Rec baseline (Hidasi et al. 2016) in the same harness: a GRU over the click sequence, the
    last hidden state scored against every item embedding; trained with full cross-entropy on the same
    prefix cases. Takes the same inputs as :class:`IGRec` (the clicks are ``items[alias]``)."""

    def __init__(self, config: ModelConfig, item_encoder: nn.Module | None = None):
        super().__init__()
        self.config = config
        self.item_encoder = item_encoder or ItemEmbedding(config.n_items, config.dim)
        self.gru = nn.GRU(config.dim, config.dim, batch_first=True)
        self.dropout = nn.Dropout(config.dropout)

    def _last_state(self, items, alias, mask) -> torch.Tensor:
        """[B, D] GRU state after the last click (dropped out in training)."""
        clicks = torch.gather(items, 1, alias) * mask.long()
        out, _ = self.gru(self.dropout(self.item_encoder(clicks)))
        last_index = (mask.sum(1) - 1).clamp(min=0).long()
        last = torch.gather(out, 1, last_index.view(-1, 1, 1).expand(-1, 1, out.shape[-1])).squeeze(1)
        return self.dropout(last)

    def logits(self, items, alias, mask) -> torch.Tensor:
        """[B, n_items + 1] float32 scores (column 0 = NEG) from the GRU state after the last click."""
        return _score(self._last_state(items, alias, mask), self.item_encoder.table(), self.training)

    def log_likelihood(self, target, items, alias, adj, mask, hist_items=None, hist_adj=None,
                       prior_graph=None) -> torch.Tensor:
        """log p(target) [B] (see :meth:`IGRec.log_likelihood`; no co-occurrence prior here)."""
        return target_log_likelihood(self._last_state(items, alias, mask), self.item_encoder.table()[1:], target)

    def forward(self, items, alias, adj, mask, hist_items=None, hist_adj=None) -> torch.Tensor:
        return torch.log_softmax(self.logits(items, alias, mask), -1)


class _TargetLogLikelihood(torch.autograd.Function):
    """``log_softmax(query @ items.T + prior)[b, target[b]]`` with a hand-written backward: the training
    loss head, and the bulk of a CPU step.

    The [B, V] logits are touched as few times as memory bandwidth asks: one fused log-softmax forward
    (kept, in the compute dtype), and backward one ``exp`` and one in-place scale give the gradient
    ``g * (onehot(target) - softmax)``, which feeds the two matmuls. Autograd's version (logsumexp as
    max/sub/exp/sum, a second softmax in backward, a cast of the item table per matmul) read and wrote
    the [B, V] tensor about twice as often.
    """

    @staticmethod
    def forward(ctx, query: torch.Tensor, items: torch.Tensor, target: torch.Tensor, ids: torch.Tensor | None,
                bias: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        q, table = query.to(dtype), items.to(dtype)
        logits = torch.matmul(q, table.t())
        if ids is not None:
            logits.scatter_add_(1, ids, bias.to(dtype))
        logp = torch.log_softmax(logits, -1)
        ctx.save_for_backward(q, table, target, ids, logp)
        ctx.dtypes = (query.dtype, items.dtype, None if bias is None else bias.dtype)
        return logp.gather(1, target[:, None]).squeeze(1).to(torch.promote_types(dtype, torch.float32))

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        q, table, target, ids, logp = ctx.saved_tensors
        query_dtype, items_dtype, bias_dtype = ctx.dtypes
        d_logits = torch.exp(logp).mul_(-grad[:, None].to(logp.dtype))
        d_logits[torch.arange(len(target), device=target.device), target] += grad.to(logp.dtype)
        d_query = torch.matmul(d_logits, table).to(query_dtype)
        d_items = torch.matmul(d_logits.t(), q).to(items_dtype)
        d_bias = None if ids is None else d_logits.gather(1, ids).to(bias_dtype)
        return d_query, d_items, None, None, d_bias, None


def target_log_likelihood(query: torch.Tensor, items: torch.Tensor, target: torch.Tensor,
                          prior: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """log p(target) [B] (float32) under softmax over ``query [B, D] . items [V, D]^T`` (+ the sparse ``prior``
    (ids [B, M] in 0..V, bias [B, M]; id 0 = padding, whose bias must be 0)), where ``items`` are the real
    items 1..V (no padding row, so the [B, V] logits need no masking pass) and ``target`` in 1..V.

    Computed in the autocast dtype when autocast is on (bf16 halves the memory traffic of the [B, V]
    passes), else in the inputs' dtype."""
    device = query.device.type
    dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
             else torch.promote_types(query.dtype, items.dtype))
    ids, bias = (None, None) if prior is None else ((prior[0] - 1).clamp(min=0), prior[1])
    with torch.autocast(device, enabled=False):
        return _TargetLogLikelihood.apply(query, items, target - 1, ids, bias, dtype)


class _RowNormalize(torch.autograd.Function):
    """``x / |x|`` per row with a fused backward ``(g - y <g, y>) / |x|``.

    Autograd's graph for ``F.normalize`` walks the [V, D] item table five or six times per step; this
    one reads it twice forward and three times backward (the table is normalised on every training step).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        norm = torch.linalg.vector_norm(x, dim=-1, keepdim=True).clamp_min_(1e-12)
        y = x / norm
        ctx.save_for_backward(y, norm)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        y, norm = ctx.saved_tensors
        dot = torch.einsum("vd,vd->v", grad, y)[:, None]
        return torch.addcmul(grad, y, dot, value=-1).div_(norm)


def row_normalize(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows of ``x [V, D]``: the fused function when a gradient is needed, else
    ``F.normalize`` (which the ONNX exporter knows)."""
    if x.requires_grad and torch.is_grad_enabled() and x.dim() == 2:
        return _RowNormalize.apply(x)
    return F.normalize(x, dim=-1)


def _logaddexp(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Stable log(exp(a) + exp(b)) from ops every ONNX opset has (aten::logaddexp has no exporter)."""
    m = torch.maximum(a, b)
    return m + torch.log(torch.exp(a - m) + torch.exp(b - m))


def _product(query: torch.Tensor, table: torch.Tensor, training: bool) -> torch.Tensor:
    """query [B, D] . table [V, D]^T.

    Training keeps the autocast dtype (bf16 halves the memory traffic of the [B, V] passes that dominate
    a CPU step); inference scores in float32, because bf16's 8-bit mantissa would create ties, and ties
    count against the target.
    """
    if training:
        return torch.matmul(query, table.t())
    with torch.autocast(device_type=query.device.type, enabled=False):
        return torch.matmul(_float32(query), _float32(table).t())


def _tracing() -> bool:
    """True while torch records the model for export (TorchScript tracing, the ONNX exporters, dynamo)."""
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32, with no operation where it already is: the ONNX tracer records even a no-op
    ``.float()`` as a Cast, and a Cast between :meth:`IGRec.head_inputs` and their readers would hide the
    split point of the exported graph (``export.split``)."""
    return x if x.dtype == torch.float32 else x.float()


def _score(query: torch.Tensor, table: torch.Tensor, training: bool) -> torch.Tensor:
    """Logits [B, V] = query [B, D] . table [V, D]^T (see :func:`_product`), padding column set to NEG."""
    logits = _product(query, table, training)
    cols = torch.arange(table.shape[0], device=query.device)
    return logits + ((cols == 0).to(logits.dtype) * NEG)[None, :]


def build_network(config: ModelConfig, item_encoder: nn.Module | None = None) -> nn.Module:
    """The network named by ``config.arch``."""
    if config.arch == "gru4rec":
        return GRU4Rec(config, item_encoder)
    if config.arch == "igrec":
        return IGRec(config, item_encoder)
    raise ValueError(f"unknown arch {config.arch!r}")
