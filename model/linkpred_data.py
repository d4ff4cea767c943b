"""Link-prediction data in the GATNE folder format, and igrec's own multiplex item graph in that format.

numpy only (importable without torch).

GATNE format (THUDM/GATNE ``data/<name>/``): ``train.txt`` lines ``type a b`` (positive edges);
``valid.txt`` / ``test.txt`` lines ``type a b label`` (1 = held-out edge, 0 = sampled non-edge). Edge types
and node ids are arbitrary tokens; they are mapped to indices here. Nodes seen in ``train.txt`` get indices
``0..n_seen-1``; nodes that only occur in valid/test are appended after them (they have no edges, so a model
knows nothing about them; see :attr:`LinkData.n_seen`).

igrec's item graph (:func:`build_item_graph`): from a session split with a ``kg.txt`` (e.g.
``session_kg_dsrhk/Tmall``), item-item relations ``next`` (consecutive clicks of a train session, both
orders) and ``co_session`` (two items of one train session 2..``co_window`` clicks apart), plus the
knowledge-graph attributes as context edges item -> entity (``cat_id``, ``seller_id``, ``brand_id``; never
held out or evaluated). A share of each item-item relation's edges is held out with as many sampled
non-edges (:func:`hold_out`) and the result can be written as a GATNE folder (:func:`write_gatne`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from model.knowledge import read_kg, relation_name, relation_names


@dataclass
class LinkData:
    """A multiplex graph with held-out labelled pairs, all as indices.

    Attributes:
        nodes: external node id (string) of each node index.
        relations: edge type name of each relation index.
        n_seen: nodes ``0..n_seen-1`` occur in train edges; the rest only in valid/test.
        train: int64 [E, 3] rows ``(relation, head, tail)``.
        valid, test: int64 [P, 3] labelled pairs; ``valid_labels`` / ``test_labels`` int64 [P] in {0, 1}.
        undirected: edges hold in both directions (GATNE's graphs; igrec's item relations).
        eval_relations: relation indices that valid/test pairs use (the ones metrics average over).
    """

    nodes: list[str]
    relations: list[str]
    n_seen: int
    train: np.ndarray
    valid: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    valid_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    test: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    undirected: bool = True

    @property
    def n_nodes(self) -> int:
        return len(self.nodes)

    @property
    def eval_relations(self) -> list[int]:
        return sorted(set(self.valid[:, 0].tolist()) | set(self.test[:, 0].tolist()))

    def node_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.nodes)}

    def known_edges(self) -> set[tuple[int, int, int]]:
        """Every true edge ``(r, h, t)`` of train and the positive valid/test pairs (both orders if undirected)."""
        rows = [self.train, self.valid[self.valid_labels == 1], self.test[self.test_labels == 1]]
        edges = np.concatenate(rows)
        out = set(map(tuple, edges.tolist()))
        if self.undirected:
            out |= set(map(tuple, edges[:, [0, 2, 1]].tolist()))
        return out

    def relation_nodes(self, relation: int) -> np.ndarray:
        """int64: nodes that are an endpoint of a train edge of ``relation`` (its candidate heads/tails)."""
        e = self.train[self.train[:, 0] == relation]
        return np.unique(e[:, 1:])

    def summary(self) -> dict:
        return {
            "nodes": self.n_nodes,
            "nodes_seen_in_train": self.n_seen,
            "relations": list(self.relations),
            "train_edges": {self.relations[r]: int((self.train[:, 0] == r).sum()) for r in range(len(self.relations))},
            "valid_pairs": int(self.valid.shape[0]),
            "test_pairs": int(self.test.shape[0]),
            "test_pairs_with_unseen_node": int((self.test[:, 1:] >= self.n_seen).any(1).sum()),
        }


def _read_lines(path: Path, n_fields: int) -> list[list[str]]:
    rows = []
    with path.open() as f:
        for number, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != n_fields:
                raise ValueError(f"{path}:{number}: expected {n_fields} fields, got {len(parts)}")
            rows.append(parts)
    return rows


def read_gatne(folder: str | Path) -> LinkData:
    """Read ``train.txt`` and, where present, ``valid.txt`` / ``test.txt`` of a GATNE-format folder."""
    folder = Path(folder)
    train_rows = _read_lines(folder / "train.txt", 3)
    labelled = {
        name: _read_lines(folder / f"{name}.txt", 4) if (folder / f"{name}.txt").exists() else []
        for name in ("valid", "test")
    }
    relations: dict[str, int] = {}
    nodes: dict[str, int] = {}

    def encode(rows: list[list[str]]) -> np.ndarray:
        out = np.empty((len(rows), 3), np.int64)
        for i, row in enumerate(rows):
            r = relations.setdefault(row[0], len(relations))
            out[i] = (r, nodes.setdefault(row[1], len(nodes)), nodes.setdefault(row[2], len(nodes)))
        return out

    train = encode(train_rows)
    n_seen = len(nodes)
    splits = {}
    for name, rows in labelled.items():
        splits[name] = encode(rows) if rows else np.zeros((0, 3), np.int64)
        labels = np.array([int(r[3]) for r in rows], np.int64)
        if not np.isin(labels, (0, 1)).all():
            raise ValueError(f"{folder / name}.txt: labels must be 0 or 1")
        splits[name + "_labels"] = labels
    return LinkData(nodes=list(nodes), relations=list(relations), n_seen=n_seen, train=train, **splits)


def write_gatne(data: LinkData, folder: str | Path) -> None:
    """Write ``data`` as a GATNE folder (relation names and node ids as tokens, so they must hold no space)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rel, node = data.relations, data.nodes

    def line(row: np.ndarray) -> str:
        return f"{rel[row[0]]} {node[row[1]]} {node[row[2]]}"

    (folder / "train.txt").write_text("".join(line(r) + "\n" for r in data.train))
    for name, pairs, labels in (("valid", data.valid, data.valid_labels), ("test", data.test, data.test_labels)):
        (folder / f"{name}.txt").write_text("".join(f"{line(r)} {y}\n" for r, y in zip(pairs, labels, strict=True)))


