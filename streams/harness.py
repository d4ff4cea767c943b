"""Run `igrec worker` processes, collect what they answer and check it against the offline Scorer: the worker's
integration tests and `bench/bench_crash.py` share these, so a test and a benchmark start and judge workers
the same way."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from streams.changelog import HighWater, earlier_versions
from streams.evaluate_stream import read_topic
from streams.replay import session_events
from streams.settings import ROOT, Settings
from streams.triples import facts_of


def isolated_settings(settings: Settings) -> Settings:
    """The test stack's settings with a fresh set of topics, so tests never see each other's messages."""
    tag = uuid.uuid4().hex[:8]
    return settings.replace(
        topic_events=f"t{tag}.events",
        topic_recommendations=f"t{tag}.recommendations",
        topic_enriched=f"t{tag}.enriched",
        topic_triples=f"t{tag}.triples",
        topic_dlq=f"t{tag}.dlq",
        topic_triples_dlq=f"t{tag}.triples.dlq",
    )


def run_prefix(settings: Settings) -> str:
    """The prefix that every topic of an isolated run shares: its own topics and, with an app id made from its
    events topic (``<events>-w``), the workers' internal and changelog topics. For
    :func:`streams.topics.delete_topics`."""
    return settings.topic_events.split(".")[0] + "."


@dataclass
class WorkerProcess:
    """One `igrec worker` subprocess with its own local state folder and log file."""

    settings: Settings
    artefact: Path
    workdir: Path
    app_id: str
    name: str = "w1"
    extra: list[str] = field(default_factory=list)
    nice: int = 0
    """Added to the worker's nice value (``nice -n``; without CAP_SYS_NICE a negative one is refused with a warning
    in the log, and the worker runs as it is); its scorer child adds ``--scorer-nice`` to it."""
    process: subprocess.Popen | None = None

    def start(self) -> WorkerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{self.name}.log").open("ab")
        command = [
            *(["nice", "-n", str(self.nice)] if self.nice else []),
            sys.executable,
            "-m",
            "streams.cli",
            "worker",
            "--artefact",
            str(self.artefact),
            "--app-id",
            self.app_id,
            "--metrics-port",
            "0",
            "--data-dir",
            str(self.workdir / self.name),
            "--loglevel",
            os.environ.get("IGREC_TEST_WORKER_LOGLEVEL", "warning"),
            *self.extra,
        ]
        self.process = subprocess.Popen(
            command, env=os.environ | self.settings.to_env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT
        )
        return self

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def freeze(self) -> None:
        """Stop the worker and its scorer (SIGSTOP) as a paused VM or a long stall would: no heartbeat, no work,
        nothing closed."""
        self._signal_with_children(signal.SIGSTOP)

    def thaw(self) -> None:
        """Let a frozen worker and its scorer go on (SIGCONT) where they stopped."""
        self._signal_with_children(signal.SIGCONT)

    def _signal_with_children(self, signum: int) -> None:
        assert self.process is not None
        for pid in [self.process.pid, *child_pids(self.process.pid)]:
            with contextlib.suppress(ProcessLookupError):  # a child that has just ended
                os.kill(pid, signum)

    def stop(self) -> None:
        """SIGTERM, and SIGKILL after 60 s; a frozen worker is thawed first (frozen, it could not stop)."""
        if self.alive():
            self.thaw()
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)

    def log_tail(self, chars: int = 4000) -> str:
        path = self.workdir / f"{self.name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


def child_pids(pid: int) -> list[int]:
    """Child process ids of ``pid`` (every thread's ``children`` list in /proc)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(c) for c in task.read_text().split()]
        except OSError:
            continue
    return found


async def collect(
    settings: Settings,
    topic: str,
    want: int,
    timeout: float,
    key: Callable[[dict], str] = lambda record: record["event_id"],
    watch: list[WorkerProcess] | None = None,
    unpack: Callable[[dict], list[dict]] = lambda message: [message],
) -> dict[str, list[dict]]:
    """Read ``topic`` from the start until ``want`` distinct ``key(record)`` were seen (or ``timeout``); the
    records of a message are ``unpack(message)`` (e.g. :func:`streams.triples.facts_of`).

    Returns every record per key in the order read, duplicates included, so callers can check re-deliveries
    too."""
    consumer = AIOKafkaConsumer(
        topic,
        **settings.aiokafka_kwargs(),
        auto_offset_reset="earliest",
        group_id=f"collect-{uuid.uuid4().hex[:8]}",
        enable_auto_commit=False,
    )
    await consumer.start()
    seen: dict[str, list[dict]] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(seen) < want and time.monotonic() < deadline:
            for worker in watch or []:
                assert worker.alive() or worker.process is None, f"worker {worker.name} died:\n{worker.log_tail()}"
            batch = await consumer.getmany(timeout_ms=1000)
            for messages in batch.values():
                for message in messages:
                    for record in unpack(orjson.loads(message.value)):
                        seen.setdefault(key(record), []).append(record)
    finally:
        await consumer.stop()
    if len(seen) < want:
        for worker in watch or []:  # pytest shows this on a failure: where each worker stands
            print(f"collect({topic}): {len(seen)} of {want} after {timeout} s; log of {worker.name}:\n"
                  f"{worker.log_tail(20_000)}")
    return seen


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll ``predicate`` every ``interval`` seconds; True as soon as it holds, False after ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return False


def partition_offsets(settings: Settings, group: str) -> dict[int, tuple[int, int]]:
    """Per partition of the events topic: the committed offset of ``group`` (0 where it has none) and the end
    offset."""

    async def read() -> dict[int, tuple[int, int]]:
        admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
        consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), enable_auto_commit=False)
        await admin.start()
        await consumer.start()
        try:
            committed = await admin.list_consumer_group_offsets(group)
            tps = [TopicPartition(settings.topic_events, p) for p in range(settings.topic_partitions)]
            ends = await consumer.end_offsets(tps)
            return {tp.partition: (committed[tp].offset if tp in committed else 0, ends[tp]) for tp in tps}
        finally:
            await consumer.stop()
            await admin.close()

    return asyncio.run(read())


