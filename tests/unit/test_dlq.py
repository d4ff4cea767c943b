"""``igrec dlq``'s summary of a dead-letter topic: records counted by code, the latest reason, foreign messages."""

from __future__ import annotations

import orjson

from streams.dlq import UNREADABLE, summarise, table
from streams.records import dead_letter_message
from streams.validate import EventError


def test_records_are_counted_by_code_with_the_latest_reason_and_foreign_messages_apart() -> None:
    values = [
        dead_letter_message(EventError("ts 5 is before 2000-01-01", "ts_too_old"), "igrec.events", 0, 7, b"u", b"{}"),
        dead_letter_message(EventError("not JSON: x", "not_json"), "igrec.events", 1, 3, None, b"x"),
        dead_letter_message(EventError("ts 9 is before 2000-01-01", "ts_too_old"), "igrec.events", 2, 11, b"v", b"{}"),
        b"written by something else",
        None,
    ]
    rules = summarise(values)
    assert [(rule.code, rule.count) for rule in rules] == [("ts_too_old", 2), (UNREADABLE, 2), ("not_json", 1)]
    too_old = rules[0]
    assert too_old.sources == {"igrec.events": 2} and too_old.first <= too_old.last
    assert too_old.latest_reason == "ts 9 is before 2000-01-01" and too_old.latest_source == "igrec.events:2@11"
    assert orjson.loads(values[0])["code"] == "ts_too_old"
    printed = table(rules)
    assert "ts_too_old" in printed and printed.splitlines()[-1].split() == ["all", "5"]
