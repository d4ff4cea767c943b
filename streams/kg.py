"""Reading the knowledge graph back: counts, neighbourhoods and exact snapshots (for tests and replays)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import orjson
from neo4j import Driver

from model.facts import Fact
from streams.triples import NODE_LABELS, Triple, TripleError, from_fact

Snapshot = tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]


def snapshot(driver: Driver, database: str, prefix: str = "") -> Snapshot:
    """Every node whose id starts with ``prefix`` (labels, properties) and every relationship between two
    such nodes (head id, type, properties, tail id), sorted, with ``prefix`` cut from the ids; so two
    graphs written under different prefixes compare equal exactly when they are the same graph."""
    cut = len(prefix)
    nodes, _, _ = driver.execute_query(
        "MATCH (n) WHERE n.id STARTS WITH $p RETURN labels(n) AS labels, properties(n) AS props",
        p=prefix,
        database_=database,
    )
    rels, _, _ = driver.execute_query(
        "MATCH (h)-[r]->(t) WHERE h.id STARTS WITH $p AND t.id STARTS WITH $p "
        "RETURN h.id AS head, type(r) AS type, properties(r) AS props, t.id AS tail",
        p=prefix,
        database_=database,
    )
    node_rows = sorted(
        (tuple(sorted(r["labels"])), r["props"]["id"][cut:], _items(r["props"], skip="id")) for r in nodes
    )
    rel_rows = sorted((r["head"][cut:], r["type"], _items(r["props"]), r["tail"][cut:]) for r in rels)
    return node_rows, rel_rows


def _items(props: dict[str, Any], skip: str | None = None) -> tuple[tuple[str, Any], ...]:
    return tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in props.items() if k != skip))


def kg_txt_triples(path: str | Path, prefix: str = "", limit: int | None = None) -> Iterator[Triple]:
    """Item knowledge of a ``kg.txt`` (``item relation entity`` per line, as in shared/data/session_kg_dsrhk) as
    triples: :func:`model.knowledge.kg_facts` (deduplicated; category -> IN_CATEGORY, other relations -> HAS),
    the first ``limit`` of them."""
    from model.knowledge import kg_facts

    return (from_fact(fact) for fact in itertools.islice(kg_facts(path, prefix), limit))


def facts_jsonl_triples(path: str | Path, prefix: str = "", limit: int | None = None) -> Iterator[Triple]:
    """Triples from a JSON-lines file of :class:`model.facts.Fact` objects (written by ``igrec items facts`` and
    ``igrec linkpred predict``), every node id prefixed with ``prefix``.

    Raises :class:`TripleError` naming the line of the first fact that is not valid JSON, lacks a field, or
    falls outside the whitelisted schema, so a bad file is refused before anything is published.
    """
    fields = set(Fact.__dataclass_fields__)
    with Path(path).open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if limit is not None and number > limit:
                return
            if not line.strip():
                continue
            try:
                data = orjson.loads(line)
                if not isinstance(data, dict) or not {"head_label", "head_id"} <= data.keys() <= fields:
                    raise TripleError(f"expected an object with the fields of a Fact ({sorted(fields)})")
                fact = Fact(**data)
                fact = Fact(**{**data, "head_id": f"{prefix}{fact.head_id}",
                               "tail_id": f"{prefix}{fact.tail_id}" if fact.tail_id is not None else None})
                yield from_fact(fact)
            except (orjson.JSONDecodeError, TypeError, TripleError) as error:
                raise TripleError(f"{path}:{number}: {error}") from error


# ---------------------------------------------------------------- neighbourhoods, pictures, RDF


@dataclass
class Subgraph:
    """Nodes ``{element_id: (label, id, props)}`` and relationships ``[(head, type, props, tail)]``."""

    nodes: dict[str, tuple[str, str, dict[str, Any]]] = field(default_factory=dict)
    rels: list[tuple[str, str, dict[str, Any], str]] = field(default_factory=list)


def neighbourhood(
    driver: Driver, database: str, label: str, node_id: str, hops: int = 1, limit: int = 30, per_neighbour: int = 4
) -> Subgraph:
    """One node, up to ``limit`` of its neighbours shared fairly among its relationship types (round robin,
    so a picture of an item shows its categories, attributes and interests as well as its many NEXT links),
    and (``hops`` = 2) up to ``per_neighbour`` of each neighbour's own neighbours.

    Fetching hop by hop keeps every chosen direct neighbour in the picture instead of whichever long paths a
    single variable-length match happens to return first. The centre is the first node of the result.
    """
    if label not in NODE_LABELS:
        raise ValueError(f"label must be one of {NODE_LABELS}")
    if hops not in (1, 2):
        raise ValueError("hops must be 1 or 2")
    records, _, _ = driver.execute_query(
        f"MATCH (n:{label} {{id: $id}}) OPTIONAL MATCH (n)-[r]-(m) "
        "WITH n, type(r) AS kind, collect([r, m])[..$limit] AS near ORDER BY kind "
        "RETURN n, kind, near",
        id=node_id,
        limit=limit,
        database_=database,
    )
    graph = Subgraph()
    if not records:
        return graph
    _add_node(graph, records[0]["n"])
    by_kind = [[(r, m) for r, m in record["near"] if r is not None] for record in records]
    chosen = [pair for pairs in itertools.zip_longest(*by_kind) for pair in pairs if pair is not None][:limit]
    seen: set[str] = set()
    _add_pairs(graph, chosen, seen)
    if hops == 2 and chosen:
        far, _, _ = driver.execute_query(
            "UNWIND $ids AS mid MATCH (m) WHERE elementId(m) = mid "
            "OPTIONAL MATCH (m)-[r2]-(k) WHERE elementId(k) <> $centre "
            "WITH m, collect([r2, k])[..$per] AS far RETURN far",
            ids=[m.element_id for _, m in chosen],
            centre=records[0]["n"].element_id,
            per=per_neighbour,
            database_=database,
        )
        for record in far:
            _add_pairs(graph, [(r2, k) for r2, k in record["far"] if r2 is not None], seen)
    return graph


def _add_pairs(graph: Subgraph, pairs: list[tuple[Any, Any]], seen: set[str]) -> None:
    for rel, other in pairs:
        if rel.element_id in seen:
            continue
        seen.add(rel.element_id)
        _add_node(graph, other)
        graph.rels.append((rel.start_node.element_id, rel.type, dict(rel), rel.end_node.element_id))


def _add_node(graph: Subgraph, n: Any) -> None:
    if n is not None and n.element_id not in graph.nodes and n.labels:
        graph.nodes[n.element_id] = (next(iter(n.labels)), n.get("id", "?"), dict(n))


def all_graph(driver: Driver, database: str) -> Subgraph:
    """The whole igrec graph (every labelled node and every relationship between them), for RDF export."""
    graph = Subgraph()
    nodes, _, _ = driver.execute_query(
        "MATCH (n) RETURN elementId(n) AS key, labels(n) AS labels, properties(n) AS props", database_=database
    )
    for record in nodes:
        labels = [lab for lab in record["labels"] if lab in NODE_LABELS]
        if labels and "id" in record["props"]:
            graph.nodes[record["key"]] = (labels[0], record["props"]["id"], record["props"])
    rels, _, _ = driver.execute_query(
        "MATCH (h)-[r]->(t) RETURN elementId(h) AS h, type(r) AS type, properties(r) AS props, elementId(t) AS t",
        database_=database,
    )
    graph.rels = [
        (r["h"], r["type"], r["props"], r["t"]) for r in rels if r["h"] in graph.nodes and r["t"] in graph.nodes
    ]
    return graph


SCHEMA_NS = "urn:igrec:schema#"


def to_turtle(graph: Subgraph, star: bool = True) -> str:
    """The subgraph as Turtle in the shape neosemantics (n10s) imports: every node an IRI
    ``<urn:igrec:{Label}/{id}>`` typed with its label (``rdf:type`` becomes the Neo4j label), node
    properties as literals, relationships as object properties. Relationship properties (``count``,
    ``pos``, ...) are written as RDF-star annotations when ``star`` (import them with n10s's ``Turtle-star``
    format); without ``star`` they are left out and the output is plain Turtle."""
    lines = [f"@prefix ig: <{SCHEMA_NS}> .", "@prefix xsd: <http://www.w3.org/2001/XMLSchema#> .", ""]
    iri = {key: f"<urn:igrec:{label}/{quote(node_id, safe='')}>" for key, (label, node_id, _) in graph.nodes.items()}
    for key, (label, _, props) in sorted(graph.nodes.items(), key=lambda kv: iri[kv[0]]):
        facts = [f"a ig:{label}"] + [f"ig:{name} {_literal(value)}" for name, value in sorted(props.items())]
        lines.append(f"{iri[key]} " + " ;\n    ".join(facts) + " .")
    for head, rel, props, tail in graph.rels:
        triple = f"{iri[head]} ig:{rel} {iri[tail]}"
        lines.append(f"{triple} .")
        if star and props:
            annotations = " ;\n    ".join(f"ig:{name} {_literal(value)}" for name, value in sorted(props.items()))
            lines.append(f"<< {triple} >> {annotations} .")
    return "\n".join(lines) + "\n"


def _literal(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(_literal(v) for v in value)
    if isinstance(value, bool):
        return f'"{str(value).lower()}"^^xsd:boolean'
    if isinstance(value, int):
        return f'"{value}"^^xsd:long'
    if isinstance(value, float):
        return f'"{value!r}"^^xsd:double'
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped}"'


LABEL_COLOURS = {
    "User": "#4e79a7",
    "Session": "#a0cbe8",
    "Item": "#f28e2b",
    "Category": "#59a14f",
    "Keyword": "#edc948",
    "Entity": "#b07aa1",
    "Interest": "#e15759",
}


def draw(graph: Subgraph, path: str | Path, title: str = "", seed: int = 0) -> Path:
    """Draw the subgraph to a PNG: a force-directed layout, nodes coloured by label, edges named by type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = list(graph.nodes)
    position = _spring_layout(len(keys), [(keys.index(h), keys.index(t)) for h, _, _, t in graph.rels], seed)
    fig, ax = plt.subplots(figsize=(11, 8), dpi=110)
    for head, rel, props, tail in graph.rels:
        (x0, y0), (x1, y1) = position[keys.index(head)], position[keys.index(tail)]
        ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "#999", "lw": 0.8})
        label = f"{rel} {props['count']}" if "count" in props else rel
        ax.text((x0 + x1) / 2, (y0 + y1) / 2, label, fontsize=6, color="#666", ha="center")
    for index, key in enumerate(keys):
        label, node_id, _ = graph.nodes[key]
        centre = index == 0
        ax.scatter(
            *position[index],
            s=700 if centre else 260,
            color=LABEL_COLOURS.get(label, "#ccc"),
            zorder=3,
            edgecolors="k",
            linewidths=2.5 if centre else 1.0,
        )
        ax.text(
            position[index][0],
            position[index][1] - 0.045,
            f"{label}\n{node_id[:18]}",
            fontsize=6,
            ha="center",
            va="top",
            zorder=4,
        )
    present = {label for label, _, _ in graph.nodes.values()}
    handles = [
        plt.Line2D([], [], marker="o", ls="", color=c, label=lab) for lab, c in LABEL_COLOURS.items() if lab in present
    ]
    ax.legend(handles=handles, loc="upper right", fontsize=7)
    ax.set_title(title or f"{len(keys)} nodes, {len(graph.rels)} relationships")
    ax.set_axis_off()
    path = Path(path)
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _spring_layout(n: int, edges: list[tuple[int, int]], seed: int, steps: int = 200) -> np.ndarray:
    """Fruchterman-Reingold positions in [0, 1]^2 for ``n`` nodes (numpy, O(n^2) per step: for pictures)."""
    rng = np.random.default_rng(seed)
    pos = rng.random((n, 2))
    if n < 2:
        return pos
    k = 1.0 / np.sqrt(n)
    ends = np.array(edges, dtype=np.int64).reshape(-1, 2)
    for step in range(steps):
        delta = pos[:, None, :] - pos[None, :, :]
        dist = np.maximum(np.linalg.norm(delta, axis=-1), 1e-3)
        force = (delta / dist[..., None] * (k * k / dist)[..., None]).sum(axis=1)
        if len(ends):
            pull = pos[ends[:, 0]] - pos[ends[:, 1]]
            length = np.maximum(np.linalg.norm(pull, axis=-1, keepdims=True), 1e-3)
            spring = pull * length / k
            np.add.at(force, ends[:, 0], -spring)
            np.add.at(force, ends[:, 1], spring)
        temperature = 0.1 * (1 - step / steps) + 1e-3
        norm = np.maximum(np.linalg.norm(force, axis=-1, keepdims=True), 1e-9)
        pos += force / norm * np.minimum(norm, temperature)
    pos -= pos.min(axis=0)
    return pos / np.maximum(pos.max(axis=0), 1e-9)
