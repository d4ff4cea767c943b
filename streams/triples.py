"""The ``igrec.kg.triples`` contract: knowledge facts as JSON, validated against a whitelisted schema.

A fact is a node or a relationship between two nodes, with absolute property values. A message is one fact,
or a bundle of up to ``MAX_FACTS`` (1,000) facts (what one event creates or changes travels together)::

    {"schema_version": 1,
     "head": {"label": "Item", "id": "214", "props": {"title": "..."}},
     "rel": "NEXT", "props": {"count": 7},                       # omit "rel" for a node-only fact
     "tail": {"label": "Item", "id": "5"}}

    {"schema_version": 1, "facts": [{"head": ..., "rel": ..., "tail": ...}, ...]}

Labels and relationship types come only from :data:`NODE_LABELS` and :data:`RELATIONSHIPS` (they are the
only parts of the Cypher text that are not parameters); every value from a message travels as a parameter.
A message is taken or refused whole: one invalid fact refuses its bundle, with the fact's index in the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from model.facts import Fact
from streams.records import SCHEMA_VERSION, Refusal, decode_message

NODE_LABELS = ("User", "Session", "Item", "Category", "Keyword", "Entity", "Interest")


@dataclass(frozen=True)
class RelSpec:
    """A relationship type: its endpoint labels, the properties that identify one relationship, and its counters.

    ``grows`` names properties that only grow (counts): the sink keeps the larger of the stored and the written
    value. Every other property is set to the value written. For a counter, the larger value is the newer one:
    a late, older value (from a worker frozen past its session timeout, which lost its partitions without
    noticing: README, "Delivery") then leaves the count as it is, where the last writer would have lowered it.
    """

    head: str
    tail: str
    key: tuple[str, ...] = ()
    grows: tuple[str, ...] = ()


RELATIONSHIPS: dict[str, RelSpec] = {
    "HAD": RelSpec("User", "Session"),
    "CLICKED": RelSpec("Session", "Item", ("pos",)),
    "NEXT": RelSpec("Item", "Item", grows=("count",)),
    "HAS_KEYWORD": RelSpec("Item", "Keyword"),
    "IN_CATEGORY": RelSpec("Item", "Category"),
    "HAS": RelSpec("Item", "Entity", ("relation",)),
    "IN_INTEREST": RelSpec("Item", "Interest"),
    "INTERESTED_IN": RelSpec("User", "Interest"),
    "RELATED": RelSpec("Item", "Item", ("type",)),
}

MAX_ID_LENGTH = 512
MAX_FACTS = 1000
"""Most facts in one bundle message."""
MAX_PROPS = 32
MAX_STRING = 10_000
_PROP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_SCALARS = (str, int, float, bool)


class TripleError(Refusal):
    """A message that is not a valid triple; the text is the reason recorded in the DLQ, ``code`` its rule."""


class Triple(NamedTuple):
    """A validated fact. ``rel`` is None for a node-only fact (then ``tail_*`` are None).

    A NamedTuple rather than a frozen dataclass: the worker makes four to eight per event, and a frozen
    dataclass took 1.5 us of the event loop for each (docs/results.md)."""

    head_label: str
    head_id: str
    head_props: dict[str, Any]
    rel: str | None = None
    tail_label: str | None = None
    tail_id: str | None = None
    tail_props: dict[str, Any] | None = None
    props: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fact as it appears in a message, without the message's ``schema_version``."""
        head = {"label": self.head_label, "id": self.head_id, "props": self.head_props}
        if self.rel is None:
            return {"head": head}
        return {
            "head": head,
            "rel": self.rel,
            "props": self.props or {},
            "tail": {"label": self.tail_label, "id": self.tail_id, "props": self.tail_props or {}},
        }

    def to_json(self) -> bytes:
        """A message of this fact alone."""
        return orjson.dumps({"schema_version": SCHEMA_VERSION, **self.to_dict()})


def bundles(facts: list[Triple]) -> list[bytes]:
    """``facts`` as bundle messages of at most ``MAX_FACTS`` facts each, in order (none for no facts). The
    worker sends an event's facts as one message rather than one per fact: half the messages it writes."""
    return [
        orjson.dumps({"schema_version": SCHEMA_VERSION, "facts": [fact.to_dict() for fact in facts[i:i + MAX_FACTS]]})
        for i in range(0, len(facts), MAX_FACTS)
    ]


def facts_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The facts of a decoded message, unvalidated: a bundle's, or the message itself (for readers of the topic
    other than the sink, which validates with :func:`parse`)."""
    return message.get("facts", [message])


def json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of an ``igrec.kg.triples`` message: a node alone, or one of the
    whitelisted relationship types between its endpoint labels, with its identifying properties required."""
    scalar = {"type": ["string", "number", "boolean"]}
    value = {"anyOf": [scalar, {"type": "array", "items": scalar}]}
    props = {
        "type": "object",
        "maxProperties": MAX_PROPS,
        "propertyNames": {"pattern": _PROP_NAME.pattern, "not": {"const": "id"}},
        "additionalProperties": value,
    }

    def endpoint(labels: list[str]) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "label": {"enum": labels},
                "id": {"type": ["string", "integer"], "minLength": 1, "maxLength": MAX_ID_LENGTH},
                "props": props,
            },
            "required": ["label", "id"],
        }

    node_only = {
        "properties": {"head": endpoint(list(NODE_LABELS))},
        "required": ["head"],
        "not": {"anyOf": [{"required": ["rel"]}, {"required": ["tail"]}]},
    }
    relationships = [
        {
            "properties": {
                "rel": {"const": rel},
                "head": endpoint([spec.head]),
                "tail": endpoint([spec.tail]),
                "props": {**props, "required": list(spec.key)} if spec.key else props,
            },
            "required": ["head", "rel", "tail"],
        }
        for rel, spec in RELATIONSHIPS.items()
    ]
    bundle = {
        "properties": {"facts": {"type": "array", "minItems": 1, "maxItems": MAX_FACTS,
                                 "items": {"$ref": "#/$defs/fact"}}},
        "required": ["facts"],
        "not": {"required": ["head"]},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Triple",
        "description": " ".join((__doc__ or "").split("::")[0].split()),
        "type": "object",
        "properties": {"schema_version": {"const": SCHEMA_VERSION}},
        "required": ["schema_version"],
        "oneOf": [{"$ref": "#/$defs/fact", "not": {"required": ["facts"]}}, bundle],
        "$defs": {"fact": {"type": "object", "oneOf": [node_only, *relationships]}},
    }


