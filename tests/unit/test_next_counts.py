"""The NEXT counter's message and state checks (streams.next_counts)."""

from __future__ import annotations

import orjson
import pytest

from streams.next_counts import (
    UnreadableCount,
    UnreadableTransitions,
    counted,
    read_count,
    transition_bundle,
    transition_key,
)

GOOD = {"head": "7", "tail": "9", "p": 2, "o": 41}


def test_a_bundle_is_a_list_or_one_legacy_object():
    assert transition_bundle(orjson.dumps([GOOD, {**GOOD, "o": 42}])) == [GOOD, {**GOOD, "o": 42}]
    assert transition_bundle(orjson.dumps(GOOD)) == [GOOD]
    assert transition_bundle(b"[]") == []


@pytest.mark.parametrize(("raw", "words"), [
    (b"not json", "not JSON"),
    (None, "not JSON"),
    (b'"a string"', "entry 0 of 1"),
    (orjson.dumps([GOOD, {**GOOD, "o": "41"}]), "entry 1 of 2"),
    (orjson.dumps([{**GOOD, "head": 7}]), "entry 0 of 1"),
    (orjson.dumps([{"head": "7", "tail": "9", "p": 2}]), "entry 0 of 1"),
    (orjson.dumps([{**GOOD, "p": True}]), "entry 0 of 1"),
])
def test_an_unreadable_bundle_is_refused_whole_with_its_code(raw, words):
    with pytest.raises(UnreadableTransitions, match=words) as refused:
        transition_bundle(raw)
    assert refused.value.code == "transitions_unreadable"


def test_a_stored_count_is_read_or_refused():
    assert read_count(None) == {"count": 0, "hw": {}}
    stored = {"count": 3, "hw": {"0": 12, "3": 5}}
    assert read_count(orjson.dumps(stored)) == stored
    for raw in (b"\x00\x9f", b"[]", orjson.dumps({"count": "3", "hw": {}}), orjson.dumps({"count": 3}),
                orjson.dumps({"count": 3, "hw": {"0": "12"}})):
        with pytest.raises(UnreadableCount) as refused:
            read_count(raw)
        assert refused.value.code == "next_count_unreadable"


def test_a_transition_counts_once_per_source_offset():
    state = read_count(None)
    once = counted(state, GOOD)
    assert once == {"count": 1, "hw": {"2": 41}}
    assert counted(once, GOOD) is None and counted(once, {**GOOD, "o": 40}) is None
    assert counted(once, {**GOOD, "p": 3, "o": 1}) == {"count": 2, "hw": {"2": 41, "3": 1}}
    assert transition_key("7", "9") == b"7>9"
