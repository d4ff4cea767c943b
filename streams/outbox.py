"""Outputs of one micro-batch, encoded into Kafka record batches and queued with one call per partition.

faust's ``producer.send`` costs tens of microseconds per message (faust's hooks, then aiokafka's per-message
future and accumulator lookup), and the worker writes about ten messages per event: about a quarter of its
event loop's time went there (py-spy, docs/results.md). An :class:`Outbox` appends each message to an
aiokafka ``BatchBuilder`` (a C encoder) per topic-partition, and :meth:`Outbox.send` queues every builder
with one ``send_batch``.

The builders go into the accumulator of faust's own producer. :meth:`Outbox.send` returns the delivery of what
it sent: the worker acknowledges an event only once the delivery of its outputs succeeded, so an event whose
outputs Kafka refused (or that expired unsent) is never committed. faust's flush of the producer before a
commit alone would not do that: aiokafka's flush returns when batches are done, failed or not.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from streams.topics import default_partition

PARTITIONS_REMEMBERED = 100_000
"""Keys whose partition an Outbox remembers; past this many it starts again."""


def kafka_producer(app: Any) -> Any:
    """The ``AIOKafkaProducer`` inside a started faust app's producer: the one whose accumulator faust
    flushes before committing offsets (faust keeps it in a private attribute; a faust upgrade that renames it
    fails here, loudly, rather than sending outside the flush)."""
    producer = getattr(app.producer, "_producer", None)
    if producer is None or not hasattr(producer, "send_batch"):
        raise RuntimeError("faust's producer has no started aiokafka producer (faust changed, or not started)")
    return producer


class Outbox:
    """Messages for several topics, grouped per topic-partition in arrival order, sent with :meth:`send`.

    Args:
        producer: a started ``AIOKafkaProducer`` (:func:`kafka_producer`).
        partitions: partition count per topic this outbox writes to; a message without an explicit partition
            goes where Kafka's default partitioner puts its key, so a keyed consumer sees what
            ``producer.send`` would have produced.
    """

    def __init__(self, producer: Any, partitions: Mapping[str, int]):
        self._producer = producer
        self._partitions = dict(partitions)
        self._builders: dict[tuple[str, int], list[Any]] = {}
        self._partition_of: dict[tuple[bytes, int], int] = {}
        self._delivered: dict[str, Callable[[int, int], None]] = {}

    def on_delivered(self, topic: str, callback: Callable[[int, int], None]) -> None:
        """Call ``callback(partition, last_offset)`` each time Kafka acknowledges a batch of ``topic``."""
        self._delivered[topic] = callback

    def partition_count(self, topic: str) -> int:
        return self._partitions[topic]

    def add(self, topic: str, key: bytes | None, value: bytes, partition: int | None = None) -> None:
        """Append one message (not sent until :meth:`send`); ``key`` or ``partition`` must be given."""
        if partition is None:
            if key is None:
                raise ValueError(f"a message for {topic} needs a key or a partition")
            partition = self._keyed_partition(key, self._partitions[topic])
        builders = self._builders.setdefault((topic, partition), [])
        if not builders or builders[-1].append(key=key, value=value, timestamp=None) is None:
            builders.append(self._producer.create_batch())
            builders[-1].append(key=key, value=value, timestamp=None)  # an empty batch takes any message

    def _keyed_partition(self, key: bytes, partitions: int) -> int:
        """:func:`default_partition`, remembered: murmur2 is pure Python, and one event's outputs share a key."""
        partition = self._partition_of.get((key, partitions))
        if partition is None:
            if len(self._partition_of) >= PARTITIONS_REMEMBERED:
                self._partition_of.clear()
            partition = self._partition_of[(key, partitions)] = default_partition(key, partitions)
        return partition

    async def send(self) -> asyncio.Future:
        """Queue every filled builder in the producer (in order per partition) and start empty.

        Returns the delivery: a future that resolves (to a list) once Kafka has acknowledged every batch
        queued here, or fails with the first batch's error (a refused batch, or one that expired unsent after
        the producer's request timeout).

        Each builder is closed first: aiokafka sends a closed batch at the sender's next turn, an open one
        only after the producer's linger (5 ms in the worker), which every output would wait for, and the
        next ``send_batch`` to the same partition waits until the batch before it has left."""
        builders, self._builders = self._builders, {}
        futures = []
        for (topic, partition), batches in builders.items():
            delivered = self._delivered.get(topic)
            for batch in batches:
                batch.close()
                future = await self._producer.send_batch(batch, topic, partition=partition)
                if delivered is not None:
                    future.add_done_callback(partial(_report, delivered, partition, batch.record_count()))
                futures.append(future)
        return asyncio.gather(*futures)


def _report(callback: Callable[[int, int], None], partition: int, count: int, future: asyncio.Future) -> None:
    """``callback`` with the last offset of a delivered batch (its base offset + ``count`` - 1). A failed
    delivery is not reported: the persisted offset then stays behind, and recovery reads more of the
    changelog, never less."""
    if future.cancelled() or future.exception() is not None:
        return
    callback(partition, future.result().offset + count - 1)
