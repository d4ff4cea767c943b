"""The Outbox: messages grouped per topic-partition in order, split across full batches, keyed messages
partitioned as Kafka's default partitioner would."""

from __future__ import annotations

import asyncio

import pytest

from streams.outbox import Outbox
from streams.topics import default_partition


class FakeBatch:
    """Holds up to ``capacity`` messages, like a BatchBuilder that fills up (append returns None)."""

    def __init__(self, capacity: int):
        self.capacity, self.messages = capacity, []

    def append(self, *, key, value, timestamp):
        if len(self.messages) == self.capacity:
            return None
        self.messages.append((key, value))
        return object()


class FakeProducer:
    def __init__(self, capacity: int = 3):
        self.capacity, self.sent = capacity, []

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.capacity)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> None:
        self.sent.append((topic, partition, batch.messages))


def test_messages_keep_their_order_per_partition_across_full_batches() -> None:
    producer = FakeProducer(capacity=3)
    out = Outbox(producer, {"recs": 4, "internal": 2})
    keys = [f"user{i % 5}".encode() for i in range(40)]
    for i, key in enumerate(keys):
        out.add("recs", key, f"{i}".encode())
    out.add("internal", None, b"bundle", partition=1)
    assert out.messages == 41
    asyncio.run(out.send())
    assert out.messages == 0 and all(len(messages) <= 3 for _, _, messages in producer.sent)
    for partition in range(4):
        got = [m for topic, p, batch in producer.sent if (topic, p) == ("recs", partition) for m in batch]
        want = [(k, f"{i}".encode()) for i, k in enumerate(keys) if default_partition(k, 4) == partition]
        assert got == want
    assert ("internal", 1, [(None, b"bundle")]) in producer.sent
    sent = len(producer.sent)
    asyncio.run(out.send())
    assert len(producer.sent) == sent, "a second send sends nothing new"


def test_a_message_needs_a_key_or_a_partition_and_must_fit_a_batch() -> None:
    out = Outbox(FakeProducer(capacity=0), {"recs": 4})
    with pytest.raises(ValueError, match="key or a partition"):
        out.add("recs", None, b"x")
    with pytest.raises(ValueError, match="does not fit"):
        out.add("recs", b"k", b"x")
