"""The igrec worker: ``igrec.events`` -> per-user session state -> micro-batched scoring -> outputs.

One faust agent takes up to ``batch_max`` events or whatever arrived within ``batch_wait_ms``, then:

1. validates each message (refused ones go to ``igrec.events.dlq`` with the reason and source offset);
2. applies it to its user's state in the ``users`` Table (RocksDB, changelog-backed);
3. sends the batch's item -> item transitions to a second agent, which owns the global NEXT counts;
4. queues the batch for scoring and goes on to the next batch.

A feeder thread (``streams.scoring``) takes everything admitted and waiting as soon as the scorer is free and
has it scored by ``export.scorer.Scorer`` in a child process (one request per chunk of at most ``SCORE_CHUNK``
events, the next one sent before the current answer is read), so chunks grow with the load. An emitter task
takes the scored chunks in order and sends, per event, a Recommendation, an EnrichedEvent and one bundle of the
knowledge triples the event creates, encoded into Kafka record batches (``streams.outbox``) rather than one
producer call at a time. So the event loop admits batch n + 1 while the scorer scores batch n, each on its own
core and with its own GIL.

Delivery is at-least-once with idempotent keys: an event's offset becomes committable only after Kafka has
acknowledged everything the event wrote (its state's changelog, transitions and outputs, or its dead
letter), also when an agent crashes, and a failed delivery stops the worker (:class:`WorkerApp`), so a crash
can only re-deliver. A
re-delivered event does not change the state (``streams.state`` keeps the last applied offset per user) and
its recommendation is recomputed on the same prefix and re-emitted under the same ``event_id``; triples are
absolute values. A re-delivered event still writes its user's state again (and a repeated transition its
count): a Table writes its local store before its changelog, so a crash or a failed delivery between the two
leaves a state that the store holds and the changelog does not. The restart finds the event applied, and
without that write the changelog, the only copy that follows the partition to another worker, would miss it
until the user's next event. Exactly-once (Kafka transactions) was not chosen: it would make every output
wait for a transaction commit, and the idempotent contract already gives every consumer one answer per event.

A user's state lives in the partition its events arrive on (the Table is co-partitioned with the events
topic), so any producer partitioner works as long as it sends one key to one partition; the key must be the
user id (checked).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import faust
import faust.streams as faust_streams
import orjson
from mode.utils.times import want_seconds

from streams import faust_fixes, metrics
from streams.changelog import OutboxTable
from streams.inline_delivery import deliver_inline, take_in_runs
from streams.next_counts import (
    UnreadableCount,
    UnreadableTransitions,
    counted,
    counted_offsets,
    read_count,
    transition_bundle,
    transition_key,
)
from streams.outbox import Outbox, kafka_producer
from streams.records import SCHEMA_VERSION, EnrichedEvent, Event, Recommendation, Refusal, dead_letter_message
from streams.scoring import ScorerProcess, Scoring, ScoringThread, unless_stopped
from streams.settings import Settings
from streams.state import (
    OversizedSession,
    SessionPolicy,
    Step,
    UnreadableState,
    applied_offsets,
    apply_event,
    read_state,
)
from streams.topics import default_partition, ensure_topics
from streams.triples import Triple, bundles, edge
from streams.validate import EventError, parse_event

log = logging.getLogger("igrec.worker")

# faust's Tables write to the partition of the "current event", a context variable that faust sets while
# iterating a stream one event at a time. A micro-batch from ``take_events`` is handled in the agent's own
# task, so the agent sets it for each event of the batch here. (``Stream._set_current_event`` must not be
# used: it also changes the stream's shared attribute, which the background task that fills the batch reads.)
_CURRENT_EVENT = faust_streams._current_event
SCORE_CHUNK = 128
"""Most events per request to the scorer process."""
BATCHES_IN_FLIGHT = 4
"""Admitted micro-batches waiting for the scorer; past this many the agent waits (backpressure)."""
CHUNKS_IN_FLIGHT = 3
"""Scored chunks handed to the emitter and not yet sent; past this many the scorer waits."""
STOP_AFTER_CRASH_S = 15.0
"""How long a worker whose agent crashed may take to stop cleanly (commit, leave the group) before it exits."""
STATS_INTERVAL_S = 5.0
STALL_S = 30.0
"""Lag with no event taken for this long is logged as a stall, with what the consumer and the pipeline hold."""
INTEREST_ITEMS_REMEMBERED = 1_000_000
"""Items whose IN_INTEREST facts this process has sent; past this many the set starts again (a re-send is
harmless: the facts are absolute)."""


@dataclass(frozen=True)
class WorkerConfig:
    """How the worker batches, where it keeps local state, and which artefact scores."""

    artefact: Path
    app_id: str = "igrec-worker"
    batch_max: int = 256
    batch_wait_ms: float = 10.0
    policy: SessionPolicy = field(default_factory=SessionPolicy)
    providers: str = "auto"
    threads: int | None = 1
    fp16: bool = False
    """The item product in float16 on a GPU provider (see ``export.scorer.Scorer``)."""
    int8: bool = False
    """The item product in int8 on the CPU, its top candidates scored again exactly (``export.precision``)."""
    metrics_port: int | None = 9108
    data_dir: Path | None = None
    session_timeout_s: float = 10.0
    """Kafka drops a worker that sent no heartbeat for this long and hands its partitions on. faust's default,
    60 s, held a crashed worker's partitions for a minute before its replacement got them; heartbeats go
    every 3 s from the consumer's own thread, so the event loop's load does not delay them."""
    scorer_nice: int = -10
    """Added to the scorer process's nice value. On a machine whose cores the worker shares (the broker, other
    processes), a scorer that waits for a core holds up every event of its chunk; a higher priority
    cut the median latency by about a fifth at 500 and 1,000 events/s on two cores (docs/results.md). Needs
    CAP_SYS_NICE, else ignored."""
    loop: str = "uvloop"
    """The worker's asyncio event loop: ``uvloop`` or ``asyncio`` (the standard library's)."""


@dataclass
class Scored:
    """One event after state: its record, step and source message, ready for scoring and output."""

    event: Event
    step: Step
    received: float
    kafka_ts: float
    message: Any
    written: asyncio.Future | None = None
    """The delivery of what admitting the event wrote: its state's changelog and its NEXT transitions."""


