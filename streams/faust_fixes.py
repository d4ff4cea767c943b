"""Five ways faust-streaming 0.15 (with aiokafka) can lose events or redo work, and what the worker does about
each. The first was found reading faust's source; the others by tracing failures into faust's and aiokafka's
source: the second from ``bench/bench_crash.py``, the third, fourth and fifth from the second-worker test.
docs/results.md has the A/B of each; docs/upstream.md drafts the reports for faust's and aiokafka's trackers.

1. **The commit can outrun the state changelog.** faust writes a Table's changelog through its
   ``ProducerBuffer``: ``table[key] = value`` queues a message there, and a background task hands the queue to
   the Kafka producer one message at a time. Before it commits offsets, faust flushes that buffer and then the
   Kafka producer. But ``ProducerBuffer.flush`` returns as soon as 0.1 s pass without a message handed over,
   which happens whenever the Kafka producer makes the task wait (a full batch for a partition waits until the
   batch is sent). It can then return with changelog messages still queued; the commit goes ahead, and a crash
   right after loses state updates of events whose offsets are committed. :func:`flush_whole_buffer` replaces
   that flush with one that returns only when every message queued at its start has been handed over (whose
   delivery the Kafka producer's own flush then waits for); messages queued meanwhile are left to the next
   flush, so a busy agent cannot hold a commit back for ever. (The worker's Tables now write their changelog
   through the agent's Outbox, :mod:`streams.changelog`, which the agent sends before its events can be
   committed; the fix stays for what still takes faust's path: key deletions, and a Table given no Outbox.)

2. **Events fetched while a rebalance ends are dropped.** When recovery completes, faust resumes the stream
   partitions, awaits a seek to the committed offsets, and then resumes flow control, which *clears* every
   agent's queue. Events fetched during that await are queued, then cleared: never processed, never
   acknowledged, and, the seek being done, never fetched again. The restarted worker skipped them and its
   commits stopped at the first one. :func:`hold_flow_while_streams_resume` suspends flow control whenever
   faust resumes stream (not changelog) partitions, so events fetched in that window wait in faust's
   conductor instead of in a queue, and move on when faust resumes the flow.

3. **Records of paused partitions are fetched and dropped.** faust hands its *live* set of active partitions
   to aiokafka's ``fetched_records``, which runs in the consumer thread and waits up to a second for records.
   A rebalance pauses partitions meanwhile by emptying that same set in place, and aiokafka reads an empty set
   as "every partition": it returns the buffered records of the paused stream partitions too, advances their
   positions, and faust drops them as not active. faust's seek to the committed offsets when recovery
   completes would undo that, but (4) it does not move a partition that has no committed offset.
   :func:`snapshot_active_partitions` hands aiokafka a copy, so it returns records only of partitions active
   when the fetch began.

4. **A partition with no committed offset is not sought back.** When recovery completes faust seeks every
   partition to its committed offset; aiokafka skips a partition without one (or with offset 0), leaving it
   wherever earlier fetches took it. A worker that takes over such partitions (a new group, or one whose
   previous owner never committed: faust also discards a revoked partition's acknowledgements *before* its
   commit on revocation) then skips whatever (3) dropped, for good: a second worker joining a running group
   took no event on its new partitions. :func:`seek_uncommitted_to_start` seeks those stream partitions to
   their first offset instead, which is what ``auto_offset_reset="earliest"`` promises; the events read again
   are recognised by the worker's per-user offsets.

5. **A revoked partition's progress is thrown away.** On revocation faust's consumer discards the revoked
   partitions' acknowledgements first and commits afterwards, so the commit it makes then has nothing to
   commit: whatever the worker finished since the last periodic commit (every 2.8 s) is read and answered
   again by the partition's next owner, at every rebalance. :func:`commit_before_revoke` commits the
   acknowledged offsets before faust discards them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable
from typing import Any

import faust

FLUSH_POLL_S = 0.1

log = logging.getLogger("igrec.faust_fixes")


def install(app: faust.App) -> None:
    """Apply the fixes to ``app`` (before it starts)."""
    flush_whole_buffer(app.producer.buffer)
    hold_flow_while_streams_resume(app)
    snapshot_active_partitions(app.consumer)
    seek_uncommitted_to_start(app)
    commit_before_revoke(app.consumer)


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


def snapshot_active_partitions(consumer: Any) -> None:
    """Hand the fetch a copy of faust's active partitions instead of the set that rebalances change in place."""
    getmany = consumer._getmany

    async def snapshot_getmany(active_partitions: set | None, timeout: float) -> Any:
        frozen = None if active_partitions is None else set(active_partitions)
        return await getmany(active_partitions=frozen, timeout=timeout)

    consumer._getmany = snapshot_getmany


def seek_uncommitted_to_start(app: faust.App) -> None:
    """After faust's seek to the committed offsets, seek the stream partitions that have none to their first
    offset (only under ``auto_offset_reset="earliest"``; changelog partitions keep the positions faust's
    recovery gives them)."""
    if app.conf.consumer_auto_offset_reset != "earliest":
        return
    consumer = app.consumer
    seek_to_committed = consumer.seek_to_committed

    async def seek_to_committed_or_start() -> Any:
        committed = await seek_to_committed()
        changelogs = app.tables.changelog_topics
        uncommitted = [tp for tp, offset in committed.items() if not offset and tp.topic not in changelogs]
        if uncommitted:
            log.info("seeking %d partitions without a committed offset to their start", len(uncommitted),
                     extra={"fields": {"partitions": sorted(f"{tp.topic}:{tp.partition}" for tp in uncommitted)}})
            await consumer._thread.seek_to_beginning(*uncommitted)
        return committed

    consumer.seek_to_committed = seek_to_committed_or_start


def commit_before_revoke(consumer: Any) -> None:
    """Commit what is acknowledged when partitions are revoked, before faust's consumer discards it."""
    on_partitions_revoked = consumer.on_partitions_revoked

    async def commit_then_revoke(revoked: set) -> None:
        if consumer.assignment():
            try:
                await consumer.commit()
            except Exception as error:  # faust's revocation must go on: a failed commit only costs re-reads
                log.warning("commit before revocation failed (%r); the next owner re-reads since the last commit",
                            error)
        await on_partitions_revoked(revoked)

    consumer.on_partitions_revoked = commit_then_revoke
