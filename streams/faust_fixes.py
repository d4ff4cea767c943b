"""Two ways faust-streaming 0.15 can lose events, and what the worker does about each.

Both were found reading faust's source; the second also by ``bench/bench_crash.py`` (docs/results.md).

1. **The commit can outrun the state changelog.** faust writes a Table's changelog through its
   ``ProducerBuffer``: ``table[key] = value`` queues a message there, and a background task hands the queue to
   the Kafka producer one message at a time. Before it commits offsets, faust flushes that buffer and then the
   Kafka producer. But ``ProducerBuffer.flush`` returns as soon as 0.1 s pass without a message handed over,
   which happens whenever the Kafka producer makes the task wait (a full batch for a partition waits until the
   batch is sent). It can then return with changelog messages still queued; the commit goes ahead, and a crash
   right after loses state updates of events whose offsets are committed. :func:`flush_whole_buffer` replaces
   that flush with one that returns only when every message queued at its start has been handed over (whose
   delivery the Kafka producer's own flush then waits for); messages queued meanwhile are left to the next
   flush, so a busy agent cannot hold a commit back for ever.

2. **Events fetched while a rebalance ends are dropped.** When recovery completes, faust resumes the stream
   partitions, awaits a seek to the committed offsets, and then resumes flow control, which *clears* every
   agent's queue. Events fetched during that await are queued, then cleared: never processed, never
   acknowledged, and, the seek being done, never fetched again. The restarted worker skipped them and its
   commits stopped at the first one. :func:`hold_flow_while_streams_resume` suspends flow control whenever
   faust resumes stream (not changelog) partitions, so events fetched in that window wait in faust's
   conductor instead of in a queue, and move on when faust resumes the flow.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import Any

import faust

FLUSH_POLL_S = 0.1


def install(app: faust.App) -> None:
    """Apply both fixes to ``app`` (before it starts)."""
    flush_whole_buffer(app.producer.buffer)
    hold_flow_while_streams_resume(app)


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


def hold_flow_while_streams_resume(app: faust.App) -> None:
    """Suspend ``app``'s flow control whenever its consumer resumes stream partitions. faust does that only when
    a recovery completes, and resumes the flow itself right after the seek that follows."""
    consumer = app.consumer
    resume_partitions = consumer.resume_partitions

    def resume(tps: Iterable[Any]) -> None:
        tps = list(tps)
        changelogs = app.tables.changelog_topics
        if any(tp.topic not in changelogs for tp in tps):
            app.flow_control.suspend()
        resume_partitions(tps)

    consumer.resume_partitions = resume