def create_app(settings: Settings, config: WorkerConfig) -> faust.App:
    """The faust app with its topics, the ``users`` Table and the scoring agent."""
    from export.artefact import read_card

    data_dir = config.data_dir or settings.state_dir / "worker" / config.app_id
    data_dir.mkdir(parents=True, exist_ok=True)
    app = WorkerApp(
        config.app_id,
        **settings.faust_broker(),
        store="rocksdb://",
        datadir=str(data_dir),
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=1,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        web_enabled=False,
        stream_buffer_maxsize=4 * config.batch_max,
        producer_linger_ms=5,
        broker_session_timeout=config.session_timeout_s,
        producer_max_batch_size=256 * 1024,
        Table=OutboxTable,
    )
    partitions = settings.topic_partitions
    events = app.topic(settings.topic_events, key_serializer="raw", value_serializer="raw", partitions=partitions)
    users = cast(OutboxTable, app.Table("users", partitions=partitions, key_type=bytes, value_type=bytes))
    users.high_water = applied_offsets
    transitions = app.topic(
        f"{config.app_id}-transitions",
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
        internal=True,
    )
    next_counts = cast(OutboxTable, app.Table("next-counts", partitions=partitions, key_type=bytes, value_type=bytes))
    next_counts.high_water = counted_offsets
    card = read_card(config.artefact)  # verified by the scorer process, which refuses a damaged artefact
    model_version = str(card.get("model_version") or card.get("created", "unknown"))
    scorer = ScorerProcess(config.artefact, providers=config.providers, threads=config.threads,
                           nice=config.scorer_nice, fp16=config.fp16, int8=config.int8)
    interest_items_sent: set[str] = set()

    def dead_letter(out: Outbox, message: Any, error: Refusal, value: bytes | None = None) -> None:
        """A DLQ record for ``message``, refused for ``error``, with ``value`` in place of the message's own when
        given; counted by the error's code."""
        metrics.DLQ.labels(reason=error.code).inc()
        record = dead_letter_message(error, message.topic, message.partition, message.offset, message.key,
                                     message.value if value is None else value)
        partition = None if message.key else message.partition % out.partition_count(settings.topic_dlq)
        out.add(settings.topic_dlq, message.key, record, partition)

    def admit(out: Outbox, message: Any, now: float) -> Scored:
        """Validate ``message`` and apply it to its user's state; raises EventError / OversizedSession."""
        event = parse_event(message.value, message.key, now)
        state = user_state(out, message)
        state, step = apply_event(state, event, message.partition, message.offset, config.policy)
        users[message.key] = orjson.dumps(state)  # a re-delivery too: see the module's docstring
        kafka_ts = message.timestamp or now  # faust gives Kafka timestamps in seconds
        return Scored(event, step, now, kafka_ts, message)

    def user_state(out: Outbox, message: Any) -> dict[str, Any] | None:
        """The stored state of ``message``'s user (None: a new user). A state that cannot be read (damaged, or
        written by an incompatible version) goes to the DLQ with the event that met it, and the user starts
        afresh: failing on it would stop the worker at every restart, since the state stays in the changelog.
        """
        raw = users.get(message.key)
        try:
            return read_state(raw)
        except UnreadableState as error:
            dead_letter(out, message, UnreadableState(f"user state unreadable: {error}; the user starts afresh"),
                        value=raw)
            log.error("user state unreadable: the user starts afresh", extra={"fields": {
                "user": message.key.decode(errors="replace"), "partition": message.partition,
                "offset": message.offset, "error": str(error)}})
            return None

    async def open_outbox() -> Outbox:
        """An :class:`streams.outbox.Outbox` on faust's producer for every topic the agents write to."""
        producer = kafka_producer(app)
        await transitions.maybe_declare()  # faust creates it only later; asking for it first logs an error
        topics = (settings.topic_recommendations, settings.topic_enriched, settings.topic_triples,
                  settings.topic_dlq, transitions.get_topic_name())
        return Outbox(producer, {topic: len(await producer.partitions_for(topic)) for topic in topics})

    def emit(out: Outbox, item: Scored, scoring: Scoring, score_ms: float) -> None:
        event, step = item.event, item.step
        items = scoring.items
        key = event.user_id.encode()
        now = time.time()
        recommendation = Recommendation.encode(
            schema_version=SCHEMA_VERSION,
            event_id=event.event_id,
            user_id=event.user_id,
            session_id=step.session_id,
            position=step.position,
            items=items,
            scores=scoring.scores,
            scored=scoring.scored,
            model_version=model_version,
            event_ts=event.ts,
            emitted_at=now,
            latency_ms={
                "queue": 1000.0 * (item.received - item.kafka_ts),
                "score": score_ms,
                "total": 1000.0 * (now - item.kafka_ts),
            },
        )
        out.add(settings.topic_recommendations, key, recommendation)
        enriched_event = EnrichedEvent.encode(
            schema_version=SCHEMA_VERSION,
            event_id=event.event_id,
            user_id=event.user_id,
            session_id=step.session_id,
            item_id=event.item_id,
            ts=event.ts,
            type=event.type,
            position=step.position,
            session_length=step.position + 1,
            new_session=step.new_session,
            known_item=scoring.known_item,
            interest_weights=scoring.interests,
            recommendations=items,
            context=event.context,
        )
        out.add(settings.topic_enriched, key, enriched_event)
        item_interests = None
        if scoring.item_interests is not None and event.item_id not in interest_items_sent:
            if len(interest_items_sent) >= INTEREST_ITEMS_REMEMBERED:
                interest_items_sent.clear()
            interest_items_sent.add(event.item_id)
            item_interests = scoring.item_interests
        for bundle in bundles(event_triples(event, step, scoring, model_version, item_interests)):
            out.add(settings.topic_triples, key, bundle)
        metrics.LATENCY.observe(now - item.kafka_ts)

    @app.agent(events)
    async def process(stream: faust.StreamT) -> None:
        """Admit each micro-batch, queue it for scoring and take the next one at once: the scoring stage and
        the emitter work on earlier batches meanwhile. Every message gets one more reference as the stream
        takes it (:func:`hold_messages`), released once Kafka has acknowledged what the event wrote: the
        batch's changelog, transitions and dead letters sent here, and the outputs that the emitter sends.
        faust commits an offset only when every reference is released (and all earlier offsets), so no event
        is committed before its outputs are in Kafka, crash or not."""
        out = await open_outbox()
        users.write_through(out)
        stage: ScoringThread[Scored, Scoring] = ScoringThread(
            Steps(scorer), chunk=SCORE_CHUNK, max_waiting=BATCHES_IN_FLIGHT, max_scored=CHUNKS_IN_FLIGHT)
        stage.start()
        freeze_long_lived_objects()
        pipeline.update(admitted=stage.inbox, scored=stage.scored)
        emitter = asyncio.ensure_future(emit_in_order(stage))
        hold_messages(stream)
        try:
            async for batch in stream.take_events(config.batch_max, within=config.batch_wait_ms / 1000.0):
                now = time.time()
                admitted: list[Scored] = []
                refused: list[Any] = []
                for faust_event in batch:
                    _CURRENT_EVENT.set(weakref.ref(faust_event))
                    message = faust_event.message
                    processed[message.partition] = message.offset
                    try:
                        admitted.append(admit(out, message, now))
                    except (EventError, OversizedSession) as error:
                        dead_letter(out, message, error)
                        refused.append(message)
                metrics.EVENTS.labels(outcome="dead_lettered").inc(len(refused))
                add_transitions(out, admitted)
                written = await out.send()
                release_when_delivered([written], refused)
                for item in admitted:
                    item.written = written
                if admitted:
                    await unless_stopped(stage.put(admitted), emitter)
        finally:
            emitter.cancel()
            stage.stop()

    async def emit_in_order(stage: ScoringThread[Scored, Scoring]) -> None:
        """Outputs of each scored chunk, in admission order, then the release of its events' messages."""
        out = await open_outbox()
        while True:
            chunk = await stage.get()
            score_ms = 1000.0 * (time.perf_counter() - chunk.began)
            for item, scoring in zip(chunk.items, chunk.results, strict=True):
                emit(out, item, scoring, score_ms)
            written = {id(item.written): item.written for item in chunk.items if item.written is not None}
            release_when_delivered([await out.send(), *written.values()], [item.message for item in chunk.items])
            stage.done_with(chunk)
            metrics.BATCH.observe(len(chunk.items))
            metrics.SCORE_SECONDS.observe(time.perf_counter() - chunk.began)
            metrics.EVENTS.labels(outcome="recommended").inc(len(chunk.items))

    def add_transitions(out: Outbox, admitted: list[Scored]) -> None:
        """The batch's item -> item transitions, one message per partition of the transitions topic (each
        pair goes to the partition its key hashes to, so its count has one owner). Re-delivered events send
        theirs again: the first sending may not have reached Kafka, and the count recognises a repeat."""
        topic = transitions.get_topic_name()
        partitions = out.partition_count(topic)
        grouped: dict[int, list[dict]] = {}
        for item in admitted:
            step = item.step
            if step.previous_item is not None:
                pair = transition_key(step.previous_item, item.event.item_id)
                grouped.setdefault(default_partition(pair, partitions), []).append(
                    {"head": step.previous_item, "tail": item.event.item_id, "p": item.message.partition,
                     "o": item.message.offset})
        for partition, bundle in grouped.items():
            out.add(topic, None, orjson.dumps(bundle), partition)

    @app.agent(transitions)
    async def count_transitions(stream: faust.StreamT) -> None:
        """Global NEXT counts, one pair per key, so each count lives on one worker. A transition counts once:
        per source partition the pair keeps the highest source offset it has counted, and a user's events
        (hence their transitions) arrive in offset order, so a re-delivered transition is recognised. A
        message or a stored count it cannot read is dead-lettered (see :mod:`streams.next_counts`). The NEXT
        facts of one transitions message go out as one bundle, to the triples partition of that message's
        partition: a pair always hashes to one transitions partition, so its counts reach the sink in order."""
        out = await open_outbox()
        next_counts.write_through(out)
        hold_messages(stream)
        async for faust_event in stream.events():
            message = faust_event.message
            try:
                bundle = transition_bundle(faust_event.value)
            except UnreadableTransitions as error:
                dead_letter(out, message, error)
                log.error("transitions message unreadable: dead-lettered", extra={"fields": {
                    "partition": message.partition, "offset": message.offset, "error": str(error)}})
                bundle = []
            facts = []
            for transition in bundle:
                key = transition_key(transition["head"], transition["tail"])
                try:
                    state = read_count(next_counts.get(key))
                except UnreadableCount as error:
                    dead_letter(out, message, UnreadableCount(f"{key.decode()}: {error}; this transition (source "
                                                              f"{transition['p']}/{transition['o']}) not counted"),
                                value=orjson.dumps(transition))
                    log.error("stored NEXT count unreadable: transition dead-lettered", extra={"fields": {
                        "pair": key.decode(), "error": str(error)}})
                    continue
                state = counted(state, transition) or state
                next_counts[key] = orjson.dumps(state)  # a repeat too, as a re-delivered event's state
                facts.append(edge(("Item", transition["head"]), "NEXT", ("Item", transition["tail"]),
                                  count=state["count"]))
            partition = message.partition % out.partition_count(settings.topic_triples)
            for facts_message in bundles(facts):
                out.add(settings.topic_triples, None, facts_message, partition)
            release_when_delivered([await out.send()], [message])

    def release_when_delivered(deliveries: list[asyncio.Future], messages: list[Any]) -> None:
        """Release ``messages`` (their events are handled) once all of ``deliveries`` (:meth:`Outbox.send`)
        have succeeded. A failed delivery stops the worker instead, with the messages still held: their
        offsets stay uncommitted, and a restart re-delivers their events."""

        def released(delivery: asyncio.Future) -> None:
            if delivery.cancelled():
                return
            error = delivery.exception()
            if error is not None:
                app.stop_for(f"a delivery to Kafka failed ({error!r})")
                return
            for message in messages:
                message.ack(app.consumer)

        asyncio.gather(*deliveries).add_done_callback(released)

    processed: dict[int, int] = {}
    pipeline: dict[str, Any] = {}
    stall = StallWatch()

    @app.task
    async def announce() -> None:
        log.info("worker started", extra={"fields": {
            "app_id": config.app_id, "artefact": str(config.artefact), "model_version": model_version,
            "providers": scorer.providers, "fp16": config.fp16, "int8": config.int8,
            "batch_max": config.batch_max, "batch_wait_ms": config.batch_wait_ms,
            "loop": type(asyncio.get_running_loop()).__module__.split(".")[0]}})

    @app.timer(interval=STATS_INTERVAL_S)
    async def report_lag() -> None:
        """Consumer lag per partition into the metrics, and one structured stats line per interval."""
        lags = {}
        for tp in app.consumer.assignment():
            if tp.topic == settings.topic_events:
                highwater = app.consumer.highwater(tp)
                if highwater is not None:
                    lags[tp.partition] = max(highwater - processed.get(tp.partition, -1) - 1, 0)
                    metrics.LAG.labels(partition=str(tp.partition)).set(lags[tp.partition])
        lag = sum(lags.values())
        log.info("stats", extra={"fields": {**metrics.totals(), "lag": lag, "partitions": sorted(lags)}})
        if stall.stalled(processed, lag, time.monotonic()):
            log.warning("no event taken for %.0f s while %d wait", STALL_S, lag,
                        extra={"fields": {**stall_report(app, pipeline), "lag_per_partition": lags}})

    faust_fixes.install(app)
    deliver_inline(app.consumer)
    take_in_runs()
    return app


