"""Knowledge facts as plain data: what model/ hands to the stream and the Neo4j sink.

model/ never imports streams/ (it is pure ML), so knowledge extraction (keywords, categories, attributes,
entities) and link prediction describe what they found as :class:`Fact` values; ``streams.triples``
turns each one into an ``igrec.kg.triples`` message and validates it against the whitelisted schema
(ARCHITECTURE "Neo4j knowledge graph"). Property values are absolutes, so sending a fact twice changes
nothing in the graph.
"""

from __future__ import annotations

from dataclasses import dataclass, field
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