def session_edges(sessions: list[list[str]], min_gap: int, max_gap: int) -> set[tuple[str, str]]:
    """Unordered item pairs ``(a, b)``, ``a < b``, of distinct items ``min_gap..max_gap`` clicks apart in a session."""
    out: set[tuple[str, str]] = set()
    for s in sessions:
        for gap in range(min_gap, max_gap + 1):
            for a, b in zip(s, s[gap:], strict=False):
                if a != b:
                    out.add((a, b) if a < b else (b, a))
    return out


def named_kg(path: Path) -> list[tuple[str, str, str]]:
    """``(item, relation name, entity)`` rows of a ``kg.txt`` (:func:`model.knowledge.read_kg`), relations
    named as in the knowledge graph (``brand_id:2`` in ``relations.txt`` -> ``brand``; else ``r<id>``)."""
    names = relation_names(path)
    return [(str(h), relation_name(names, r), str(t)) for h, r, t in read_kg(path).tolist()]


def hold_out(
    edges: dict[str, set[tuple[str, str]]],
    context: list[tuple[str, str, str]],
    valid_share: float,
    test_share: float,
    seed: int,
) -> LinkData:
    """Split each relation of ``edges`` into train / valid / test positives and add balanced negatives.

    An edge is held out only if both its ends keep at least one train edge (any relation, context
    included), so every evaluated node has something to learn from. Each held-out positive of relation r
    gets one negative: a uniformly drawn pair of nodes of relation r that is no edge of r in any split.

    Args:
        edges: relation name -> unordered node pairs (the relations that are evaluated).
        context: ``(head, relation, tail)`` edges that only ever go to train (e.g. item -> attribute).
        valid_share, test_share: fraction of each evaluated relation's edges held out for valid / test.
    """
    rng = np.random.default_rng(seed)
    degree: dict[str, int] = {}
    for pairs in edges.values():
        for a, b in pairs:
            degree[a] = degree.get(a, 0) + 1
            degree[b] = degree.get(b, 0) + 1
    for h, _, t in context:
        degree[h] = degree.get(h, 0) + 1
        degree[t] = degree.get(t, 0) + 1
    train: list[tuple[str, str, str]] = []
    held: dict[str, list[list[tuple[str, str]]]] = {}
    for rel, pairs in edges.items():
        ordered = sorted(pairs)
        order = rng.permutation(len(ordered))
        n_valid, n_test = int(valid_share * len(ordered)), int(test_share * len(ordered))
        out_valid: list[tuple[str, str]] = []
        out_test: list[tuple[str, str]] = []
        for i in order:
            a, b = ordered[i]
            target = out_test if len(out_test) < n_test else out_valid if len(out_valid) < n_valid else None
            if target is not None and degree[a] > 1 and degree[b] > 1:
                degree[a] -= 1
                degree[b] -= 1
                target.append((a, b))
            else:
                train.append((rel, a, b))
        held[rel] = [out_valid, out_test]
    train.extend((r, h, t) for h, r, t in context)
    node_ids: dict[str, int] = {}
    rel_ids = {r: i for i, r in enumerate(list(edges) + sorted({r for _, r, _ in context} - set(edges)))}
    train_arr = np.array([(rel_ids[r], node_ids.setdefault(h, len(node_ids)), node_ids.setdefault(t, len(node_ids)))
                          for r, h, t in train], np.int64)
    nodes = list(node_ids)
    splits: dict[str, list] = {"valid": [], "test": []}
    for rel, (out_valid, out_test) in held.items():
        r = rel_ids[rel]
        rel_nodes = np.unique(train_arr[train_arr[:, 0] == r][:, 1:])
        taken = {(min(a, b), max(a, b)) for a, b in edges[rel]}
        for name, positives in (("valid", out_valid), ("test", out_test)):
            for a, b in positives:
                splits[name].append((r, node_ids[a], node_ids[b], 1))
            for _ in positives:
                while True:
                    a, b = rng.choice(rel_nodes, 2)
                    key = (min(nodes[a], nodes[b]), max(nodes[a], nodes[b]))
                    if a != b and key not in taken:
                        taken.add(key)
                        break
                splits[name].append((r, int(a), int(b), 0))
    arrays = {name: np.array(rows, np.int64).reshape(-1, 4) for name, rows in splits.items()}
    return LinkData(
        nodes=nodes, relations=list(rel_ids), n_seen=len(nodes), train=train_arr,
        valid=arrays["valid"][:, :3], valid_labels=arrays["valid"][:, 3],
        test=arrays["test"][:, :3], test_labels=arrays["test"][:, 3],
    )