class Steps:
    """The scorer process as the scoring stage's :class:`~streams.scoring.Requests` of admitted events: each
    event's step goes to the scorer."""

    def __init__(self, scorer: ScorerProcess):
        self._scorer = scorer

    def submit(self, items: list[Scored]) -> None:
        self._scorer.submit([item.step for item in items])

    def collect(self) -> list[Scoring]:
        return self._scorer.collect()


def hold_messages(stream: faust.StreamT) -> None:
    """Give each message one more reference as ``stream`` takes it, for the agent to release when its event is
    handled (``message.ack``). Added before the agent iterates (``take_events`` adds its own processor then,
    after this one).

    faust acknowledges the event a crashed agent was on (for ``take_events``, every event of its batch), and a
    ``take_events`` stream's background task, which fills the batches, goes on taking events and
    acknowledging them (with nobody to handle them) until the worker stops: a commit then skipped them. With
    the reference held, their offsets stay uncommitted and a restart re-delivers them (``docs/upstream.md``,
    7)."""

    def hold(value: Any) -> Any:
        event = stream.current_event
        if event is not None:
            event.message.incref()
        return value

    stream.add_processor(hold)


class WorkerFailed(RuntimeError):
    """The worker cannot go on without losing events and stops with this reason (see :class:`WorkerApp`)."""


