"""Make faust's producer flush wait for every table changelog message, so no offset is committed before them.

faust writes a Table's changelog through ``ProducerBuffer``: ``table[key] = value`` queues a message there, and a
background task hands the queue to the Kafka producer one message at a time. Before it commits offsets, faust
flushes that buffer and then the Kafka producer. But ``ProducerBuffer.flush`` (faust-streaming 0.15) returns as
soon as 0.1 s pass without a message handed over, which happens whenever the Kafka producer makes the task wait
(a full batch for a partition waits until the batch is sent). It can then return with changelog messages still
queued, the commit goes ahead, and a crash right after loses state updates of events whose offsets are
committed: the restarted worker would serve those users from stale sessions.

:func:`flush_whole_buffer` replaces the flush of one app's buffer with one that returns only when every message
queued when it started has been handed to the Kafka producer (whose own flush then waits for delivery). Messages
queued meanwhile are left to the next flush, so a busy agent cannot hold a commit back for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

FLUSH_POLL_S = 0.1


def flush_whole_buffer(buffer: Any) -> None:
    """Install the watermark flush on ``buffer`` (a faust ``ProducerBuffer``, before its service starts: its
    sending task binds ``_send_pending`` when it starts)."""
    handed = 0
    in_flight = 0
    send_pending = buffer._send_pending

    async def counted_send(message: Any) -> None:
        nonlocal handed, in_flight
        in_flight += 1
        try:
            await send_pending(message)
        finally:
            in_flight -= 1
            handed += 1

    async def flush() -> None:
        target = handed + in_flight + buffer.size
        while handed < target:
            if buffer.state != "running":
                raise RuntimeError(f"cannot flush: the producer buffer is {buffer.state}, "
                                   f"{target - handed} messages not handed to Kafka")
            buffer.message_sent.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(buffer.message_sent.wait(), timeout=FLUSH_POLL_S)

    buffer._send_pending = counted_send
    buffer.flush = flush