def build_item_graph(
    folder: str | Path,
    co_window: int = 3,
    with_kg: bool = True,
    valid_share: float = 0.05,
    test_share: float = 0.10,
    seed: int = 0,
) -> LinkData:
    """igrec's multiplex item graph from a session split folder (``train_sessions.txt`` and ``kg.txt``).

    Relations ``next`` (consecutive clicks), ``co_session`` (2..``co_window`` clicks apart, minus pairs
    that are already ``next`` so the two relations do not just copy each other) are held out and
    evaluated; ``kg.txt`` attributes (entity ids prefixed ``e``) are train-only context edges. Only train
    sessions are read: the test sessions of the split stay unseen. Shares as GATNE amazon (about 5 % valid,
    10 % test of each relation).
    """
    folder = Path(folder)
    sessions = [line.split() for line in (folder / "train_sessions.txt").read_text().splitlines() if line.strip()]
    nxt = session_edges(sessions, 1, 1)
    edges = {"next": nxt}
    if co_window >= 2:
        edges["co_session"] = session_edges(sessions, 2, co_window) - nxt
    context = []
    if with_kg and (folder / "kg.txt").exists():
        items = {i for pairs in edges.values() for p in pairs for i in p}
        context = [(h, r, "e" + t) for h, r, t in named_kg(folder / "kg.txt") if h in items]
    return hold_out(edges, context, valid_share, test_share, seed)


def heuristic_scores(data: LinkData, pairs: np.ndarray, kind: str = "cn") -> np.ndarray:
    """Training-free scores of ``(relation, head, tail)`` pairs on the train graph (for scale, not for use).

    ``cn``: common neighbours in the same relation plus, as a tie-breaker below one neighbour, those over all
    relations / 1000; ``pa``: preferential attachment ``deg(h) * deg(t)`` over all relations (popularity only).
    """
    n = data.n_nodes
    neighbours: dict[tuple[int, int], set[int]] = {}
    everyone: list[set[int]] = [set() for _ in range(n)]
    for r, h, t in data.train.tolist():
        neighbours.setdefault((r, h), set()).add(t)
        everyone[h].add(t)
        if data.undirected:
            neighbours.setdefault((r, t), set()).add(h)
            everyone[t].add(h)
    out = np.zeros(len(pairs), np.float64)
    empty: set[int] = set()
    for i, (r, h, t) in enumerate(pairs.tolist()):
        if kind == "pa":
            out[i] = len(everyone[h]) * len(everyone[t])
        elif kind == "cn":
            same = len(neighbours.get((r, h), empty) & neighbours.get((r, t), empty))
            out[i] = same + len(everyone[h] & everyone[t]) / 1000.0
        else:
            raise ValueError(f"unknown heuristic {kind!r}; use cn or pa")
    return out


@dataclass
class LinkPredConfig:
    """Options of one link-prediction run (plain values; stored in results and checkpoints)."""

    data: str
    out: str = "runs/linkpred"
    dim: int = 64
    layers: int = 2
    dropout: float = 0.1
    epochs: int = 200
    chunks: int = 4
    negatives: int = 4
    negatives_from: str = "all"
    lr: float = 0.01
    weight_decay: float = 0.0
    patience: int = 6
    seed: int = 0
    threads: int | None = 1
    co_window: int = 3
    with_kg: bool = True
    valid_share: float = 0.05
    test_share: float = 0.10
    mrr_max_queries: int | None = None


def load_data(cfg: LinkPredConfig) -> LinkData:
    """A GATNE folder (``train.txt``) or, for a session split folder (``train_sessions.txt``), igrec's item graph."""
    folder = Path(cfg.data)
    if (folder / "train.txt").exists():
        return read_gatne(folder)
    if (folder / "train_sessions.txt").exists():
        return build_item_graph(folder, cfg.co_window, cfg.with_kg, cfg.valid_share, cfg.test_share, cfg.seed)
    raise FileNotFoundError(f"{folder}: neither train.txt (GATNE format) nor train_sessions.txt (session split)")
