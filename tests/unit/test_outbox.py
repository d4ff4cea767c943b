"""The Outbox: messages grouped per topic-partition in order, split across full batches, keyed messages
partitioned as Kafka's default partitioner would, a message too large for a batch sent alone in its place,
every batch closed before it is queued."""

from __future__ import annotations

import asyncio

import pytest

from streams.outbox import Outbox
from streams.topics import default_partition


class FakeBatch:
    """Like aiokafka's BatchBuilder: takes messages while they fit in ``size`` bytes (append returns None when
    full), and an empty batch takes any one message, however large."""

    def __init__(self, size: int):
        self.size, self.used, self.messages, self.closed = size, 0, [], False

    def close(self):
        self.closed = True

    def record_count(self) -> int:
        return len(self.messages)

    def append(self, *, key, value, timestamp):
        if self.messages and self.used + len(value) > self.size:
            return None
        self.used += len(value)
        self.messages.append((key, value))
        return object()


class FakeProducer:
    """Takes closed batches and acknowledges each at once, at the next offset of its partition, or fails it
    when told to."""

    def __init__(self, size: int = 3, fail: bool = False):
        self.size, self.sent, self.fail, self.next_offset = size, [], fail, {}

    def create_batch(self) -> FakeBatch:
        return FakeBatch(self.size)

    async def send_batch(self, batch: FakeBatch, topic: str, *, partition: int) -> asyncio.Future:
        assert batch.closed, "an open batch would wait for the producer's linger"
        self.sent.append((topic, partition, batch.messages))
        future = asyncio.get_running_loop().create_future()
        if self.fail:
            future.set_exception(RuntimeError("broker refused the batch"))
            return future
        base = self.next_offset.get((topic, partition), 0)
        self.next_offset[(topic, partition)] = base + len(batch.messages)
        future.set_result(type("RecordMetadata", (), {"offset": base})())
        return future


def test_messages_keep_their_order_per_partition_across_full_batches() -> None:
    producer = FakeProducer(size=3)
    out = Outbox(producer, {"recs": 4, "internal": 2})
    keys = [f"user{i % 5}".encode() for i in range(40)]
    for i, key in enumerate(keys):
        out.add("recs", key, b"%d" % (i % 10))
    out.add("internal", None, b"bundle", partition=1)
    assert producer.sent == [], "nothing goes before send()"
    asyncio.run(out.send())
    assert sum(len(messages) for _, _, messages in producer.sent) == 41
    assert all(len(messages) <= 3 for _, _, messages in producer.sent)
    for partition in range(4):
        got = [m for topic, p, batch in producer.sent if (topic, p) == ("recs", partition) for m in batch]
        want = [(k, b"%d" % (i % 10)) for i, k in enumerate(keys) if default_partition(k, 4) == partition]
        assert got == want
    assert ("internal", 1, [(None, b"bundle")]) in producer.sent
    sent = len(producer.sent)
    asyncio.run(out.send())
    assert len(producer.sent) == sent, "a second send sends nothing new"


def test_a_message_needs_a_key_or_a_partition() -> None:
    with pytest.raises(ValueError, match="key or a partition"):
        Outbox(FakeProducer(), {"recs": 4}).add("recs", None, b"x")


def test_a_message_larger_than_a_batch_goes_alone_and_keeps_its_place() -> None:
    producer = FakeProducer(size=10)
    out = Outbox(producer, {"dlq": 1})
    for value in (b"a", b"b", b"x" * 50, b"c"):
        out.add("dlq", b"k", value)
    asyncio.run(out.send())
    assert producer.sent == [("dlq", 0, [(b"k", b"a"), (b"k", b"b")]), ("dlq", 0, [(b"k", b"x" * 50)]),
                             ("dlq", 0, [(b"k", b"c")])]


@pytest.mark.parametrize("fail", [False, True])
def test_delivered_batches_report_their_last_offset_and_failed_ones_nothing(fail: bool) -> None:
    async def run() -> list[tuple[int, int]]:
        producer = FakeProducer(size=3, fail=fail)
        out = Outbox(producer, {"log": 2, "recs": 2})
        reported: list[tuple[int, int]] = []
        out.on_delivered("log", lambda partition, offset: reported.append((partition, offset)))
        for i in range(7):
            out.add("log", None, b"%d" % i, partition=i % 2)
            out.add("recs", b"k", b"%d" % i)
        await out.send()
        await asyncio.sleep(0)
        return reported

    reported = asyncio.run(run())
    assert reported == ([] if fail else [(0, 2), (0, 3), (1, 2)])


@pytest.mark.parametrize("fail", [False, True])
def test_a_send_returns_its_delivery_which_fails_if_a_batch_failed(fail: bool) -> None:
    async def run() -> None:
        out = Outbox(FakeProducer(size=1, fail=fail), {"recs": 2})
        for i in range(4):
            out.add("recs", b"k%d" % i, b"%d" % i)
        delivery = await out.send()
        if fail:
            with pytest.raises(RuntimeError, match="refused"):
                await delivery
        else:
            assert len(await delivery) == 4, "one acknowledgement per batch"
        assert await (await out.send()) == [], "an empty send is delivered at once"

    asyncio.run(run())


def test_aiokafkas_flush_returns_normally_when_a_batch_failed() -> None:
    """Why :meth:`Outbox.send` returns the delivery: faust flushes the producer before it commits, but aiokafka's
    flush only waits for the batches to be done, and a failed one is done too (docs/upstream.md, 8)."""
    from aiokafka.errors import MessageSizeTooLargeError
    from aiokafka.producer.message_accumulator import MessageAccumulator
    from aiokafka.record.default_records import DefaultRecordBatchBuilder
    from aiokafka.structs import TopicPartition

    async def run() -> BaseException | None:
        accumulator = MessageAccumulator(None, 16_384, 0, 30.0)
        builder = DefaultRecordBatchBuilder(2, 0, -1, -1, -1, 16_384, False)
        builder.append(0, timestamp=None, key=b"k", value=b"v", headers=[])
        delivery = await accumulator.add_batch(builder, TopicPartition("dlq", 0), timeout=1.0)
        in_flight = accumulator._pop_batch(TopicPartition("dlq", 0))  # as the sender takes it
        flush = asyncio.ensure_future(accumulator.flush())
        await asyncio.sleep(0.05)
        assert not flush.done(), "the flush waits for the batch in flight"
        in_flight.failure(MessageSizeTooLargeError())
        await asyncio.wait_for(flush, 1.0)
        assert flush.exception() is None, "the flush returns as if all went well"
        await asyncio.wait([delivery])
        return delivery.exception()

    assert isinstance(asyncio.run(run()), MessageSizeTooLargeError), "only the delivery says it failed"
