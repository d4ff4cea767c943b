"""streams.changelog: a changelog replay keeps a stored value over an earlier version of it (a late write of a
worker that lost its partitions without noticing), on faust's own RocksDB store."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import faust
import orjson
import pytest
from faust.types import TP

from streams.changelog import OutboxTable, superseded
from streams.next_counts import counted_offsets
from streams.state import applied_offsets, empty_state


@pytest.mark.parametrize(("value", "other", "expected"), [
    ({"0": 5}, {"0": 7}, True),
    ({"0": 7}, {"0": 7}, False),
    ({"0": 8}, {"0": 7}, False),
    ({"0": 5}, {"0": 7, "1": 2}, True),
    ({"0": 5, "1": 3}, {"0": 7, "1": 2}, False),
    ({}, {"0": 0}, True),
    ({"1": 0}, {}, False),
])
def test_a_value_is_superseded_when_behind_somewhere_and_ahead_nowhere(value, other, expected) -> None:
    assert superseded(value, other) is expected


def _user_state(offset: int, clicks: list[str]) -> bytes:
    """A user's stored state after ``clicks``, the last read at ``offset`` of partition 2."""
    return orjson.dumps(empty_state() | {
        "session_id": "s", "last_ts": 1.0, "length": len(clicks), "current": clicks,
        "current_offsets": list(range(offset - len(clicks) + 1, offset + 1)), "offsets": {"2": offset}})


def test_the_high_water_of_a_user_state_and_of_a_count() -> None:
    assert applied_offsets(_user_state(9, ["a", "b"])) == {"2": 9}
    assert applied_offsets(None) is None and applied_offsets(b"not json") is None
    assert counted_offsets(orjson.dumps({"count": 3, "hw": {"1": 40}})) == {"1": 40}
    assert counted_offsets(None) is None and counted_offsets(b'{"count": "x"}') is None


@pytest.fixture
def table(tmp_path: Path) -> OutboxTable:
    app = faust.App("changelog-test", store="rocksdb://", datadir=str(tmp_path), Table=OutboxTable)
    users = app.Table("users", partitions=4, key_type=bytes, value_type=bytes)
    users.high_water = applied_offsets
    return users


def _replayed(table: OutboxTable, *messages: tuple[bytes, bytes | None]) -> None:
    tp = TP(table.changelog_topic.get_topic_name(), 2)
    table.apply_changelog_batch([
        SimpleNamespace(message=SimpleNamespace(tp=tp, partition=2, offset=offset, key=key, value=value))
        for offset, (key, value) in enumerate(messages)])


def test_a_replay_keeps_the_stored_state_over_a_late_earlier_version(table: OutboxTable) -> None:
    one, two, three = _user_state(10, ["a"]), _user_state(11, ["a", "b"]), _user_state(12, ["a", "b", "c"])
    _replayed(table, (b"u", one), (b"u", two), (b"u", three), (b"u", one), (b"v", two))
    db = table.data._db_for_partition(2)
    assert db.get(b"u") == three, "the late first version does not replace the third"
    assert db.get(b"v") == two
    _replayed(table, (b"u", two))
    assert db.get(b"u") == three, "nor does a late version met in a later batch"


def test_a_replay_applies_newer_versions_deletions_and_what_it_cannot_compare(table: OutboxTable) -> None:
    db = table.data._db_for_partition(2)
    _replayed(table, (b"u", _user_state(10, ["a"])), (b"u", _user_state(12, ["a", "b"])))
    assert db.get(b"u") == _user_state(12, ["a", "b"])
    _replayed(table, (b"u", b"not a state"))
    assert db.get(b"u") == b"not a state", "an unreadable value is faust's to replay (the worker dead-letters it)"
    _replayed(table, (b"u", _user_state(3, ["z"])))
    assert db.get(b"u") == _user_state(3, ["z"]), "nothing readable to compare with: replayed as faust would"
    _replayed(table, (b"u", None))
    assert db.get(b"u") is None


def test_without_a_high_water_the_replay_is_fausts(table: OutboxTable) -> None:
    table.high_water = None
    _replayed(table, (b"u", _user_state(12, ["a", "b"])), (b"u", _user_state(10, ["a"])))
    assert table.data._db_for_partition(2).get(b"u") == _user_state(10, ["a"])