class WorkerApp(faust.App):
    """faust's App, stopping (exit status 1, a critical log line with the reason) at an agent's first crash or
    a failed delivery of the worker's outputs to Kafka.

    faust would restart a crashed agent and run on, but without what the crashed one held: its events stay
    unanswered and uncommitted until the worker restarts, while the new agent answers the events after them.
    That breaks the worker's idempotence, which relies on a user's events being applied in offset order (a
    re-delivered event older than the last applied one is taken as a repeat, and its NEXT transitions as
    counted), and an agent that fails on every message would leave a worker that answers but no longer does
    that agent's work (once, a co-partitioning error made the NEXT counter do so). A delivery that failed
    (Kafka refused a batch, or it expired unsent after the producer's 20-minute request timeout) leaves its
    events unanswered in the same way. Stopping hands the partitions to the group and the process to its
    supervisor; every message stays referenced until its event is handled (:func:`hold_messages`), so a
    restart re-delivers what the failure left (nothing lost)."""

    failure: str | None = None
    _stopping: asyncio.Future | None = None

    def stop_for(self, reason: str) -> None:
        """Stop the worker because of ``reason`` (a callback's way: it cannot await the stop)."""
        if self._fail(reason):
            self._stopping = asyncio.ensure_future(self.crash(WorkerFailed(reason)))

    async def _on_agent_error(self, agent: Any, exc: BaseException) -> None:
        reason = f"agent {agent.name.rsplit('.', 1)[-1]} crashed ({exc!r})"
        self._fail(reason)
        await super()._on_agent_error(agent, exc)
        await self.crash(WorkerFailed(reason))

    def _fail(self, reason: str) -> bool:
        """Log ``reason`` and arm the exit watchdog (first, as faust's crash handling commits, which can wait),
        the first time only; whether this was the first."""
        if self.failure is not None:
            return False
        self.failure = reason
        log.critical("%s: stopping the worker", reason, extra={"fields": {"reason": reason}})
        exit_unless_stopped_within(STOP_AFTER_CRASH_S)
        return True


