"""aiokafka against the real Kafka 4 broker: topics, keyed produce, consume with committed offsets."""

from __future__ import annotations

import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient

from streams.settings import Settings
from streams.topics import delete_topics, ensure_topics

pytestmark = pytest.mark.integration


async def _create_topic(settings: Settings, name: str, partitions: int) -> None:
    served = await ensure_topics(settings.replace(topic_partitions=partitions), [name])
    assert served == {name: partitions}


async def _consume(settings: Settings, topic: str, group: str, count: int) -> list:
    consumer = AIOKafkaConsumer(
        topic, **settings.aiokafka_kwargs(), group_id=group, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    try:
        batches = []
        while len(batches) < count:
            result = await consumer.getmany(timeout_ms=10_000)
            assert result, f"no message within 10 s after {len(batches)} of {count}"
            batches.extend(message for messages in result.values() for message in messages)
        await consumer.commit()
        return batches
    finally:
        await consumer.stop()


async def test_produce_consume_keeps_per_key_order(settings: Settings, topic_name: str) -> None:
    await _create_topic(settings, topic_name, partitions=3)
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        for i in range(300):
            await producer.send(topic_name, key=f"user-{i % 7}".encode(), value=str(i).encode())
        await producer.flush()
    finally:
        await producer.stop()

    messages = await _consume(settings, topic_name, group="g1", count=300)
    assert sorted(int(m.value) for m in messages) == list(range(300))
    by_key: dict[bytes, list[int]] = {}
    for message in messages:
        by_key.setdefault(message.key, []).append(int(message.value))
    assert len(by_key) == 7
    for values in by_key.values():
        assert values == sorted(values), "a key's messages must arrive in produce order"
    partitions = {m.key: {mm.partition for mm in messages if mm.key == m.key} for m in messages}
    assert all(len(p) == 1 for p in partitions.values()), "a key must map to one partition"


async def test_committed_offsets_resume_where_the_group_stopped(settings: Settings, topic_name: str) -> None:
    await _create_topic(settings, topic_name, partitions=1)
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs())
    await producer.start()
    try:
        for i in range(10):
            await producer.send_and_wait(topic_name, str(i).encode())
        first = await _consume(settings, topic_name, group="resume", count=10)
        for i in range(10, 15):
            await producer.send_and_wait(topic_name, str(i).encode())
    finally:
        await producer.stop()
    second = await _consume(settings, topic_name, group="resume", count=5)
    assert [int(m.value) for m in first] == list(range(10))
    assert [int(m.value) for m in second] == list(range(10, 15))


async def test_a_runs_topics_are_deleted_by_their_prefix_and_no_other(settings: Settings, topic_name: str) -> None:
    """delete_topics removes exactly the topics under one run's prefix (benches clean up with it)."""
    prefix = f"{topic_name}.run."
    for name in (f"{prefix}events", f"{prefix}events-w-users-changelog", f"{topic_name}.other"):
        await _create_topic(settings, name, 1)
    assert await delete_topics(settings, prefix) == [f"{prefix}events", f"{prefix}events-w-users-changelog"]
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        left = {t for t in await admin.list_topics() if t.startswith(topic_name)}
    finally:
        await admin.close()
    assert left == {f"{topic_name}.other"}
    with pytest.raises(ValueError):
        await delete_topics(settings, ".")


async def test_a_topic_the_broker_refuses_is_a_clear_error(settings: Settings, topic_name: str) -> None:
    """ensure_topics reads CreateTopics' per-topic errors (aiokafka returns them without raising) and
    names the topic and the reason, instead of waiting for a topic that will never come."""
    with pytest.raises(RuntimeError, match=rf"{topic_name}: InvalidConfigurationError"):
        await ensure_topics(settings, [topic_name], {topic_name: {"cleanup.policy": "shred"}})
    assert await ensure_topics(settings.replace(topic_partitions=2), [topic_name]) == {topic_name: 2}


async def test_a_closed_record_batch_leaves_without_the_producers_linger(settings: Settings, topic_name: str) -> None:
    """The Outbox closes its batches because aiokafka sends a closed batch at once and an open one only after
    linger_ms (the worker's outputs would otherwise wait for it); this pins that aiokafka behaviour."""
    await _create_topic(settings, topic_name, 1)
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), linger_ms=1000)
    await producer.start()
    try:
        await producer.send_and_wait(topic_name, b"warm-up", partition=0)
        took = {}
        for closed in (True, False):
            batch = producer.create_batch()
            batch.append(key=None, value=b"x", timestamp=None)
            if closed:
                batch.close()
            began = time.monotonic()
            await (await producer.send_batch(batch, topic_name, partition=0))
            took[closed] = time.monotonic() - began
    finally:
        await producer.stop()
    assert took[True] < 0.5 <= took[False], took
