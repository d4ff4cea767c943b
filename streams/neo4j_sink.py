"""The Neo4j sink: ``igrec.kg.triples`` -> Neo4j, batched, idempotent, and safe across crashes and outages.

Each poll of up to ``batch_size`` messages (a message is one fact or a bundle of them) becomes managed write
transactions of at most ``batch_size`` facts each, in order, of ``UNWIND $rows ... MERGE`` statements, one per
relationship type or node label. Kafka offsets are committed only after Neo4j has committed the last, so a
crash re-delivers at most the last poll, and since every value is an absolute (``SET r += row.props``; a
counter keeps the larger of its stored and written value), writing it again changes nothing. Malformed
triples go to the triples DLQ with the reason and their source topic/partition/offset. While Neo4j is
unreachable the sink waits with backoff and keeps the batch; nothing is skipped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import CommitFailedError
from neo4j import Driver, GraphDatabase, ManagedTransaction
from neo4j.exceptions import ServiceUnavailable, SessionExpired, TransientError

from streams.records import dead_letter_message
from streams.settings import Settings
from streams.topics import ensure_topics
from streams.triples import NODE_LABELS, RELATIONSHIPS, RelSpec, Triple, TripleError, parse

log = logging.getLogger("igrec.sink")
T = TypeVar("T")
RETRYABLE = (ServiceUnavailable, SessionExpired, TransientError, ConnectionError, OSError)
SINK_GROUP = "igrec-neo4j-sink"


# ---------------------------------------------------------------- schema and Cypher


def connect(settings: Settings) -> Driver:
    """A driver for the configured Neo4j, connectivity verified. The server sends warnings (deprecations,
    performance hints) but not its informational notes, such as one per ``CREATE CONSTRAINT IF NOT EXISTS``
    that finds the constraint, which the driver logged at every start; nor its "unrecognized" warnings: every
    label and relationship type in igrec's Cypher comes from the whitelist, so one the graph does not hold
    yet (a count of NEXT on a fresh graph, as the demo makes) just has none, and the driver logged a
    paragraph for each."""
    driver = GraphDatabase.driver(settings.neo4j_url, auth=settings.neo4j_auth(), notifications_min_severity="WARNING",
                                  notifications_disabled_classifications=["UNRECOGNIZED"])
    driver.verify_connectivity()
    return driver


def ensure_schema(driver: Driver, database: str) -> None:
    """Create the uniqueness constraint on ``id`` for every igrec label (idempotent)."""
    for label in NODE_LABELS:
        driver.execute_query(
            f"CREATE CONSTRAINT {label.lower()}_id IF NOT EXISTS FOR (n:{label}) REQUIRE n.id IS UNIQUE",
            database_=database,
        )


def node_cypher(label: str) -> str:
    return f"UNWIND $rows AS row MERGE (n:{label} {{id: row.id}}) SET n += row.props"


def edge_cypher(rel: str) -> str:
    """MERGE both endpoints and the relationship, identified by the type's key properties, and set its
    properties; a counter (``RelSpec.grows``) keeps the larger of its stored and written value."""
    spec = RELATIONSHIPS[rel]
    key = ", ".join(f"{name}: row.props.{name}" for name in spec.key)
    key_map = f" {{{key}}}" if key else ""
    cypher = (
        f"UNWIND $rows AS row "
        f"MERGE (h:{spec.head} {{id: row.head}}) SET h += row.head_props "
        f"MERGE (t:{spec.tail} {{id: row.tail}}) SET t += row.tail_props "
        f"MERGE (h)-[r:{rel}{key_map}]->(t)"
    )
    if spec.grows:
        kept = ", ".join(f"r.{name} AS kept_{name}" for name in spec.grows)
        larger = ", ".join(f"r.{name} = CASE WHEN kept_{name} > r.{name} THEN kept_{name} ELSE r.{name} END"
                           for name in spec.grows)
        return f"{cypher} WITH r, row, {kept} SET r += row.props SET {larger}"
    return f"{cypher} SET r += row.props"


NODE_CYPHER = {label: node_cypher(label) for label in NODE_LABELS}
EDGE_CYPHER = {rel: edge_cypher(rel) for rel in RELATIONSHIPS}
COUNTED = {EDGE_CYPHER[rel]: spec for rel, spec in RELATIONSHIPS.items() if spec.grows}
"""The statements of relationship types with counters, and their types."""


def statements(triples: Iterable[Triple]) -> list[tuple[str, list[dict]]]:
    """Group triples into (Cypher, rows) pairs: one statement per node label / relationship type.

    Rows keep message order within a group, so when one batch carries two values of the same property
    the later one wins, as it would one message at a time. A type with counters gets one row per
    relationship (:func:`merged`).
    """
    groups: dict[str, list[dict]] = {}
    for t in triples:
        if t.rel is None:
            groups.setdefault(NODE_CYPHER[t.head_label], []).append({"id": t.head_id, "props": t.head_props})
        else:
            groups.setdefault(EDGE_CYPHER[t.rel], []).append(
                {
                    "head": t.head_id,
                    "head_props": t.head_props,
                    "tail": t.tail_id,
                    "tail_props": t.tail_props or {},
                    "props": t.props or {},
                }
            )
    return [(cypher, merged(rows, COUNTED[cypher]) if cypher in COUNTED else rows) for cypher, rows in groups.items()]


def merged(rows: list[dict], spec: RelSpec) -> list[dict]:
    """One row per relationship of ``spec``'s type: the properties of its rows in order, the later value winning,
    except that a counter keeps the largest. Cypher reads what a statement's rows compare with before it writes
    any of them, so two rows of one relationship would both compare with the stored count, and the later would
    win even if lower."""
    by_identity: dict[tuple, dict] = {}
    for row in rows:
        identity = (row["head"], row["tail"], *(row["props"].get(name) for name in spec.key))
        earlier = by_identity.get(identity)
        if earlier is None:
            by_identity[identity] = row
            continue
        props = earlier["props"] | row["props"]
        for name in spec.grows:
            if name in earlier["props"] and name in row["props"]:
                props[name] = _larger(earlier["props"][name], row["props"][name])
        by_identity[identity] = {
            "head": row["head"],
            "head_props": earlier["head_props"] | row["head_props"],
            "tail": row["tail"],
            "tail_props": earlier["tail_props"] | row["tail_props"],
            "props": props,
        }
    return list(by_identity.values())


def _larger(earlier: Any, later: Any) -> Any:
    """The larger of two values of a counter, the later one where they do not compare (as Cypher's ``>`` gives
    null for values of two types, and the sink's statement then writes the later)."""
    try:
        return earlier if earlier > later else later
    except TypeError:
        return later


def _run_all(tx: ManagedTransaction, work: Sequence[tuple[str, list[dict]]]) -> None:
    for cypher, rows in work:
        tx.run(cypher, rows=rows).consume()


def write_triples(driver: Driver, database: str, triples: Sequence[Triple]) -> None:
    """Write ``triples`` in one managed transaction (the driver retries transient failures)."""
    with driver.session(database=database) as session:
        session.execute_write(_run_all, statements(triples))


def with_backoff(call: Callable[[], T], what: str, give_up_after: float | None = None, max_wait: float = 10.0) -> T:
    """``call()``, retried with exponential backoff (0.5 s doubling up to ``max_wait``) while Neo4j is
    unreachable; gives up (re-raises) after ``give_up_after`` seconds, or never when it is None."""
    delay, began = 0.5, time.monotonic()
    while True:
        try:
            return call()
        except RETRYABLE as error:
            if give_up_after is not None and time.monotonic() - began > give_up_after:
                raise
            log.warning("%s failed (%s); retrying in %.1f s", what, type(error).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_wait)


def write_with_backoff(driver: Driver, database: str, triples: Sequence[Triple]) -> int:
    """``write_triples``, retried until Neo4j takes it (nothing is skipped); returns how many retries it took."""
    attempts = 0

    def attempt() -> None:
        nonlocal attempts
        attempts += 1
        write_triples(driver, database, triples)

    with_backoff(attempt, "Neo4j write")
    return attempts - 1


def counts(driver: Driver, database: str) -> dict[str, int]:
    """Node counts per igrec label and relationship counts per type (zeros left out)."""
    result: dict[str, int] = {}
    for label in NODE_LABELS:
        records, _, _ = driver.execute_query(f"MATCH (n:{label}) RETURN count(n) AS n", database_=database)
        if records[0]["n"]:
            result[label] = records[0]["n"]
    records, _, _ = driver.execute_query(
        "MATCH ()-[r]->() RETURN type(r) AS type, count(r) AS n ORDER BY type", database_=database
    )
    return result | {record["type"]: record["n"] for record in records}


# ---------------------------------------------------------------- the sink service


@dataclass
class SinkStats:
    messages: int = 0
    written: int = 0
    """Facts written (a bundle message holds several)."""
    dead_lettered: int = 0
    batches: int = 0
    retries: int = 0
    seconds_writing: float = 0.0
    reasons: dict[str, int] = field(default_factory=dict)


class Neo4jSink:
    """Consumes the triples topic in a consumer group and writes each poll to Neo4j (at most ``batch_size`` facts
    per transaction) before committing its offsets."""

    def __init__(
        self,
        settings: Settings,
        group_id: str = SINK_GROUP,
        batch_size: int = 5000,
        topic: str | None = None,
        on_batch: Callable[[SinkStats], None] | None = None,
    ) -> None:
        self.settings = settings
        self.group_id = group_id
        self.batch_size = batch_size
        self.topic = topic or settings.topic_triples
        self.stats = SinkStats()
        self.on_batch = on_batch

    async def run(self, stop: asyncio.Event | None = None, until_caught_up: bool = False) -> SinkStats:
        """Consume until ``stop`` is set, or (``until_caught_up``) until the group has committed the end."""
        await ensure_topics(self.settings, [self.topic, self.settings.topic_triples_dlq])
        driver = await asyncio.to_thread(connect_with_backoff, self.settings)
        await asyncio.to_thread(ensure_schema, driver, self.settings.neo4j_database)
        consumer = AIOKafkaConsumer(
            self.topic,
            **self.settings.aiokafka_kwargs(),
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            max_poll_records=self.batch_size,
            max_poll_interval_ms=30 * 60 * 1000,
        )
        producer = AIOKafkaProducer(**self.settings.aiokafka_kwargs(), enable_idempotence=True, acks="all")
        await consumer.start()
        await producer.start()
        try:
            while stop is None or not stop.is_set():
                batch = await consumer.getmany(timeout_ms=500, max_records=self.batch_size)
                if batch:
                    await self._handle(batch, driver, consumer, producer)
                elif until_caught_up and await self._caught_up(consumer):
                    break
        finally:
            await producer.stop()
            await consumer.stop()
            await asyncio.to_thread(driver.close)
        return self.stats

    async def _handle(
        self,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        driver: Driver,
        consumer: AIOKafkaConsumer,
        producer: AIOKafkaProducer,
    ) -> None:
        triples: list[Triple] = []
        dead_letters = []
        for messages in batch.values():
            for message in messages:
                try:
                    triples += parse(message.value)
                except TripleError as error:
                    dead_letters.append(await self._dead_letter(producer, message, error))
        await asyncio.gather(*dead_letters)  # raises if Kafka refused one: the batch is then not committed
        began = time.monotonic()
        for i in range(0, len(triples), self.batch_size):
            self.stats.retries += await asyncio.to_thread(
                write_with_backoff, driver, self.settings.neo4j_database, triples[i:i + self.batch_size]
            )
        self.stats.seconds_writing += time.monotonic() - began
        offsets = {tp: messages[-1].offset + 1 for tp, messages in batch.items()}
        try:
            await consumer.commit(offsets)
        except CommitFailedError as error:
            log.warning("offset commit refused after a rebalance (%s); the batch will be re-delivered", error)
        self.stats.messages += sum(len(m) for m in batch.values())
        self.stats.written += len(triples)
        self.stats.batches += 1
        if self.on_batch:
            self.on_batch(self.stats)

    async def _dead_letter(self, producer: AIOKafkaProducer, message: ConsumerRecord,
                           error: TripleError) -> asyncio.Future:
        """Send ``message``'s DLQ record; returns its delivery."""
        record = dead_letter_message(error, message.topic, message.partition, message.offset, message.key,
                                     message.value)
        delivery = await producer.send(self.settings.topic_triples_dlq, value=record, key=message.key)
        self.stats.dead_lettered += 1
        self.stats.reasons[error.code] = self.stats.reasons.get(error.code, 0) + 1
        return delivery

    async def _caught_up(self, consumer: AIOKafkaConsumer) -> bool:
        assignment = consumer.assignment()
        if not assignment:
            return False
        ends = await consumer.end_offsets(list(assignment))
        committed = {tp: await consumer.committed(tp) or 0 for tp in assignment}
        return all(committed[tp] >= end for tp, end in ends.items())


def connect_with_backoff(settings: Settings, give_up_after: float = 300.0) -> Driver:
    """``connect``, retried while Neo4j is starting or briefly unreachable."""
    return with_backoff(lambda: connect(settings), "Neo4j connect", give_up_after)