def exit_unless_stopped_within(seconds: float) -> None:
    """Exit the process (status 1) in ``seconds`` if it is still running then. faust's clean stop after a crash
    can wait for good (2 of 14 runs of the crash tests hung); exiting without it is as safe as kill -9,
    since nothing unhandled was committed."""

    def exit_now() -> None:
        log.critical("the worker did not stop within %g s of its failure: exiting", seconds)
        logging.shutdown()
        os._exit(1)

    timer = threading.Timer(seconds, exit_now)
    timer.daemon = True
    timer.start()


class StallWatch:
    """Notices a stall: events waiting (lag) while no event was taken for ``STALL_S`` seconds. Says so once per
    ``STALL_S`` while it lasts, so an operator (or a test's log) sees where a stuck worker stands."""

    def __init__(self, after_s: float = STALL_S) -> None:
        self.after_s = after_s
        self.progress: tuple = ()
        self.since = time.monotonic()
        self.reported = float("-inf")

    def stalled(self, processed: dict[int, int], lag: int, now: float) -> bool:
        """Whether to report a stall now; also sets the ``igrec_stalled_seconds`` gauge (0 while events flow)."""
        progress = tuple(sorted(processed.items()))
        if lag == 0 or progress != self.progress:
            self.progress, self.since = progress, now
            metrics.STALLED.set(0)
            return False
        metrics.STALLED.set(now - self.since)
        if now - self.since < self.after_s or now - self.reported < self.after_s:
            return False
        self.reported = now
        return True


