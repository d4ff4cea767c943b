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
    ("change", "reason", "code"),
    [
        ({"schema_version": 2}, "schema_version", "schema_version"),
        ({"event_id": None}, "missing field event_id", "missing_field"),
        ({"user_id": 7}, "user_id must be a string", "wrong_field_type"),
        ({"item_id": ""}, "item_id must have", "invalid_id_length"),
        ({"item_id": True}, "item_id must be a string", "wrong_field_type"),
        ({"item_id": "x" * 300}, "item_id must have", "invalid_id_length"),
        ({"session_id": ["s"]}, "session_id must be a string", "wrong_field_type"),
        ({"ts": "yesterday"}, "ts must be a number", "invalid_ts"),
        ({"ts": 1_700_000_000_000}, "in the future", "ts_in_future"),
        ({"ts": 1_700_000}, "before 2000", "ts_too_old"),
        ({"ts": 1_700_001}, "before 2000", "ts_too_old"),
        ({"type": ""}, "type must be", "invalid_type"),
        ({"context": [1]}, "context must be an object", "invalid_context"),
        ({"context": {"x": "y" * 5000}}, "context larger", "context_too_large"),
    ],
)
def test_malformed_fields_are_refused_with_the_reason_and_a_stable_code(change: dict, reason: str, code: str) -> None:
    """The code labels the DLQ metric: a reason with the offending value in it would make a label per value
    (two bad timestamps, one code)."""
    with pytest.raises(EventError, match=reason) as refused:
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