def group_members(settings: Settings, group: str) -> tuple[str, int]:
    """The state of consumer group ``group`` (``Stable`` once a rebalance is over) and its member count."""

    async def read() -> tuple[str, int]:
        admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
        await admin.start()
        try:
            [response] = await admin.describe_consumer_groups([group])
            _, _, state, *_, members = response.groups[0][:6]
            return state, len(members)
        finally:
            await admin.close()

    return asyncio.run(read())


def group_offsets(settings: Settings, group: str) -> tuple[int, int]:
    """The events topic's committed offsets of ``group`` and its end offsets, each summed over partitions."""
    offsets = partition_offsets(settings, group).values()
    return sum(committed for committed, _ in offsets), sum(end for _, end in offsets)


def uncommitted(settings: Settings, group: str, timeout: float) -> int:
    """Events of the events topic beyond the group's committed offsets, polled until 0 or ``timeout``: a worker
    that answered everything but cannot commit lost track of a message (it never acknowledged it)."""
    deadline = time.monotonic() + timeout
    while True:
        committed, ends = group_offsets(settings, group)
        if committed == ends or time.monotonic() >= deadline:
            return ends - committed
        time.sleep(1)


def expected_recommendations(scorer, sessions: list[list[int]], run: str) -> dict[str, tuple[list[str], np.ndarray]]:
    """Offline: the Scorer's top-K items and scores on every prefix, keyed by the event id replay gives its click."""
    events = list(session_events(sessions, run=run))
    prefixes = [s[: i + 1] for s in sessions for i in range(len(s))]
    expected = {}
    for begin in range(0, len(prefixes), 256):
        chunk = prefixes[begin : begin + 256]
        known = [[int(x) for x in scorer.index_of([str(i) for i in p]) if x] for p in chunk]
        top, scores = scorer.recommend_sessions(known)
        for row, event in enumerate(events[begin : begin + 256]):
            expected[event["event_id"]] = ([str(x) for x in scorer.external_ids(top[row])], scores[row])
    return expected


