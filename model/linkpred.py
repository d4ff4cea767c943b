"""Link prediction on multiplex graphs: relational GNN encoder, DistMult scorer, negative sampling, GATNE protocol.

Model (:class:`LinkPredictor`): every node has a base embedding shared by all relations; ``layers`` rounds
of relation-typed message passing (torch-geometric ``RGCNConv``, mean over each relation's neighbours,
one weight matrix per relation, residual) turn it into a context embedding ``z_v`` that has seen the edges
of every relation; an edge ``(h, r, t)`` scores ``<z_h, diag(w_r), z_t> + b_h + b_t`` (DistMult with a
per-node bias, which carries popularity). Symmetric in h and t, which is right for the undirected GATNE
graphs and igrec's item relations.

Training: full-graph encoding (a 10k-node graph is cheap on one core). Each epoch the train edges are
shuffled into ``chunks``; for each chunk the graph *without* that chunk is encoded and the chunk's edges
are the positives, so a positive is never visible to its own message passing (as held-out edges are not at
test time). Each positive gets ``negatives`` corruptions (head or tail replaced by a uniformly drawn node,
from all nodes or the relation's nodes, whichever the evaluation's negatives come from; :class:`Corruptor`);
loss = binary cross-entropy with logits.
Early stopping on the valid ROC-AUC averaged over edge types.

A run folder: ``best.pt`` (state dict + plain dicts, loaded with ``torch.load(weights_only=True)``),
``results.json`` (config, data summary, history, valid/test metrics), ``curves.png``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_geometric.nn import RGCNConv

from model.facts import Fact
from model.linkpred_data import LinkData, LinkPredConfig, load_data
from model.metrics import filtered_ranks, link_prediction_metrics, mean_reciprocal_rank


class LinkPredictor(nn.Module):
    """Relational GNN encoder over all relations + per-relation DistMult scorer.

    Args:
        n_nodes: N, all node indices (unseen nodes included; their rows start at zero and stay there).
        n_relations: R.
        dim: embedding size d.
        layers: message-passing rounds.
        dropout: on the node states between rounds (training only).
    """

    def __init__(self, n_nodes: int, n_relations: int, dim: int = 64, layers: int = 2, dropout: float = 0.1):
        super().__init__()
        self.embedding = nn.Embedding(n_nodes, dim)
        nn.init.normal_(self.embedding.weight, std=0.1)
        self.convs = nn.ModuleList(RGCNConv(dim, dim, n_relations, aggr="mean") for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))
        self.relation = nn.Parameter(torch.ones(n_relations, dim))
        self.bias = nn.Embedding(n_nodes, 1)
        nn.init.zeros_(self.bias.weight)
        self.dropout = dropout

    def forget(self, nodes: torch.Tensor) -> None:
        """Zero the base embedding and bias of ``nodes`` (never trained: nodes unseen in train)."""
        with torch.no_grad():
            self.embedding.weight[nodes] = 0.0
            self.bias.weight[nodes] = 0.0

    def encode(self, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        """Node context embeddings.

        Args:
            edge_index: int64 [2, E] message edges (source, target), both directions for undirected graphs.
            edge_type: int64 [E] relation of each edge.

        Returns:
            float [N, d].
        """
        h = self.embedding.weight
        for conv, norm in zip(self.convs, self.norms, strict=True):
            m = nn.functional.dropout(h, self.dropout, self.training)
            h = h + norm(torch.relu(conv(m, edge_index, edge_type)))
        return h

    def score(self, z: torch.Tensor, rel: torch.Tensor, head: torch.Tensor, tail: torch.Tensor) -> torch.Tensor:
        """Logits float [B] of edges ``(head[b], rel[b], tail[b])`` from encoded ``z`` [N, d]."""
        zh = z[head] * self.relation[rel]
        return (zh * z[tail]).sum(-1) + self.bias.weight[head, 0] + self.bias.weight[tail, 0]

    def score_all(self, z: torch.Tensor, rel: torch.Tensor, head: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Logits float [B, C] of every candidate in ``tails`` [C] for each query ``(head[b], rel[b], ?)``."""
        zh = z[head] * self.relation[rel]
        return zh @ z[tails].T + self.bias.weight[head] + self.bias.weight[tails, 0][None, :]


