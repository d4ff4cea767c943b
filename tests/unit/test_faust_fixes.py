"""streams.faust_fixes: the flush before a commit waits for every queued changelog message; events fetched while a
rebalance ends are not dropped; a fetch returns records only of the partitions active when it began; stream
partitions without a committed offset are sought to their start; revocation commits what was acknowledged.
Each fix is shown against faust's, mode's or aiokafka's own code, next to the loss it prevents, so a release
that changes the behaviour fails here."""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from aiokafka import AIOKafkaConsumer
from aiokafka.consumer.fetcher import Fetcher, FetchResult
from aiokafka.structs import TopicPartition
from faust.transport.consumer import Consumer
from faust.transport.producer import ProducerBuffer
from faust.types import TP
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.faust_fixes import (
    commit_before_revoke,
    flush_whole_buffer,
    hold_flow_while_streams_resume,
    seek_uncommitted_to_start,
    snapshot_active_partitions,
)

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


EVENTS_0 = TopicPartition("events", 0)
CHANGELOG_0 = TopicPartition("w-users-changelog", 0)


class PartitionState:
    """What aiokafka's FetchResult reads of a partition's subscription state: not paused, and a position."""

    def __init__(self, position: int) -> None:
        self.paused = False
        self.position = position

    def consumed_to(self, offset: int) -> None:
        self.position = offset


class Records:
    """aiokafka's partition records: an iterator of messages that tracks the next offset to fetch."""

    def __init__(self, offsets: range) -> None:
        self._offsets = iter(offsets)
        self.next_fetch_offset = offsets.start

    def __iter__(self) -> Records:
        return self

    def __next__(self) -> SimpleNamespace:
        offset = next(self._offsets)
        self.next_fetch_offset = offset + 1
        return SimpleNamespace(offset=offset)


def _fetcher_holding_events() -> tuple[SimpleNamespace, PartitionState]:
    """An aiokafka fetcher (its attributes that ``Fetcher.fetched_records`` reads) whose buffer holds offsets
    0-4 of the events partition: aiokafka prefetches every assigned partition that aiokafka itself has not
    paused, and faust pauses partitions only in its own bookkeeping."""
    state = PartitionState(position=0)
    assignment = SimpleNamespace(active=True, state_value=lambda tp: state)
    records = {EVENTS_0: FetchResult(EVENTS_0, assignment=assignment, partition_records=Records(range(5)), backoff=0)}
    fetcher = SimpleNamespace(
        _subscriptions=SimpleNamespace(reassignment_in_progress=False, is_assigned=lambda tp: True),
        _records=records, _notify=lambda future: None, _wait_consume_future=None)
    return fetcher, state


async def _fetch_while_a_rebalance_pauses(fixed: bool) -> tuple[dict, int]:
    """faust fetches with one active (changelog) partition; while the fetch waits in the consumer thread, a
    rebalance pauses that partition (faust's own ``pause_partitions``); then aiokafka drains its buffer."""
    fetcher, state = _fetcher_holding_events()
    active = {CHANGELOG_0}
    faust_consumer = SimpleNamespace(_get_active_partitions=lambda: active, _paused_partitions=set())
    paused = asyncio.Event()

    async def thread_getmany(active_partitions: set, timeout: float) -> dict:
        await paused.wait()
        return await Fetcher.fetched_records(fetcher, active_partitions, timeout=0)

    faust_consumer._getmany = thread_getmany
    if fixed:
        snapshot_active_partitions(faust_consumer)
    fetching = asyncio.ensure_future(faust_consumer._getmany(active_partitions=active, timeout=1.0))
    await asyncio.sleep(0)
    Consumer.pause_partitions(faust_consumer, [CHANGELOG_0])
    paused.set()
    return await fetching, state.position


def test_a_fetch_returns_records_of_partitions_paused_while_it_waits() -> None:
    """Why the fix exists: the rebalance emptied faust's set in place, aiokafka read the empty set as "every
    partition", and the paused events partition's records come back (faust drops them) with its position moved
    past them. If either library changes this, this fails and the fix can go."""
    records, position = asyncio.run(_fetch_while_a_rebalance_pauses(fixed=False))
    assert [m.offset for m in records[EVENTS_0]] == [0, 1, 2, 3, 4]
    assert position == 5