def stall_report(app: faust.App, pipeline: dict[str, Any]) -> dict[str, Any]:
    """What a stuck worker holds: its assignment, the partitions its consumer fetches, pauses or holds back for a
    full buffer, flow control and recovery, un-acknowledged messages, the pipeline's queues, and where each agent
    waits. Reads faust's private consumer attributes where it has no public ones (missing ones read None)."""
    consumer = app.consumer

    def tps(name: str) -> list[str] | None:
        value = getattr(consumer, name, None)
        return None if value is None else sorted(f"{tp.topic}:{tp.partition}" for tp in value)

    return {
        "assigned": sorted(f"{tp.topic}:{tp.partition}" for tp in consumer.assignment()),
        "active": tps("_active_partitions"),
        "paused": tps("_paused_partitions"),
        "buffer_full": tps("_buffered_partitions"),
        "flow_active": getattr(consumer, "flow_active", None),
        "flow_control_active": app.flow_control.is_active(),
        "in_recovery": getattr(app, "in_recovery", None),
        "rebalancing": getattr(app, "rebalancing", None),
        "unacked": len(getattr(consumer, "_unacked_messages", ())),
        "read_offsets": {f"{tp.topic}:{tp.partition}": offset
                         for tp, offset in getattr(consumer, "_read_offset", {}).items()},
        "fetch_state": _fetch_state(consumer),
        "queues": {name: queue.qsize() for name, queue in pipeline.items()},
        "agents": app.agents.human_tracebacks(),
    }


