"""Batched output for the worker: one Kafka record batch per (topic, partition) per micro-batch.

The worker's outputs of one micro-batch (recommendations, enriched events, triples, dead letters) are
appended to aiokafka record batches (``AIOKafkaProducer.create_batch`` / ``send_batch``) instead of being
sent one message at a time: appending a record costs well under a microsecond in aiokafka's C builder,
while one ``send`` costs tens of microseconds of Python on the event loop, and an event makes about ten
outputs. Outputs go to the partition of their source event (the output topics are created with the same
partition count as ``igrec.events`` and keyed by user id), so a user's outputs stay on one partition, in
order.

Delivery: :func:`ack_when_delivered` holds the source events' Kafka messages (faust's reference count)
until every batch of their outputs is acknowledged by the broker (``acks=all``), and only then acks them,
so faust can never commit an offset whose outputs are not durable. A failed delivery leaves the events
un-acked (faust's commit stops below them, so they are re-delivered after a restart) and stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer

log = logging.getLogger("igrec.worker")

MAX_BATCH_BYTES = 900 * 1024
"""Upper bound of one record batch (the broker's default ``message.max.bytes`` is 1 MiB)."""


class Outbox:
    """Outputs of one micro-batch, grouped into record batches per (topic, partition), sent together."""

    def __init__(self, producer: AIOKafkaProducer) -> None:
        self._producer = producer
        self._open: dict[tuple[str, int], Any] = {}
        self._full: list[tuple[str, int, Any]] = []
        self.messages = 0

    def add(self, topic: str, partition: int, key: bytes | None, value: bytes) -> None:
        """Append one message (already encoded) for ``topic``/``partition``; nothing is sent yet."""
        where = (topic, partition)
        batch = self._open.get(where)
        if batch is None:
            batch = self._open[where] = self._producer.create_batch()
        if batch.append(key=key, value=value, timestamp=None) is None:
            self._full.append((topic, partition, batch))
            batch = self._open[where] = self._producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                raise ValueError(f"one message of {len(value)} bytes does not fit a record batch for {topic}")
        self.messages += 1

    async def send(self) -> list[asyncio.Future]:
        """Hand every batch to the producer; returns their delivery futures (the Outbox is then empty)."""
        batches = [*self._full, *((t, p, b) for (t, p), b in self._open.items())]
        self._full, self._open, self.messages = [], {}, 0
        futures = []
        for topic, partition, batch in batches:
            batch.close()
            futures.append(await self._producer.send_batch(batch, topic, partition=partition))
        return futures


def hold(messages: Sequence[Any]) -> None:
    """Take one more reference on each faust message, so faust's own ack (``take_events`` acks a batch when
    the next one is requested) does not make it committable; :func:`ack_when_delivered` drops it."""
    for message in messages:
        message.incref()


def ack_when_delivered(futures: list[asyncio.Future], messages: Sequence[Any], consumer: Any,
                       on_failure: Callable[[BaseException], None]) -> None:
    """Ack ``messages`` (held by :func:`hold`) once all ``futures`` succeeded; on a failure call
    ``on_failure`` and leave them un-acked, so their offsets are never committed."""
    if not futures:
        _ack(messages, consumer)
        return
    remaining = len(futures)
    failed = False

    def done(future: asyncio.Future) -> None:
        nonlocal remaining, failed
        remaining -= 1
        error = None if future.cancelled() else future.exception()
        if future.cancelled() or error is not None:
            if not failed:
                failed = True
                on_failure(error or asyncio.CancelledError("output batch cancelled"))
            return
        if remaining == 0 and not failed:
            _ack(messages, consumer)

    for future in futures:
        future.add_done_callback(done)


def _ack(messages: Sequence[Any], consumer: Any) -> None:
    for message in messages:
        message.ack(consumer)