def message_graph(edges: torch.Tensor, undirected: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(edge_index [2, E'], edge_type [E'])`` from ``(relation, head, tail)`` rows [E, 3]."""
    src, dst, rel = edges[:, 1], edges[:, 2], edges[:, 0]
    if undirected:
        src, dst, rel = torch.cat([src, dst]), torch.cat([dst, src]), torch.cat([rel, rel])
    return torch.stack([src, dst]), rel


class Corruptor:
    """Negative edges: a positive with its head or tail (half each) replaced by a uniformly drawn node.

    Draw them like the evaluation's negatives are drawn. ``negatives_from="all"``: any node seen in train
    (GATNE's negatives are random node pairs). ``"relation"``: a node of the positive's relation (endpoint of
    one of its train edges), as :func:`model.linkpred_data.hold_out` draws igrec's item-graph negatives, so
    an item-item relation never spends a negative on an attribute entity.
    """

    def __init__(self, data: LinkData, negatives_from: str = "all"):
        if negatives_from not in ("all", "relation"):
            raise ValueError(f"negatives_from must be 'relation' or 'all', not {negatives_from!r}")
        self.n_seen = data.n_seen
        self.by_relation = negatives_from == "relation"
        pools = [data.relation_nodes(r) for r in range(len(data.relations))]
        self.pool = torch.as_tensor(np.concatenate(pools))
        self.count = torch.as_tensor([len(p) for p in pools])
        self.offset = torch.cumsum(self.count, 0) - self.count

    def __call__(self, pos: torch.Tensor, negatives: int, gen: torch.Generator) -> torch.Tensor:
        """int64 [negatives * B, 3] corruptions of ``pos`` [B, 3] ``(relation, head, tail)`` rows."""
        neg = pos.repeat(negatives, 1)
        rows = torch.arange(neg.shape[0])
        which = 1 + (torch.rand(neg.shape[0], generator=gen) < 0.5).long()
        if self.by_relation:
            rel = neg[:, 0]
            pick = (torch.rand(neg.shape[0], generator=gen) * self.count[rel]).long()
            neg[rows, which] = self.pool[self.offset[rel] + pick]
        else:
            neg[rows, which] = torch.randint(0, self.n_seen, (neg.shape[0],), generator=gen)
        return neg


@torch.no_grad()
def score_pairs(model: LinkPredictor, z: torch.Tensor, pairs: np.ndarray) -> np.ndarray:
    """float64 [P] logits of ``(relation, head, tail)`` rows."""
    t = torch.as_tensor(pairs, dtype=torch.long)
    return model.score(z, t[:, 0], t[:, 1], t[:, 2]).double().numpy()


@torch.no_grad()
def mrr_ranks(model: LinkPredictor, z: torch.Tensor, data: LinkData, pairs: np.ndarray, batch: int = 512,
              known: set | None = None) -> np.ndarray:
    """Filtered rank of the true tail of each positive ``(r, h, t)`` among the tails of relation r.

    Candidate tails of a query ``(h, r, ?)``: the nodes that are an endpoint of some train edge of relation r
    (a type-consistent corruption set, as for typed knowledge graphs), plus the true tail itself. Filtered:
    other known true tails of ``(h, r)`` (train, valid and test positives, both directions if undirected)
    are removed; ties count against the truth (:func:`model.metrics.filtered_ranks`).
    """
    known = data.known_edges() if known is None else known
    out = np.zeros(len(pairs), np.int64)
    for r in np.unique(pairs[:, 0]):
        idx = np.flatnonzero(pairs[:, 0] == r)
        cand = data.relation_nodes(int(r))
        col = {int(c): j for j, c in enumerate(cand)}
        extra = sorted({int(t) for t in pairs[idx, 2]} - set(col))
        cand = np.concatenate([cand, np.array(extra, np.int64)])
        col.update({c: len(col) + j for j, c in enumerate(extra)})
        by_head: dict[int, list[int]] = {}
        for rel, h, t in known:
            if rel == r and t in col:
                by_head.setdefault(h, []).append(col[t])
        tails = torch.as_tensor(cand)
        for start in range(0, len(idx), batch):
            rows = pairs[idx[start:start + batch]]
            q = torch.as_tensor(rows, dtype=torch.long)
            scores = model.score_all(z, q[:, 0], q[:, 1], tails).double().numpy()
            mask = np.zeros(scores.shape, bool)
            for b, h in enumerate(rows[:, 1]):
                mask[b, by_head.get(int(h), [])] = True
            true_col = np.array([col[int(t)] for t in rows[:, 2]])
            out[idx[start:start + batch]] = filtered_ranks(scores, true_col, mask)
    return out


def precision_recall_at(labels: np.ndarray, logits: np.ndarray, probability: float) -> dict[str, float]:
    """Precision and recall (percent, all edge types pooled) of predicting an edge when sigmoid(logit) >= p.

    What a ``predict --threshold p`` would get on pairs drawn like the split's (half true edges).
    """
    predicted = logits >= math.log(probability / (1.0 - probability))
    tp = float((predicted & (labels == 1)).sum())
    return {"precision": 100.0 * tp / max(predicted.sum(), 1), "recall": 100.0 * tp / max(labels.sum(), 1)}


def evaluate_split(model: LinkPredictor, z: torch.Tensor, data: LinkData, split: str, with_mrr: bool = True,
                   mrr_max_queries: int | None = None, seed: int = 0) -> dict:
    """GATNE-protocol metrics of ``split`` ("valid" / "test"), in percent.

    ``all``: every labelled pair scored (pairs with a node unseen in train get that node's zero embedding).
    ``gatne_rule``: pairs with a node unseen in train skipped, as GATNE's evaluation does; equal to ``all``
    when there are none. ``MRR``: filtered MRR over the split's positives (:func:`mrr_ranks`), optionally
    on a random subset of ``mrr_max_queries`` of them.
    """
    pairs, labels = getattr(data, split), getattr(data, f"{split}_labels")
    scores = score_pairs(model, z, pairs)
    types = np.array(data.relations, dtype=object)[pairs[:, 0]].astype(str)
    res = {"all": link_prediction_metrics(types, labels, scores)}
    seen = (pairs[:, 1:] < data.n_seen).all(1)
    res["gatne_rule"] = (res["all"] if seen.all()
                         else link_prediction_metrics(types[seen], labels[seen], scores[seen]))
    res["skipped_pairs_unseen_node"] = int((~seen).sum())
    res["at_probability"] = {str(p): precision_recall_at(labels, scores, p) for p in (0.5, 0.9, 0.99)}
    if with_mrr:
        pos = pairs[labels == 1]
        if mrr_max_queries and len(pos) > mrr_max_queries:
            pos = pos[np.random.default_rng(seed).choice(len(pos), mrr_max_queries, replace=False)]
        ranks = mrr_ranks(model, z, data, pos)
        res["MRR"] = mean_reciprocal_rank(ranks)
        res["MRR_queries"] = len(ranks)
        res["Hits@10"] = float(100.0 * (ranks <= 10).mean())
        res["MRR_per_type"] = {data.relations[int(r)]: mean_reciprocal_rank(ranks[pos[:, 0] == r])
                               for r in np.unique(pos[:, 0])}
    return res


def save_checkpoint(path: Path, model: LinkPredictor, cfg: LinkPredConfig, data: LinkData, epoch: int) -> None:
    torch.save({
        "state": model.state_dict(),
        "config": asdict(cfg),
        "nodes": list(data.nodes),
        "relations": list(data.relations),
        "n_seen": data.n_seen,
        "epoch": epoch,
    }, path)


def load_checkpoint(path: str | Path, data: LinkData | None = None) -> tuple[LinkPredictor, LinkPredConfig, LinkData]:
    """Model, config and data of a ``best.pt``; the data are rebuilt from the config unless given, then checked."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = LinkPredConfig(**ckpt["config"])
    data = load_data(cfg) if data is None else data
    if data.nodes != ckpt["nodes"] or data.relations != ckpt["relations"]:
        raise ValueError(f"{path}: the data ({cfg.data}) no longer match the checkpoint's node/relation lists")
    model = LinkPredictor(data.n_nodes, len(data.relations), cfg.dim, cfg.layers, cfg.dropout)
    model.load_state_dict(ckpt["state"])
    model.eval()
    return model, cfg, data


def full_graph(data: LinkData) -> tuple[torch.Tensor, torch.Tensor]:
    return message_graph(torch.as_tensor(data.train), data.undirected)


def train_model(cfg: LinkPredConfig, data: LinkData | None = None, progress: bool = True) -> tuple[LinkPredictor, dict]:
    """Fit on ``data`` (loaded from ``cfg.data`` if None); returns the best-valid model and the history.

    Writes nothing; :func:`train` adds the run folder.
    """
    from tqdm import tqdm

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    data = load_data(cfg) if data is None else data
    gen = torch.Generator().manual_seed(cfg.seed)
    model = LinkPredictor(data.n_nodes, len(data.relations), cfg.dim, cfg.layers, cfg.dropout)
    unseen = torch.arange(data.n_seen, data.n_nodes)
    model.forget(unseen)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    train_edges = torch.as_tensor(data.train)
    edge_index, edge_type = full_graph(data)
    corrupt = Corruptor(data, cfg.negatives_from)
    history: list[dict] = []
    best_auc, best_state, best_epoch, bad = -math.inf, None, -1, 0
    started = time.perf_counter()
    bar = tqdm(range(cfg.epochs), desc="linkpred", disable=not progress)
    for epoch in bar:
        model.train()
        perm = torch.randperm(len(train_edges), generator=gen)
        losses = []
        for chunk in perm.chunk(cfg.chunks):
            keep = torch.ones(len(train_edges), dtype=torch.bool)
            keep[chunk] = False
            z = model.encode(*message_graph(train_edges[keep], data.undirected))
            pos = train_edges[chunk]
            neg = corrupt(pos, cfg.negatives, gen)
            loss = (nn.functional.softplus(-model.score(z, pos[:, 0], pos[:, 1], pos[:, 2])).mean()
                    + nn.functional.softplus(model.score(z, neg[:, 0], neg[:, 1], neg[:, 2])).mean())
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.forget(unseen)
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            z = model.encode(edge_index, edge_type)
        row = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "seconds": time.perf_counter() - started}
        if len(data.valid):
            row["valid"] = evaluate_split(model, z, data, "valid", with_mrr=False)["all"]["mean"]
            auc = row["valid"]["ROC-AUC"]
        else:
            auc = -row["loss"]
        history.append(row)
        bar.set_postfix(loss=f"{row['loss']:.4f}", valid_auc=f"{auc:.2f}")
        if auc > best_auc:
            best_auc, best_epoch, bad = auc, epoch + 1, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
            if bad >= cfg.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return model, {"history": history, "best_epoch": best_epoch, "train_seconds": time.perf_counter() - started}


def train(cfg: LinkPredConfig) -> dict:
    """Train, evaluate valid and test with the GATNE protocol, write ``best.pt``, ``results.json``, ``curves.png``."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = load_data(cfg)
    load_seconds = time.perf_counter() - t0
    print(json.dumps(data.summary()))
    model, fit = train_model(cfg, data)
    save_checkpoint(out / "best.pt", model, cfg, data, fit["best_epoch"])
    results = {"config": asdict(cfg), "data": data.summary(), "load_seconds": load_seconds, **fit}
    results.update(evaluate_model(model, cfg, data))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plot_curves(fit["history"], out / "curves.png")
    print(format_results(results))
    return results


def evaluate_model(model: LinkPredictor, cfg: LinkPredConfig, data: LinkData) -> dict:
    """``{"valid": ..., "test": ...}`` metrics (splits that have pairs), with the evaluation time."""
    t0 = time.perf_counter()
    with torch.no_grad():
        z = model.encode(*full_graph(data))
    res = {name: evaluate_split(model, z, data, name, mrr_max_queries=cfg.mrr_max_queries, seed=cfg.seed)
           for name in ("valid", "test") if len(getattr(data, name))}
    res["eval_seconds"] = time.perf_counter() - t0
    return res


def format_results(results: dict) -> str:
    """A small text table of the test (or valid) metrics."""
    lines = ["split  ROC-AUC  PR-AUC   AP      F1      MRR"]
    for name in ("valid", "test"):
        if name in results:
            m = results[name]["all"]["mean"]
            lines.append(f"{name:5s}  {m['ROC-AUC']:.2f}    {m['PR-AUC']:.2f}   {m['AP']:.2f}   {m['F1']:.2f}   "
                         f"{results[name].get('MRR', float('nan')):.2f}")
    return "\n".join(lines)


def plot_curves(history: list[dict], path: Path) -> None:
    """Training loss and valid ROC-AUC (mean over edge types) per epoch, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, [h["loss"] for h in history], marker="o")
    a.set(xlabel="epoch", ylabel="BCE loss (pos + neg)", title="training loss")
    if history and "valid" in history[0]:
        b.plot(epochs, [h["valid"]["ROC-AUC"] for h in history], marker="o", color="tab:green")
    b.set(xlabel="epoch", ylabel="ROC-AUC (%)", title="valid ROC-AUC, mean over edge types")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@torch.no_grad()
def predict_facts(model: LinkPredictor, data: LinkData, threshold: float = 0.9, top_k: int = 5,
                  relations: list[str] | None = None, label: str = "Item", prefix: str = "",
                  batch: int = 512) -> list[Fact]:
    """New links as ``Fact(label, a, "RELATED", label, b, {"type": relation, "score": p})``.

    For every relation (default: the evaluated ones) and every node with a train edge of it, the ``top_k``
    candidate tails (nodes of the same relation) by probability ``p = sigmoid(logit)`` with ``p >=
    threshold`` that are not a known edge (train, valid or test positive, either direction) and not the node
    itself. An undirected pair found from both ends is emitted once, ``a`` < ``b`` by node index, with the
    higher score. Node ids are the data's external ids with ``prefix`` (to match ``igrec kg load --prefix``).
    """
    z = model.encode(*full_graph(data))
    rel_index = {name: i for i, name in enumerate(data.relations)}
    names = relations or [data.relations[r] for r in data.eval_relations] or list(data.relations)
    known = data.known_edges()
    best: dict[tuple[int, int, int], float] = {}
    for name in names:
        r = rel_index[name]
        cand = torch.as_tensor(data.relation_nodes(r))
        for start in range(0, len(cand), batch):
            heads = cand[start:start + batch]
            p = torch.sigmoid(model.score_all(z, torch.full_like(heads, r), heads, cand))
            p[torch.arange(len(heads)), torch.arange(start, start + len(heads))] = -1.0
            vals, cols = p.topk(min(top_k + 64, len(cand)), dim=1)
            for h, row_v, row_c in zip(heads.tolist(), vals.tolist(), cols.tolist(), strict=True):
                kept = 0
                for v, c in zip(row_v, row_c, strict=True):
                    if v < threshold or kept == top_k:
                        break
                    t = int(cand[c])
                    if t == h or (r, h, t) in known:
                        continue
                    kept += 1
                    key = (r, min(h, t), max(h, t)) if data.undirected else (r, h, t)
                    best[key] = max(best.get(key, 0.0), v)
    return [Fact(label, prefix + data.nodes[h], "RELATED", label, prefix + data.nodes[t],
                 {"type": data.relations[r], "score": round(float(v), 6)})
            for (r, h, t), v in sorted(best.items(), key=lambda kv: -kv[1])]

