"""The JSON Schemas under docs/schemas: generated from the code (never drifting), and agreeing with it."""

from __future__ import annotations

import orjson
import pytest
from jsonschema import Draft202012Validator

from model.facts import Fact
from streams.records import SCHEMA_VERSION, EnrichedEvent, Event, Recommendation, topic_schemas
from streams.settings import ROOT, Settings
from streams.triples import TripleError, bundles, edge, from_fact, node, parse

TOPICS = Settings().topics
SCHEMAS = {topic: Draft202012Validator(schema) for topic, schema in topic_schemas(TOPICS).items()}
TRIPLES = SCHEMAS[TOPICS["triples"]]


def test_the_committed_schema_files_are_the_generated_ones() -> None:
    """`python -m streams.records docs/schemas` was run after the last contract change."""
    for topic, schema in topic_schemas(TOPICS).items():
        path = ROOT / "docs" / "schemas" / f"{topic}.schema.json"
        assert orjson.loads(path.read_bytes()) == schema, f"{path} is stale"
    assert set(TOPICS.values()) == set(SCHEMAS), "one schema per topic"


def test_every_triple_the_code_makes_is_valid() -> None:
    triples = [
        node("Item", "7", title="Navy Shirt", tags=["a", "b"]),
        edge(("Session", "s"), "CLICKED", ("Item", "7"), pos=0, ts=1.7e9),
        edge(("Item", "7"), "NEXT", ("Item", "8"), count=3),
        edge(("User", "u"), "INTERESTED_IN", ("Interest", "m/0"), weight=0.4),
        from_fact(Fact("Item", "7", "RELATED", "Item", "8", {"type": "also_viewed", "score": 0.9})),
        from_fact(Fact("Item", "7", "HAS", "Entity", "colour:navy", {"relation": "colour"})),
    ]
    for message in [*(triple.to_json() for triple in triples), *bundles(triples)]:
        errors = list(TRIPLES.iter_errors(orjson.loads(message)))
        assert not errors, f"{message!r}: {errors[0].message}"


@pytest.mark.parametrize("message", [
    {"head": {"label": "Brand", "id": "x"}},
    {"head": {"label": "Item", "id": ""}},
    {"head": {"label": "Item", "id": "1"}, "rel": "OWNS", "tail": {"label": "Item", "id": "2"}},
    {"head": {"label": "User", "id": "1"}, "rel": "NEXT", "tail": {"label": "Item", "id": "2"}},
    {"head": {"label": "Item", "id": "1"}, "rel": "RELATED", "props": {"score": 1.0},
     "tail": {"label": "Item", "id": "2"}},
    {"head": {"label": "Item", "id": "1", "props": {"id": "2"}}},
    {"head": {"label": "Item", "id": "1", "props": {"bad name": 1}}},
    {"head": {"label": "Item", "id": "1", "props": {"nested": {"a": 1}}}},
    {"head": {"label": "Item", "id": "1"}, "tail": {"label": "Item", "id": "2"}},
    {},
    {"facts": []},
    {"facts": [{"head": {"label": "Item", "id": "1"}}, {"head": {"label": "Brand", "id": "x"}}]},
    {"facts": [{"head": {"label": "Item", "id": "1"}}], "head": {"label": "Item", "id": "1"}},
    {"facts": [{"head": {"label": "Item", "id": "1"}}] * 1001},
])
def test_the_schema_refuses_what_the_sink_refuses(message: dict) -> None:
    raw = orjson.dumps({"schema_version": SCHEMA_VERSION, **message})
    with pytest.raises(TripleError):
        parse(raw)
    assert not TRIPLES.is_valid(orjson.loads(raw))


def test_an_event_record_is_valid_against_its_schema() -> None:
    event = Event(schema_version=SCHEMA_VERSION, event_id="e", user_id="u", item_id="7", ts=1.7e9, context={"a": 1})
    assert SCHEMAS[TOPICS["events"]].is_valid(event.asdict())
    assert not SCHEMAS[TOPICS["events"]].is_valid({**event.asdict(), "ts": "yesterday"})


RECOMMENDATION = {"schema_version": SCHEMA_VERSION, "event_id": "e", "user_id": "u", "session_id": "s", "position": 2,
                  "items": ["7", "9"], "scores": [-1.5, -2.25], "scored": True, "model_version": "m",
                  "event_ts": 1.7e9, "emitted_at": 1.7e9 + 0.02, "latency_ms": {"queue": 1.0, "total": 20.0}}
ENRICHED = {"schema_version": SCHEMA_VERSION, "event_id": "e", "user_id": "u", "session_id": "s", "item_id": "7",
            "ts": 1.7e9, "type": "click", "position": 0, "session_length": 1, "new_session": True,
            "known_item": False, "recommendations": []}


@pytest.mark.parametrize(("record", "fields", "topic"), [
    (Recommendation, RECOMMENDATION, "recommendations"),
    (EnrichedEvent, ENRICHED, "enriched"),
    (EnrichedEvent, {**ENRICHED, "interest_weights": [0.25, 0.75], "context": {"page": 3}}, "enriched"),
])
def test_a_record_encodes_to_the_bytes_of_the_record_itself(record: type, fields: dict, topic: str) -> None:
    """The worker's fast path (``encode``) writes what the typed Record would, defaults included."""
    encoded = record.encode(**fields)
    assert encoded == orjson.dumps(record(**fields).asdict())
    assert SCHEMAS[TOPICS[topic]].is_valid(orjson.loads(encoded))


def test_encoding_a_record_with_a_missing_or_unknown_field_is_an_error() -> None:
    with pytest.raises(TypeError, match=r"missing fields \['scores'\]"):
        Recommendation.encode(**{k: v for k, v in RECOMMENDATION.items() if k != "scores"})
    with pytest.raises(TypeError, match=r"unknown fields \['score'\]"):
        Recommendation.encode(**RECOMMENDATION, score=1.0)
