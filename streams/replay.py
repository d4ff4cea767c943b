"""``igrec replay``: datasets as click events on Kafka, and recorded topic ranges copied for re-scoring.

Split test sessions become one user and one session each, clicked in order with deterministic timestamps
(so a replay is reproducible and its recommendations can be joined back to the offline cases); raw click
logs keep their own users, sessions and times.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from tqdm import tqdm

from model.data import Cases, Clicks
from streams.records import SCHEMA_VERSION
from streams.settings import Settings
from streams.topics import ensure_topics, partition_count
from streams.triples import Triple, bundles

REPLAY_EPOCH = 1_700_000_000.0
CLICK_SPACING_S = 30.0


def cases_to_sessions(cases: Cases) -> list[list[int]]:
    """Rebuild the test sessions behind SR-GNN-ordered cases (the inverse of ``sessions_to_cases``).

    A session of ``n`` clicks appears as ``n - 1`` consecutive cases with prefix lengths ``n-1, ..., 1``,
    the first being ``s[:-1] -> s[-1]``. Anything else raises, so a replay can never silently publish
    sessions that would yield different cases than the offline evaluation.
    """
    sessions: list[list[int]] = []
    c = 0
    while c < len(cases):
        n = int(cases.length[c]) + 1
        session = [*cases.flat[cases.start[c] : cases.start[c] + n - 1].tolist(), int(cases.target[c])]
        for k in range(1, n - 1):
            case = c + k
            expected = (n - 1 - k, session[n - 1 - k])
            if case >= len(cases) or (int(cases.length[case]), int(cases.target[case])) != expected:
                raise ValueError(f"case {case}: not the SR-GNN prefix order of the session that starts at case {c}")
        sessions.append(session)
        c += n - 1
    return sessions


def session_events(sessions: Sequence[Sequence[int]], run: str, first_user: int = 0) -> Iterator[dict]:
    """Click events for ``sessions``, one user and one session each, with deterministic timestamps."""
    for index, session in enumerate(sessions, start=first_user):
        user = f"{run}-u{index}"
        for pos, item in enumerate(session):
            yield {
                "schema_version": SCHEMA_VERSION,
                "event_id": f"{user}-{pos}",
                "user_id": user,
                "session_id": f"{user}-s0",
                "item_id": str(item),
                "ts": REPLAY_EPOCH + index * 3600.0 + pos * CLICK_SPACING_S,
                "type": "click",
            }


def raw_events(clicks: Clicks, run: str) -> list[dict]:
    """Events of a raw click log in time order; the user is the log's user where it has one, else the session."""
    order = np.argsort(clicks.time, kind="stable")
    events = []
    for n, i in enumerate(order.tolist()):
        user = clicks.user[i] if clicks.user and clicks.user[i] not in ("", "NA") else clicks.session[i]
        events.append(
            {
                "schema_version": SCHEMA_VERSION,
                "event_id": f"{run}-{n}",
                "user_id": str(user),
                "session_id": str(clicks.session[i]),
                "item_id": str(clicks.item[i]),
                "ts": float(clicks.time[i]),
                "type": "click",
            }
        )
    return events


async def publish(
    settings: Settings, topic: str, events: Sequence[dict], rate: float | None = None, desc: str | None = None
) -> None:
    """Publish events keyed by user id with an idempotent producer, waiting until all are acknowledged."""
    payloads = [orjson.dumps(e) for e in events]
    await publish_payloads(settings, topic, payloads, [e["user_id"].encode() for e in events], desc=desc, rate=rate)


async def publish_payloads(
    settings: Settings,
    topic: str,
    payloads: Sequence[bytes],
    keys: Sequence[bytes] | None = None,
    desc: str | None = None,
    rate: float | None = None,
) -> None:
    """Publish raw payloads (optionally keyed, at most ``rate`` per second) with an idempotent producer, to
    ``topic`` (created first when missing: igrec never relies on the broker's auto-creation); returns once all
    are acknowledged."""
    await ensure_topics(settings, [topic])
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    began = time.perf_counter()
    try:
        deliveries = []
        with tqdm(total=len(payloads), desc=desc, unit="msg", disable=desc is None) as bar:
            for index, payload in enumerate(payloads):
                if rate and (ahead := began + index / rate - time.perf_counter()) > 0:
                    await asyncio.sleep(ahead)
                deliveries.append(await producer.send(topic, value=payload, key=keys[index] if keys else None))
                if index % 1000 == 999:
                    bar.update(1000)
            await asyncio.gather(*deliveries)  # raises if Kafka refused one (a flush would return regardless)
            bar.update(len(payloads) - bar.n)
    finally:
        await producer.stop()


async def publish_facts(settings: Settings, facts: list[Triple], desc: str | None = None) -> int:
    """Publish knowledge ``facts`` (validated triples) to the triples topic in bundle messages of up to
    ``MAX_FACTS`` each, as the worker sends its own: a thousandth of the messages that one per fact takes, for
    the producer, the broker and the sink alike. Returns the number of messages."""
    payloads = bundles(facts)
    await publish_payloads(settings, settings.topic_triples, payloads, desc=desc)
    return len(payloads)


async def copy_range(
    settings: Settings,
    source: str,
    target: str,
    start: dict[int, int] | float | None = None,
    end: dict[int, int] | float | None = None,
) -> int:
    """Copy messages of ``source`` to ``target`` (same keys, values and partitions), for re-scoring.

    ``start`` / ``end``: per-partition offsets (end exclusive), or a time in epoch seconds (the first
    message at or after it), or None for the beginning / the current end. Returns the messages copied.
    """
    tps = [TopicPartition(source, p) for p in range(await partition_count(settings, source))]
    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), enable_auto_commit=False)
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), enable_idempotence=True, acks="all", linger_ms=5)
    await consumer.start()
    await producer.start()
    copied = 0
    try:
        first = await _offsets(consumer, tps, start, default=await consumer.beginning_offsets(tps))
        last = await _offsets(consumer, tps, end, default=await consumer.end_offsets(tps))
        total = sum(max(last[tp] - first[tp], 0) for tp in tps)
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, first[tp])
        remaining = {tp for tp in tps if last[tp] > first[tp]}
        with tqdm(total=total, desc=f"copy {source} -> {target}", unit="msg") as bar:
            while remaining:
                batch = await consumer.getmany(*remaining, timeout_ms=2000)
                for tp, messages in batch.items():
                    for message in messages:
                        if message.offset >= last[tp]:
                            remaining.discard(tp)
                            break
                        await producer.send(target, message.value, key=message.key, partition=tp.partition)
                        copied += 1
                        bar.update(1)
                    if messages and messages[-1].offset >= last[tp] - 1:
                        remaining.discard(tp)
        await producer.flush()
    finally:
        await producer.stop()
        await consumer.stop()
    return copied


async def _offsets(
    consumer: AIOKafkaConsumer, tps: list[TopicPartition], spec: dict[int, int] | float | None, default: dict
) -> dict[TopicPartition, int]:
    if spec is None:
        return dict(default)
    if isinstance(spec, dict):
        return {tp: spec.get(tp.partition, default[tp]) for tp in tps}
    found = await consumer.offsets_for_times({tp: int(spec * 1000) for tp in tps})
    ends = await consumer.end_offsets(tps)
    return {tp: found[tp].offset if found[tp] is not None else ends[tp] for tp in tps}
