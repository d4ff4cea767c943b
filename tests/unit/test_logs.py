"""Structured logs: JSON lines with the standard fields and the caller's fields, and the stats totals."""

from __future__ import annotations

import logging

import orjson

from streams import metrics
from streams.logs import JsonFormatter


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