def test_with_the_snapshot_the_fetch_leaves_the_paused_partitions_records_alone() -> None:
    records, position = asyncio.run(_fetch_while_a_rebalance_pauses(fixed=True))
    assert records == {}
    assert position == 0


def test_aiokafka_does_not_seek_a_partition_without_a_committed_offset() -> None:
    """Why the second fix exists: ``seek_to_committed`` moves only partitions with a committed offset above 0."""
    committed = {EVENTS_0: None, TopicPartition("events", 1): 0, TopicPartition("events", 2): 7}
    seeks: list = []

    async def committed_offset(tp: TopicPartition) -> int | None:
        return committed[tp]

    consumer = SimpleNamespace(
        _subscription=SimpleNamespace(assigned_partitions=lambda: set(committed)),
        committed=committed_offset,
        _fetcher=SimpleNamespace(seek_to=lambda tp, offset: seeks.append((tp.partition, offset))))
    assert asyncio.run(AIOKafkaConsumer.seek_to_committed(consumer)) == committed
    assert seeks == [(2, 7)]


def _app_seeking(committed: dict, reset: str) -> tuple[SimpleNamespace, list]:
    sought: list = []

    async def seek_to_committed() -> dict:
        return committed

    async def seek_to_beginning(*tps: TopicPartition) -> None:
        sought.extend(tps)

    app = SimpleNamespace(
        conf=SimpleNamespace(consumer_auto_offset_reset=reset),
        tables=SimpleNamespace(changelog_topics={CHANGELOG_0.topic}),
        consumer=SimpleNamespace(seek_to_committed=seek_to_committed,
                                 _thread=SimpleNamespace(seek_to_beginning=seek_to_beginning)))
    seek_uncommitted_to_start(app)
    return app, sought


def test_stream_partitions_without_a_committed_offset_are_sought_to_their_start() -> None:
    committed = {EVENTS_0: None, TopicPartition("events", 1): 0, TopicPartition("events", 2): 7, CHANGELOG_0: None}
    app, sought = _app_seeking(committed, reset="earliest")
    assert asyncio.run(app.consumer.seek_to_committed()) == committed, "faust still sees what was committed"
    assert set(sought) == {EVENTS_0, TopicPartition("events", 1)}, "changelogs keep the positions recovery gave"


def test_without_earliest_reset_nothing_is_sought() -> None:
    app, sought = _app_seeking({EVENTS_0: None}, reset="latest")
    asyncio.run(app.consumer.seek_to_committed())
    assert sought == []


def _consumer_with_acks() -> tuple[SimpleNamespace, list[dict]]:
    """The attributes faust's ``Consumer.on_partitions_revoked`` reads, with offsets 5-7 of the events
    partition acknowledged but not committed; its app-level handler commits, as faust's does."""
    commits: list[dict] = []
    tp = TP("events", 0)
    consumer = SimpleNamespace(
        diag=SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None),
        app=SimpleNamespace(_start_span_from_rebalancing=lambda name: contextlib.nullcontext()),
        _active_partitions={tp}, _paused_partitions=set(), _gap={}, _acked={tp: [5, 6, 7]},
        _acked_index={tp: {5, 6, 7}}, _read_offset={tp: 7}, _committed_offset={tp: 5},
        assignment=lambda: {tp})

    async def commit() -> None:
        commits.append({tp: list(offsets) for tp, offsets in consumer._acked.items() if offsets})

    async def app_on_partitions_revoked(revoked: set) -> None:
        await commit()

    consumer.commit = commit
    consumer._on_partitions_revoked = app_on_partitions_revoked
    consumer.on_partitions_revoked = lambda revoked: Consumer.on_partitions_revoked(consumer, revoked)
    return consumer, commits


def test_faust_discards_acknowledgements_before_its_commit_on_revocation() -> None:
    """Why the fix exists: if faust's revocation commit ever sees the acknowledgements, this fails."""
    consumer, commits = _consumer_with_acks()
    asyncio.run(consumer.on_partitions_revoked({TP("events", 0)}))
    assert commits == [{}]


def test_with_the_fix_the_acknowledged_offsets_are_committed_first() -> None:
    consumer, commits = _consumer_with_acks()
    commit_before_revoke(consumer)
    asyncio.run(consumer.on_partitions_revoked({TP("events", 0)}))
    assert commits == [{TP("events", 0): [5, 6, 7]}, {}]