def _fetch_state(consumer: Any) -> dict[str, dict[str, Any]] | None:
    """Per assigned partition, what aiokafka's fetcher holds: its fetch position (None while awaiting a reset),
    whether aiokafka pauses it, and whether fetched records wait in its buffer. None where faust's consumer has
    no aiokafka consumer (another driver, or not started)."""
    aiokafka = getattr(getattr(consumer, "_thread", None), "_consumer", None)
    assignment = getattr(getattr(getattr(aiokafka, "_subscription", None), "subscription", None), "assignment", None)
    if assignment is None:
        return None
    buffered = getattr(aiokafka._fetcher, "_records", {})
    state = {}
    for tp in sorted(assignment.tps):
        value = assignment.state_value(tp)
        records = buffered.get(tp)  # read while the consumer thread changes it: one lookup, no check-then-get
        state[f"{tp.topic}:{tp.partition}"] = {
            "position": value._position,
            "awaiting_reset": value.awaiting_reset,
            "paused": value.paused,
            "buffered": None if records is None else type(records).__name__,
        }
    return state


def event_triples(event: Event, step: Step, scoring: Scoring | None = None, model_version: str = "",
                  item_interests: list[float] | None = None) -> list[Triple]:
    """The knowledge facts one event creates, as absolute values (safe to re-deliver); the worker sends them as
    one bundle message.

    With interest weights: ``(User)-[:INTERESTED_IN {weight}]->(Interest)`` per interest, the weights of
    the user's current session (so the graph holds each user's latest interests), and, given the clicked
    item's ``item_interests`` (the worker passes them the first time its process meets the item),
    ``(Item)-[:IN_INTEREST {weight}]->(Interest)``, a constant of the model. Interest ids are
    ``<model_version>/<m>``: another model's interests are other nodes.
    """
    if not step.found:
        return []
    facts = [
        edge(("Session", step.session_id), "CLICKED", ("Item", event.item_id), pos=step.position, ts=event.ts),
    ]
    if step.position == 0:
        facts.append(edge(("User", event.user_id), "HAD", ("Session", step.session_id)))
    if scoring is not None and scoring.interests is not None:
        facts += [edge(("User", event.user_id), "INTERESTED_IN", ("Interest", f"{model_version}/{m}"), weight=w)
                  for m, w in enumerate(scoring.interests)]
        if item_interests is not None:
            facts += [edge(("Item", event.item_id), "IN_INTEREST", ("Interest", f"{model_version}/{m}"), weight=w)
                      for m, w in enumerate(item_interests)]
    return facts