def mismatched(got: dict[str, list[dict]], expected: dict, tolerance: float = 1e-4) -> list[str]:
    """Event ids with a recommendation (re-emitted ones included) whose scores differ from the offline answer by
    more than ``tolerance``, or whose items differ other than by swapping items whose scores tie."""
    bad = []
    for event_id, (items, scores) in expected.items():
        for record in got.get(event_id, []):
            if not np.allclose(record["scores"], scores, atol=tolerance):
                bad.append(event_id)
            elif record["items"] != items:
                swapped = [i for i, (a, b) in enumerate(zip(record["items"], items, strict=True)) if a != b]
                if not all(abs(scores[i] - scores[i - 1]) < tolerance
                           or abs(scores[i] - scores[min(i + 1, len(scores) - 1)]) < tolerance for i in swapped):
                    bad.append(event_id)
    return bad


def next_counts(settings: Settings, sessions: list[list[int]], timeout: float,
                largest: bool = False) -> tuple[dict, dict]:
    """The last NEXT count of each item pair on the triples topic (``largest``: the largest, which the Neo4j sink
    keeps), and the count it should have (the number of times the pair was clicked in a row in ``sessions``),
    once they agree or after ``timeout`` (:func:`settled_next_count_history`)."""
    history, expected = settled_next_count_history(settings, sessions, timeout, largest)
    return pair_counts(history, largest), expected


def settled_next_count_history(settings: Settings, sessions: list[list[int]], timeout: float,
                               largest: bool = False) -> tuple[dict[tuple[str, str], list[int]], dict]:
    """Every NEXT count on the triples topic per item pair in the order written, read again until the pairs'
    counts (:func:`pair_counts`) agree with ``sessions``' clicks in a row or ``timeout``: the counts trail the
    recommendations by one hop through the transitions topic. Returns it with the expected counts."""
    expected = dict(Counter((str(a), str(b)) for s in sessions for a, b in itertools.pairwise(s)))
    deadline = time.monotonic() + timeout
    while True:
        history = next_count_history(settings)
        if pair_counts(history, largest) == expected or time.monotonic() > deadline:
            return history, expected


def pair_counts(history: dict[tuple[str, str], list[int]], largest: bool = False) -> dict[tuple[str, str], int]:
    """Each pair's last count in ``history`` (``largest``: its largest, which the Neo4j sink keeps)."""
    return {pair: max(values) if largest else values[-1] for pair, values in history.items()}


def next_count_history(settings: Settings) -> dict[tuple[str, str], list[int]]:
    """Every NEXT count on the triples topic, per item pair in the order written."""
    triples = asyncio.run(collect(settings, settings.topic_triples, 10**9, timeout=3, unpack=facts_of,
                                  key=lambda t: f"{t['head']['id']}>{t['tail']['id']}"
                                  if t.get("rel") == "NEXT" else ""))
    history: dict[tuple[str, str], list[int]] = {}
    for pair, records in triples.items():
        if pair:
            head, tail = pair.split(">")
            history[head, tail] = [record["props"]["count"] for record in records]
    return history


def late_counts(history: dict[tuple[str, str], list[int]]) -> int:
    """NEXT counts written after a larger one of their pair: a worker's that lost its partitions while frozen."""
    return sum(count < max(counts[:i]) for counts in history.values() for i, count in enumerate(counts) if i)


def late_states(settings: Settings, topic: str, high_water: HighWater) -> int:
    """Messages of a Table's changelog ``topic`` that are an earlier version of one before them under their key
    (:func:`streams.changelog.earlier_versions`): what a worker delivered after it had lost its partitions."""
    messages = asyncio.run(read_topic(settings, topic))
    return sum(earlier_versions((((partition, key), value) for partition, _, key, value in messages), high_water))
