"""The JSON Schemas under docs/schemas: generated from the code (never drifting), and agreeing with it."""

from __future__ import annotations

import orjson
import pytest
from jsonschema import Draft202012Validator

from model.facts import Fact
from streams.records import SCHEMA_VERSION, Event, topic_schemas
from streams.settings import ROOT, Settings
from streams.triples import TripleError, edge, from_fact, node, parse

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
    for triple in [
        node("Item", "7", title="Navy Shirt", tags=["a", "b"]),
        edge(("Session", "s"), "CLICKED", ("Item", "7"), pos=0, ts=1.7e9),
        edge(("Item", "7"), "NEXT", ("Item", "8"), count=3),
        edge(("User", "u"), "INTERESTED_IN", ("Interest", "m/0"), weight=0.4),
        from_fact(Fact("Item", "7", "RELATED", "Item", "8", {"type": "also_viewed", "score": 0.9})),
        from_fact(Fact("Item", "7", "HAS", "Entity", "colour:navy", {"relation": "colour"})),
    ]:
        errors = list(TRIPLES.iter_errors(orjson.loads(triple.to_json())))
        assert not errors, f"{triple}: {errors[0].message}"


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
