"""`igrec replay` on the real broker: a raw log published in time order, and a topic range copied."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from model.data import read_diginetica_clicks
from streams.harness import collect
from streams.replay import copy_range, publish, raw_events
from streams.settings import ROOT, Settings
from streams.topics import default_partition, ensure_topics

pytestmark = pytest.mark.integration
RAW = ROOT.parent / "shared" / "data" / "diginetica" / "raw_sample" / "sample_train-item-views.csv"


def test_raw_log_events_keep_users_sessions_and_time_order() -> None:
    events = raw_events(read_diginetica_clicks(RAW), run="raw")
    assert len(events) == 12_391, "every data row of the file (its SOURCE.md says 12,390; the file has 12,391)"
    assert [e["ts"] for e in events] == sorted(e["ts"] for e in events)
    assert all(e["ts"] > 946_684_800 for e in events), "epoch seconds, valid for the worker"
    assert len({e["session_id"] for e in events}) > 1000


def test_copy_by_offsets_and_by_time(settings: Settings, topic_name: str) -> None:
    source, by_offset, by_time = topic_name, f"{topic_name}.o", f"{topic_name}.t"
    asyncio.run(ensure_topics(settings, [source, by_offset, by_time]))
    events = [{"event_id": f"e{i}", "user_id": f"u{i % 5}", "n": i} for i in range(40)]
    asyncio.run(publish(settings, source, events[:20]))
    time.sleep(1.5)
    middle = time.time()
    time.sleep(0.5)
    asyncio.run(publish(settings, source, events[20:]))

    copied = asyncio.run(copy_range(settings, source, by_offset, start={p: 1 for p in range(8)}))
    got = asyncio.run(collect(settings, by_offset, copied, timeout=30))
    used = {default_partition(f"u{i}".encode(), settings.topic_partitions) for i in range(5)}
    assert copied == 40 - len(used) and len(got) == copied, "offset 0 of every partition skipped"

    copied = asyncio.run(copy_range(settings, source, by_time, start=middle))
    got = asyncio.run(collect(settings, by_time, copied, timeout=30))
    assert sorted(got, key=lambda e: int(e[1:])) == [f"e{i}" for i in range(20, 40)]
    assert all(orjson.loads(orjson.dumps(r[0]))["user_id"] == f"u{int(r[0]['n']) % 5}" for r in got.values())