def internal_topics(app: faust.App) -> tuple[list[str], dict[str, dict[str, str]]]:
    """The app's own topics (its Tables' changelogs and its agents' internal topics), and the configs that
    faust would create them with, for :func:`streams.topics.ensure_topics` to create before the worker starts.

    faust creates them itself as the worker starts, while its consumer is joining the group. A topic created
    during the join can be in the group's metadata snapshot with 0 partitions; every write to a Table whose
    changelog it is then fails faust's co-partitioning check (``PartitionsMismatch``), and the agent restarts
    and fails again until a metadata refresh (up to 5 minutes). Seen in the demo on a fresh stack: no NEXT
    counts. Created first, the topics are in the first snapshot.
    """
    topics = [table.changelog_topic for table in app.tables.values()]
    topics += [agent.channel for agent in app.agents.values() if getattr(agent.channel, "internal", False)]
    names = [topic.get_topic_name() for topic in topics]
    configs: dict[str, dict[str, str]] = {}
    for name, topic in zip(names, topics, strict=True):
        retention_ms = int(want_seconds(topic.retention) * 1000) if topic.retention else None
        config = app.transport._topic_config(retention_ms, topic.compacting, topic.deleting)  # faust's own rule
        config.update(topic.config or {})
        configs[name] = {key: str(value) for key, value in config.items()}
    return names, configs


def freeze_long_lived_objects() -> None:
    """Exempt every object alive now from the cyclic garbage collector (``gc.freeze``). Called when the agent
    starts, once faust's services, topics, tables and consumer exist: they live as long as the process, and
    every full collection walked all of them (about 75,000 objects), stopping the event loop for up to 45 ms
    every few seconds at full load (docs/results.md). Objects made later are collected as before. The cost:
    frozen objects that later form unreachable cycles (a few, after a rebalance) are never freed."""
    gc.freeze()


def quiet_worker_class() -> type:
    """faust's ``Worker`` without its terminal spinner. At ``--loglevel warning`` and above faust turns the
    spinner on, and to spin on every log record it sets the root logger to DEBUG for good: every debug call
    of faust and mode then builds a record that the handler drops (about 2 % of the event loop at full
    load), and the spinner writes to stdout beside the structured logs."""
    from faust.worker import Worker

    class QuietWorker(Worker):
        def on_setup_root_logger(self, logger: logging.Logger, level: int) -> None:
            self.spinner = None

    return QuietWorker


def use_loop(name: str) -> None:
    """Make ``name`` (``uvloop`` or ``asyncio``) the event loop of every loop created from now on."""
    if name == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    elif name == "asyncio":
        asyncio.set_event_loop_policy(None)
    else:
        raise ValueError(f"unknown event loop {name!r}: uvloop or asyncio")


def run_worker(settings: Settings, config: WorkerConfig, loglevel: str = "info", json_logs: bool = True) -> None:
    """Start the worker in the foreground (Ctrl-C or SIGTERM stops it cleanly); logs are JSON lines on stderr
    (:mod:`streams.logs`) unless ``json_logs`` is false."""
    from streams.logs import logging_config

    if config.metrics_port:
        metrics.serve(config.metrics_port)
    metrics.watch_gc()
    use_loop(config.loop)
    app = create_app(settings, config)
    own, configs = internal_topics(app)
    asyncio.run(ensure_topics(settings, [*settings.topics.values(), *own], configs))
    worker = quiet_worker_class()(app, loglevel=loglevel, logging_config=logging_config(loglevel, json_logs))
    worker.execute_from_commandline()
