"""Prometheus metrics of the worker, served on ``/metrics`` (``igrec worker --metrics-port``)."""

from __future__ import annotations

import gc
import time

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS = Counter("igrec_events_total", "Events handled, by outcome", ["outcome"])
DLQ = Counter("igrec_dlq_total", "Events sent to the dead-letter topic, by reason", ["reason"])
BATCH = Histogram("igrec_batch_size", "Events scored per onnxruntime call (a chunk)",
                  buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512))
SCORE_SECONDS = Histogram(
    "igrec_score_seconds",
    "Time from a chunk's request to the scorer (sent while the one before may still be scored) to its outputs "
    "queued in the producer",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5),
)
LATENCY = Histogram(
    "igrec_event_latency_seconds",
    "Kafka append time of an event -> its recommendation handed to the producer",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
)
STALLED = Gauge("igrec_stalled_seconds",
                "Seconds since the worker last took an event while events wait (0 while they flow): alert on it")
GC_PAUSE = Histogram(
    "igrec_gc_pause_seconds",
    "Collections of Python's cyclic garbage collector in the worker process, by generation: each one stops the "
    "event loop for its duration",
    ["generation"],
    buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1),
)
LAG = Gauge("igrec_consumer_lag", "Events not yet processed, per partition of the events topic", ["partition"])


def serve(port: int) -> None:
    """Expose the metrics over HTTP on 127.0.0.1:``port``."""
    start_http_server(port, addr="127.0.0.1")


def watch_gc() -> None:
    """Time every collection of the garbage collector into :data:`GC_PAUSE` (once per process)."""
    if _gc_callback in gc.callbacks:
        return
    gc.callbacks.append(_gc_callback)


_gc_started: list[float] = [0.0]


def _gc_callback(phase: str, info: dict) -> None:
    if phase == "start":
        _gc_started[0] = time.perf_counter()
    else:
        GC_PAUSE.labels(generation=str(info["generation"])).observe(time.perf_counter() - _gc_started[0])


def totals() -> dict[str, float]:
    """Running totals for the worker's stats log line: events by outcome, batches and their mean size, and the
    mean event latency in ms (since start)."""
    out = {f"events_{s.labels['outcome']}": s.value for m in EVENTS.collect() for s in m.samples
           if s.name.endswith("_total")}
    batch = {s.name: s.value for m in BATCH.collect() for s in m.samples}
    latency = {s.name: s.value for m in LATENCY.collect() for s in m.samples}
    batches = batch.get("igrec_batch_size_count", 0.0)
    events = latency.get("igrec_event_latency_seconds_count", 0.0)
    out["batches"] = batches
    out["mean_batch"] = round(batch.get("igrec_batch_size_sum", 0.0) / batches, 2) if batches else 0.0
    total_s = latency.get("igrec_event_latency_seconds_sum", 0.0)
    out["mean_latency_ms"] = round(1000 * total_s / events, 3) if events else 0.0
    return out
