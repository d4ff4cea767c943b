"""streams.faust_fixes: the flush before a commit waits for every queued changelog message, and events fetched
while a rebalance ends are not dropped. Each fix is shown against faust's (mode's) own classes, next to the loss it
prevents, so a faust release that changes either behaviour fails here."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.faust_fixes import flush_whole_buffer, hold_flow_while_streams_resume

SEND_S = 0.25
"""Longer than faust's 0.1 s patience: a Kafka producer waiting for a full batch to be sent."""


async def _buffer_with_slow_sends(sent: list[int], whole: bool) -> ProducerBuffer:
    buffer = ProducerBuffer()
    buffer.app = SimpleNamespace(conf=SimpleNamespace(producer_threaded=False))

    async def slow_send(message: int) -> None:
        await asyncio.sleep(SEND_S)
        sent.append(message)

    buffer._send_pending = slow_send
    if whole:
        flush_whole_buffer(buffer)
    await buffer.start()
    return buffer


def test_fausts_own_flush_returns_with_messages_still_queued() -> None:
    """Why the fix exists: if faust's flush drains fully one day, this fails and the fix can go."""

    async def scenario() -> tuple[list[int], int]:
        sent: list[int] = []
        buffer = await _buffer_with_slow_sends(sent, whole=False)
        for i in range(4):
            buffer.put(i)
        await buffer.flush()
        left, sent_by_then = buffer.size, list(sent)
        while len(sent) < 4:
            await asyncio.sleep(0.05)
        await buffer.stop()
        return sent_by_then, left

    sent, left = asyncio.run(scenario())
    assert left > 0 and len(sent) < 4


def test_the_flush_returns_only_when_every_message_queued_before_it_was_handed_over() -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        sent: list[int] = []
        buffer = await _buffer_with_slow_sends(sent, whole=True)
        for i in range(4):
            buffer.put(i)
        flushing = asyncio.ensure_future(buffer.flush())
        await asyncio.sleep(0.01)
        buffer.put(4)  # queued during the flush: left to the next one
        await flushing
        at_return = list(sent)
        await buffer.flush()
        after_second = list(sent)
        await buffer.stop()
        return at_return, after_second

    at_return, after_second = asyncio.run(scenario())
    assert at_return == [0, 1, 2, 3]
    assert after_second == [0, 1, 2, 3, 4]


class FakeConsumer:
    def __init__(self) -> None:
        self.resumed: list = []

    def resume_partitions(self, tps) -> None:
        self.resumed += list(tps)


async def _events_left_after_streams_resume(fixed: bool) -> tuple[int, list]:
    """faust's end of recovery: resume the stream partitions, await the seek (an event is fetched meanwhile and
    handed to the conductor, which waits for flow control and then queues it), then resume flow control."""
    flow = FlowControlEvent()
    queue: FlowControlQueue = FlowControlQueue(flow_control=flow, clear_on_resume=True)
    flow.resume()  # recovery resumed the flow to read the changelogs
    app = SimpleNamespace(flow_control=flow, consumer=FakeConsumer(),
                          tables=SimpleNamespace(changelog_topics={"w-users-changelog"}))
    if fixed:
        hold_flow_while_streams_resume(app)

    async def conductor(event: str) -> None:
        await flow.acquire()
        queue.put_nowait(event)

    app.consumer.resume_partitions({TP("events", 0), TP("w-users-changelog", 0)})
    fetched = asyncio.ensure_future(conductor("event at offset 84"))
    await asyncio.sleep(0.01)  # the seek to the committed offsets
    flow.resume()
    await fetched
    return queue.qsize(), app.consumer.resumed


def test_faust_drops_an_event_fetched_while_the_streams_resume() -> None:
    """Why the fix exists: if faust stops clearing the queues here one day, this fails and the fix can go."""
    left, _ = asyncio.run(_events_left_after_streams_resume(fixed=False))
    assert left == 0


def test_with_the_fix_the_event_waits_for_the_flow_and_is_kept() -> None:
    left, resumed = asyncio.run(_events_left_after_streams_resume(fixed=True))
    assert left == 1
    assert set(resumed) == {TP("events", 0), TP("w-users-changelog", 0)}, "the partitions are still resumed"


def test_resuming_only_changelog_partitions_leaves_the_flow_alone() -> None:
    flow = FlowControlEvent()
    flow.resume()
    app = SimpleNamespace(flow_control=flow, consumer=FakeConsumer(),
                          tables=SimpleNamespace(changelog_topics={"w-users-changelog"}))
    hold_flow_while_streams_resume(app)
    app.consumer.resume_partitions([TP("w-users-changelog", 1)])
    assert flow.is_active()
