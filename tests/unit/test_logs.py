"""Structured logs: JSON lines with the standard fields and the caller's fields, and the stats totals."""

from __future__ import annotations

import logging

import orjson

from streams import metrics
from streams.logs import JsonFormatter, RepeatFilter, logging_config


def test_json_formatter_merges_fields_and_exceptions() -> None:
    record = logging.LogRecord("igrec.worker", logging.WARNING, __file__, 1, "lag %d", (7,), None)
    record.fields = {"partition": 3, "lag_per_partition": {0: 5, 1: 2}}
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["level"] == "warning" and entry["logger"] == "igrec.worker" and entry["msg"] == "lag 7"
    assert entry["partition"] == 3 and isinstance(entry["ts"], float)
    assert entry["lag_per_partition"] == {"0": 5, "1": 2}, "non-string keys are written as strings"
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    assert "ValueError: boom" in orjson.loads(JsonFormatter().format(failed))["exc"]


def test_totals_count_events_batches_and_latency() -> None:
    before = metrics.totals()
    metrics.EVENTS.labels(outcome="recommended").inc(5)
    metrics.BATCH.observe(5)
    metrics.LATENCY.observe(0.004)
    after = metrics.totals()
    assert after["events_recommended"] - before.get("events_recommended", 0) == 5
    assert after["batches"] - before["batches"] == 1 and after["mean_latency_ms"] > 0


def _record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.ERROR, __file__, 1, msg, args, None)


def test_aiokafka_repeats_pass_once_per_window_with_the_count_held_back() -> None:
    now = [0.0]
    repeats = RepeatFilter(window_s=10.0, clock=lambda: now[0])
    connect = "Unable connect to node with id %s: %s"
    passed = []
    for second in range(25):
        now[0] = float(second)
        for _ in range(3):  # three attempts a second while the broker is away
            record = _record("aiokafka.conn", connect, 1, "refused")
            if repeats.filter(record):
                passed.append((second, getattr(record, "fields", {}).get("repeated")))
    assert passed == [(0, None), (10, 29), (20, 29)]


def test_other_messages_and_other_loggers_always_pass() -> None:
    repeats = RepeatFilter(clock=lambda: 0.0)
    assert repeats.filter(_record("aiokafka.conn", "Unable connect to node with id %s", 1))
    assert repeats.filter(_record("aiokafka.consumer", "Failed fetch messages from %s", 1)), "another message"
    assert all(repeats.filter(_record("igrec.worker", "stats")) for _ in range(5)), "not an aiokafka logger"


def test_the_worker_logging_config_installs_the_filter() -> None:
    handler = logging_config("info")["handlers"]["stderr"]
    assert handler["filters"] == ["repeats"]
