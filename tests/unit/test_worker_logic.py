"""The worker's pure pieces: batch scoring around unknown items, the triples of an event, partitioning, the
scoring thread's OS name."""

from __future__ import annotations

import gc
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from streams import metrics
from streams.records import Event
from streams.scoring import SCORER_PROCESS, name_os_thread, prepare_thread, score_batch
from streams.settings import ROOT
from streams.state import Step
from streams.topics import default_partition
from streams.triples import bundles, parse
from streams.worker import StallWatch, event_triples, freeze_long_lived_objects, quiet_worker_class, use_loop


class FakeScorer:
    """Knows items "1".."9"; recommends the session's items reversed, scored by position; item i belongs to
    interest 0 with weight i/10 and to interest 1 with the rest."""

    interests = np.array([[0.0, 0.0]] + [[i / 10, 1 - i / 10] for i in range(1, 10)], dtype=np.float32)
    uses_history = True

    def interest_weights(self, sessions):
        return np.array([self.interests[list(s)].mean(0) for s in sessions])

    def index_of(self, ids):
        return np.array([int(i) if i.isdigit() and 0 < int(i) < 10 else 0 for i in ids], dtype=np.int64)

    def external_ids(self, indices):
        return np.asarray(indices).astype(str)

    def recommend_sessions(self, sessions, histories=None):
        self.calls = (sessions, histories)
        top = np.array([[*reversed(s), 0, 0][:2] for s in sessions])
        return top, np.tile(np.array([2.0, 1.0], dtype=np.float32), (len(sessions), 1))


def step(current, history=(), found=True, position=0, previous=None) -> Step:
    return Step(True, found, position == 0, "s", position, list(current), [list(h) for h in history], previous)


def test_unknown_items_are_kept_out_of_scoring_and_empty_sessions_are_not_scored() -> None:
    scorer = FakeScorer()
    results = score_batch(scorer, [step(["1", "x", "2"], [["3", "y"]]), step(["x"]), step([], found=False)])
    assert (results[0].items, results[0].scores, results[0].scored) == (["2", "1"], [2.0, 1.0], True)
    assert results[0].known_item and not results[1].known_item
    assert np.allclose(results[0].interests, [0.15, 0.85]), "mean over the known clicks 1 and 2"
    assert results[0].clicked == 2, "the clicked item's model index"
    assert results[1].interests is None and results[1].clicked == 0
    assert np.allclose(results[0].item_interests, [0.2, 0.8]), "the clicked item's own interests"
    assert results[1].item_interests is None, "an unknown item has none"
    assert [(r.items, r.scores, r.scored) for r in results[1:]] == [([], [], False)] * 2
    sessions, histories = scorer.calls
    assert [s.tolist() for s in sessions] == [[1, 2]] and [[h.tolist() for h in u] for u in histories] == [[[3]]], (
        "one batched call with only known items")
    scorer.uses_history = False
    score_batch(scorer, [step(["1"], [["3"]])])
    assert scorer.calls[1] is None, "no histories for a scorer that does not use them"


def test_interest_triples_carry_absolute_weights_and_item_facts_only_when_new() -> None:
    event = Event(schema_version=1, event_id="e", user_id="u", item_id="2", ts=1.7e9)
    scoring = score_batch(FakeScorer(), [step(["1", "2"], position=1)])[0]
    facts = event_triples(event, step(["1", "2"], position=1), scoring, "m1", scoring.item_interests)
    user = [f for f in facts if f.rel == "INTERESTED_IN"]
    assert [(f.tail_id, round(f.props["weight"], 6)) for f in user] == [("m1/0", 0.15), ("m1/1", 0.85)]
    item = [f for f in facts if f.rel == "IN_INTEREST"]
    assert [(f.head_id, round(f.props["weight"], 6)) for f in item] == [("2", 0.2), ("2", 0.8)]
    again = event_triples(event, step(["1", "2"], position=1), scoring, "m1")
    assert "IN_INTEREST" not in {f.rel for f in again}
    assert parse(bundles(facts)[0]) == facts, "one event's facts fit one valid bundle"


def test_event_triples_are_absolute_and_mark_new_sessions() -> None:
    event = Event(schema_version=1, event_id="e", user_id="u", item_id="7", ts=1.7e9)
    first = event_triples(event, step(["7"], position=0))
    assert [t.rel for t in first] == ["CLICKED", "HAD"]
    assert first[0].props == {"pos": 0, "ts": 1.7e9}
    later = event_triples(event, step(["1", "7"], position=1, previous="1"))
    assert [t.rel for t in later] == ["CLICKED"]
    assert event_triples(event, step([], found=False)) == []


def test_default_partition_matches_the_java_client() -> None:
    """Vectors computed with kafka-clients 4.1.1 itself (``Utils.toPositive(Utils.murmur2(key)) % n`` in jshell)."""
    assert default_partition(b"user-1", 4) == 0
    assert default_partition(b"foobar", 100) == 66
    assert default_partition(b"a-little-bit-long-string", 7) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="OS thread names are read from /proc")
def test_the_scoring_thread_has_an_os_name_the_bench_can_find() -> None:
    names: list[str] = []

    def run() -> None:
        name_os_thread(SCORER_PROCESS)
        names.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert names == [SCORER_PROCESS] == ["igrec-scorer"]


