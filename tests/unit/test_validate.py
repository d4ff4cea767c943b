"""Event validation: everything malformed is refused with a reason, everything valid is accepted."""

from __future__ import annotations

import orjson
import pytest

from streams.validate import EventError, parse_event

NOW = 1_800_000_000.0
GOOD = {"schema_version": 1, "event_id": "e1", "user_id": "u1", "item_id": "42", "ts": 1_700_000_000.5}


def test_a_valid_event_is_accepted_and_typed() -> None:
    event = parse_event(orjson.dumps(GOOD | {"item_id": 42, "context": {"page": "home"}}), b"u1", NOW)
    assert (event.item_id, event.type, event.session_id, event.context) == ("42", "click", None, {"page": "home"})


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"event_id": None}, "missing field event_id"),
        ({"user_id": 7}, "user_id must be a string"),
        ({"item_id": ""}, "item_id must have"),
        ({"item_id": True}, "item_id must be a string"),
        ({"item_id": "x" * 300}, "item_id must have"),
        ({"session_id": ["s"]}, "session_id must be a string"),
        ({"ts": "yesterday"}, "ts must be a number"),
        ({"ts": 1_700_000_000_000}, "in the future"),
        ({"ts": 1_700_000}, "before 2000"),
        ({"type": ""}, "type must be"),
        ({"context": [1]}, "context must be an object"),
        ({"context": {"x": "y" * 5000}}, "context larger"),
    ],
)
def test_malformed_fields_are_refused_with_the_reason(change: dict, reason: str) -> None:
    raw = orjson.dumps(GOOD | change)
    with pytest.raises(EventError, match=reason):
        parse_event(raw, b"u1", NOW)


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"schema_version": 2}, "schema_version"),
        ({"event_id": None}, "missing_field"),
        ({"user_id": 7}, "wrong_field_type"),
        ({"item_id": "x" * 300}, "invalid_id_length"),
        ({"ts": "yesterday"}, "invalid_ts"),
        ({"ts": 1_700_000_000_000}, "ts_in_future"),
        ({"ts": 1_700_000}, "ts_too_old"),
        ({"ts": 1_700_001}, "ts_too_old"),
        ({"type": ""}, "invalid_type"),
        ({"context": [1]}, "invalid_context"),
        ({"context": {"x": "y" * 5000}}, "context_too_large"),
    ],
)
def test_each_rule_has_a_stable_code_without_the_values_in_it(change: dict, code: str) -> None:
    """The code labels the DLQ metric: a reason with the offending value in it would make a label per value."""
    with pytest.raises(EventError) as refused:
        parse_event(orjson.dumps(GOOD | change), b"u1", NOW)
    assert refused.value.code == code


@pytest.mark.parametrize(
    ("raw", "key", "reason"),
    [
        (None, b"u1", "tombstone"),
        (b"{oops", b"u1", "not JSON"),
        (b"[]", b"u1", "JSON object"),
        (b" " * 70_000, b"u1", "bytes; at most"),
        (orjson.dumps(GOOD), b"someone-else", "key differs"),
        (orjson.dumps(GOOD), None, "no key"),
    ],
)
def test_undecodable_or_misrouted_messages_are_refused(raw, key, reason: str) -> None:
    with pytest.raises(EventError, match=reason):
        parse_event(raw, key, NOW)
