"""The producer flush before a commit waits for every queued table changelog message (streams.producer_buffer)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from faust.transport.producer import ProducerBuffer

from streams.producer_buffer import flush_whole_buffer

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
