"""Knowledge facts as plain data: what model/ hands to the stream and the Neo4j sink.

model/ never imports streams/ (it is pure ML), so knowledge extraction (keywords, categories, attributes,
entities) and link prediction describe what they found as :class:`Fact` values; ``streams.triples``
turns each one into an ``igrec.kg.triples`` message and validates it against the whitelisted schema
(ARCHITECTURE "Neo4j knowledge graph"). Property values are absolutes, so sending a fact twice changes
nothing in the graph.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Fact:
    """``(head_label {id: head_id})-[rel props]->(tail_label {id: tail_id})``; ``rel`` None = a node alone.

    ``head_props`` / ``tail_props`` are node properties (e.g. an item's title), ``props`` the relationship's
    (e.g. ``{"tfidf": 0.31}`` on HAS_KEYWORD, ``{"type": "co_view", "score": 0.97}`` on RELATED).
    """

    head_label: str
    head_id: str
    rel: str | None = None
    tail_label: str | None = None
    tail_id: str | None = None
    props: dict[str, Any] = field(default_factory=dict)
    head_props: dict[str, Any] = field(default_factory=dict)
    tail_props: dict[str, Any] = field(default_factory=dict)


def to_json_line(fact: Fact) -> str:
    """One JSON object with the fact's fields in declaration order; empty node-property maps are left out
    (they mean the same as absent), so a relationship fact reads ``head_label .. tail_id, props``."""
    data = {k: v for k, v in fact.__dict__.items() if not (k in ("head_props", "tail_props") and not v)}
    return json.dumps(data, ensure_ascii=False)


def write_facts(path: str | Path, facts: Iterable[Fact]) -> int:
    """Write ``facts`` as JSON lines (the file ``igrec kg load`` reads); returns how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", encoding="utf-8") as handle:
        for fact in facts:
            handle.write(to_json_line(fact) + "\n")
            count += 1
    return count
