"""``igrec demo``: the local stack and a real round trip, dataset sessions -> Kafka -> Neo4j.

Until the scoring worker exists this is the whole pipeline there is: it proves on a fresh machine that
Kafka and Neo4j run, that events flow through a real topic keyed by user, and that the knowledge graph is
written idempotently (the demo writes its clicks twice and checks that nothing doubled).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from deploy import stack
from model.data import read_test_tsv
from streams import neo4j_sink
from streams.replay import cases_to_sessions, publish, session_events
from streams.settings import ROOT, Settings
from streams.topics import ensure_topics
from streams.triples import Triple, edge

DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "diginetica" / "srgnn_split"


async def _round_trip(settings: Settings, events: list[dict]) -> list[dict]:
    """Publish ``events`` to the events topic and read exactly them back (from the offsets before publishing)."""
    topic = settings.topic_events
    partitions = (await ensure_topics(settings))[topic]
    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp, offset in (await consumer.end_offsets(tps)).items():
            consumer.seek(tp, offset)
        await publish(settings, topic, events)
        print(f"published {len(events)} click events to {topic} (key = user id, {len(tps)} partitions)")
        received: list[dict] = []
        with tqdm(total=len(events), desc=f"consume {topic}", unit="ev") as bar:
            while len(received) < len(events):
                batch = await consumer.getmany(timeout_ms=10_000)
                if not batch:
                    raise RuntimeError(f"only {len(received)} of {len(events)} events came back within 10 s")
                for messages in batch.values():
                    received.extend(orjson.loads(m.value) for m in messages)
                    bar.update(len(messages))
        return received
    finally:
        await consumer.stop()


def _click_triples(events: list[dict]) -> list[Triple]:
    """HAD and CLICKED {pos, ts} facts; a click's position is its rank by time within its session."""
    triples = []
    for session_id in sorted({e["session_id"] for e in events}):
        clicks = sorted((e for e in events if e["session_id"] == session_id), key=lambda e: e["ts"])
        triples.append(edge(("User", clicks[0]["user_id"]), "HAD", ("Session", session_id)))
        triples.extend(
            edge(("Session", session_id), "CLICKED", ("Item", e["item_id"]), pos=pos, ts=e["ts"])
            for pos, e in enumerate(clicks)
        )
    return triples


def run_demo(settings: Settings, dataset: str | None, n_sessions: int) -> int:
    began = time.monotonic()
    folder = Path(dataset) if dataset else DEFAULT_DATASET
    print(f"igrec demo: local stack, then {n_sessions} real test sessions of {folder} -> Kafka -> Neo4j\n")
    stack.up(settings)

    sessions = cases_to_sessions(read_test_tsv(folder / "test.tsv"))[:n_sessions]
    run = f"demo{int(time.time())}"
    events = list(session_events(sessions, run=run))
    received = asyncio.run(_round_trip(settings, events))
    if sorted(received, key=lambda e: e["event_id"]) != sorted(events, key=lambda e: e["event_id"]):
        print("FAILED: the events read back from Kafka differ from those published")
        return 1
    print(f"consumed all {len(received)} events back, none lost or altered")

    triples = _click_triples(received)
    with neo4j_sink.connect(settings) as driver:
        neo4j_sink.ensure_schema(driver, settings.neo4j_database)
        neo4j_sink.write_triples(driver, settings.neo4j_database, triples)
        once = neo4j_sink.counts(driver, settings.neo4j_database)
        neo4j_sink.write_triples(driver, settings.neo4j_database, triples)
        twice = neo4j_sink.counts(driver, settings.neo4j_database)
    if once != twice:
        print(f"FAILED: writing the same clicks twice changed the graph: {once} -> {twice}")
        return 1
    print("wrote users, sessions, items and clicks to Neo4j twice; the second write changed nothing")
    print("Neo4j now holds: " + ", ".join(f"{name} {n}" for name, n in once.items() if n))
    print(
        f"\nlook: Neo4j at {settings.neo4j_url} (user {settings.neo4j_user}, password in "
        f"{settings.neo4j_password_file}), e.g.\n"
        f"  MATCH (u:User)-[:HAD]->(s)-[c:CLICKED]->(i) WHERE u.id STARTS WITH '{run}' RETURN u, s, c, i LIMIT 50\n"
        f"stop the stack with: .venv/bin/igrec stack down\n"
        f"demo finished in {time.monotonic() - began:.0f} s"
    )
    return 0