def test_a_thread_priority_changes_by_the_configured_nice_value() -> None:
    niceness: list[int] = []

    def run() -> None:
        stat = Path(f"/proc/self/task/{threading.get_native_id()}/stat")
        before = int(stat.read_text().rsplit(")", 1)[1].split()[16])
        prepare_thread(SCORER_PROCESS, 3)  # lowering a priority needs no privilege
        niceness.append(int(stat.read_text().rsplit(")", 1)[1].split()[16]) - before)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    assert niceness == [3]


def test_a_stall_is_lag_without_progress_for_the_whole_interval_and_is_reported_once_per_interval() -> None:
    watch = StallWatch(after_s=30)
    watch.since = 0.0
    assert not watch.stalled({0: 5}, lag=10, now=0.0), "progress restarts the clock"
    assert not watch.stalled({0: 5}, lag=10, now=29.0)
    assert watch.stalled({0: 5}, lag=10, now=30.0)
    assert not watch.stalled({0: 5}, lag=10, now=45.0), "reported once per interval"
    assert watch.stalled({0: 5}, lag=10, now=61.0)
    assert metrics.STALLED._value.get() == 61.0, "the gauge says for how long"
    assert not watch.stalled({0: 6}, lag=10, now=100.0)
    assert not watch.stalled({0: 6}, lag=10, now=129.0)
    assert not watch.stalled({0: 6}, lag=0, now=200.0), "no lag, no stall"
    assert not watch.stalled({0: 6}, lag=3, now=229.0)
    assert watch.stalled({0: 6}, lag=3, now=230.0)


def test_a_worker_that_does_not_stop_after_a_crash_exits_anyway() -> None:
    """The watchdog armed at an agent's crash ends a process whose clean stop hangs, with status 1 and a log line."""
    code = ("import logging, time; from streams.worker import exit_unless_stopped_within; "
            "logging.basicConfig(); exit_unless_stopped_within(0.5); time.sleep(30)")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 1 and time.monotonic() - began < 20
    assert "did not stop within 0.5 s of its failure: exiting" in done.stderr


@pytest.mark.parametrize("quiet", [False, True])
def test_the_worker_keeps_the_root_logger_at_its_level(quiet: bool) -> None:
    """faust's own Worker sets the root logger to DEBUG at --loglevel warning (for its terminal spinner), so
    every debug call builds a record; the worker's class keeps the level it was given."""
    import faust
    from faust.worker import Worker

    from streams.logs import logging_config

    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    cls = quiet_worker_class() if quiet else Worker
    worker = cls(faust.App("logging-probe", broker="kafka://127.0.0.1:1"), loglevel="warning",
                 logging_config=logging_config("warning"), redirect_stdouts=False)
    try:
        worker._setup_logging()
        assert (root.level == logging.WARNING) is quiet
        assert (worker.spinner is None) is quiet
    finally:
        root.setLevel(saved[0])
        root.handlers[:] = saved[1]


def test_garbage_collections_are_timed_by_generation() -> None:
    metrics.watch_gc()
    metrics.watch_gc()
    count = _sample(metrics.GC_PAUSE, "igrec_gc_pause_seconds_count", generation="2")
    gc.collect()
    assert _sample(metrics.GC_PAUSE, "igrec_gc_pause_seconds_count", generation="2") == count + 1
    assert _sample(metrics.GC_PAUSE, "igrec_gc_pause_seconds_sum", generation="2") > 0


def test_objects_alive_when_the_agent_starts_are_out_of_the_collectors_sight() -> None:
    frozen = gc.get_freeze_count()
    try:
        freeze_long_lived_objects()
        assert gc.get_freeze_count() > frozen
    finally:
        gc.unfreeze()


def _sample(metric, name: str, **labels: str) -> float:
    return next((s.value for m in metric.collect() for s in m.samples if s.name == name and s.labels == labels), 0.0)


def test_worker_command_passes_the_scorer_precision(monkeypatch):
    """`igrec worker --int8` / `--fp16` reach WorkerConfig (which hands them to the scorer process); both at
    once is a usage error."""
    import streams.worker
    from streams.cli import main

    seen = []
    monkeypatch.setattr(streams.worker, "run_worker", lambda settings, config, **kw: seen.append(config))
    assert main(["worker", "--artefact", "art", "--int8"]) == 0
    assert main(["worker", "--artefact", "art"]) == 0
    assert [(c.int8, c.fp16) for c in seen] == [(True, False), (False, False)]
    with pytest.raises(SystemExit) as exit_info:
        main(["worker", "--artefact", "art", "--int8", "--fp16"])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(("argv", "loop_type"),
                         [([], "uvloop.Loop"), (["--loop", "asyncio"], "_UnixSelectorEventLoop")])
def test_the_worker_runs_on_the_event_loop_it_is_given(monkeypatch, argv: list[str], loop_type: str) -> None:
    """`igrec worker` runs on uvloop unless told `--loop asyncio`: the loops made after `use_loop` are of that kind."""
    import asyncio

    import streams.worker
    from streams.cli import main

    seen = []
    monkeypatch.setattr(streams.worker, "run_worker", lambda settings, config, **kw: seen.append(config.loop))
    assert main(["worker", "--artefact", "art", *argv]) == 0
    try:
        use_loop("uvloop")
        use_loop(seen[0])
        loop = asyncio.new_event_loop()
        assert f"{type(loop).__module__}.{type(loop).__name__}".endswith(loop_type)
        loop.close()
    finally:
        asyncio.set_event_loop_policy(None)
    with pytest.raises(ValueError, match="unknown event loop"):
        use_loop("trio")