def node(label: str, node_id: str | int, **props: Any) -> Triple:
    return Triple(label, str(node_id), props)


def edge(head: tuple[str, str | int], rel: str, tail: tuple[str, str | int], **props: Any) -> Triple:
    return Triple(head[0], str(head[1]), {}, rel, tail[0], str(tail[1]), {}, props)


def from_fact(fact: Fact) -> Triple:
    """The triple of a :class:`model.facts.Fact` (knowledge extraction, link prediction), validated: a fact
    outside the whitelisted schema raises :class:`TripleError` before it reaches Kafka."""
    triple = Triple(fact.head_label, fact.head_id, dict(fact.head_props), fact.rel, fact.tail_label,
                    fact.tail_id, dict(fact.tail_props) if fact.rel else None, dict(fact.props) if fact.rel else None)
    return _fact(orjson.loads(orjson.dumps(triple.to_dict())))


def parse(raw: bytes | None) -> list[Triple]:
    """Decode and validate one message, a fact or a bundle; its facts in order. Raises :class:`TripleError`
    with the reason (for a bundle, the index of the first invalid fact)."""
    message = decode_message(raw, TripleError)
    if "facts" not in message:
        return [_fact(message)]
    if "head" in message:
        raise TripleError("a message is one fact (head) or a bundle (facts), not both", "fact_and_bundle")
    facts = message["facts"]
    if not isinstance(facts, list) or not 1 <= len(facts) <= MAX_FACTS:
        raise TripleError(f"facts must be a list of 1..{MAX_FACTS} facts", "invalid_bundle")
    triples = []
    for i, fact in enumerate(facts):
        if not isinstance(fact, dict):
            raise TripleError(f"facts[{i}]: a fact must be an object", "invalid_bundle")
        try:
            triples.append(_fact(fact))
        except TripleError as error:
            raise TripleError(f"facts[{i}]: {error}", error.code) from None
    return triples


def _fact(message: dict[str, Any]) -> Triple:
    """Validate one fact, a message's or a bundle's."""
    head_label, head_id, head_props = _endpoint(message.get("head"), "head")
    rel = message.get("rel")
    if rel is None:
        if "tail" in message:
            raise TripleError("a tail without a rel", "tail_without_rel")
        return Triple(head_label, head_id, head_props)
    if rel not in RELATIONSHIPS:
        raise TripleError(f"unknown relationship type {rel!r}; allowed: {sorted(RELATIONSHIPS)}", "unknown_rel")
    tail_label, tail_id, tail_props = _endpoint(message.get("tail"), "tail")
    spec = RELATIONSHIPS[rel]
    if (head_label, tail_label) != (spec.head, spec.tail):
        raise TripleError(f"{rel} goes from {spec.head} to {spec.tail}, not from {head_label} to {tail_label}",
                          "wrong_endpoints")
    props = _props(message.get("props", {}), "props")
    missing = [key for key in spec.key if key not in props]
    if missing:
        raise TripleError(f"{rel} needs the identifying properties {missing}", "missing_key_props")
    return Triple(head_label, head_id, head_props, rel, tail_label, tail_id, tail_props, props)


def _endpoint(value: Any, where: str) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(value, dict):
        raise TripleError(f"{where} must be an object with label and id", "invalid_endpoint")
    label = value.get("label")
    if label not in NODE_LABELS:
        raise TripleError(f"{where}.label {label!r} is not one of {list(NODE_LABELS)}", "unknown_label")
    node_id = value.get("id")
    if isinstance(node_id, bool) or not isinstance(node_id, str | int):
        raise TripleError(f"{where}.id must be a string or an integer", "invalid_id")
    node_id = str(node_id)
    if not node_id or len(node_id) > MAX_ID_LENGTH:
        raise TripleError(f"{where}.id must have 1..{MAX_ID_LENGTH} characters", "invalid_id_length")
    return label, node_id, _props(value.get("props", {}), f"{where}.props")


def _props(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TripleError(f"{where} must be an object", "invalid_props")
    if len(value) > MAX_PROPS:
        raise TripleError(f"{where} has {len(value)} properties; at most {MAX_PROPS}", "too_many_props")
    for name, item in value.items():
        if not _PROP_NAME.match(name) or name == "id":
            raise TripleError(f"{where}: property name {name!r} is not allowed", "invalid_prop_name")
        values = item if isinstance(item, list) else [item]
        if not all(isinstance(v, _SCALARS) for v in values) or (
            isinstance(item, list) and len({type(v) for v in values}) > 1
        ):
            raise TripleError(f"{where}.{name}: values must be strings, numbers, booleans or a list of one of those",
                              "invalid_prop_value")
        if any(isinstance(v, str) and len(v) > MAX_STRING for v in values):
            raise TripleError(f"{where}.{name}: string longer than {MAX_STRING}", "string_too_long")
    return value
