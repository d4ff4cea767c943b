"""The Neo4j sink on the real broker and the real Neo4j: idempotent replays, outages, DLQ, injection."""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from jsonschema import Draft202012Validator

from deploy import stack
from model.data import read_split
from streams.harness import group_offsets, wait_until
from streams.kg import facts_jsonl_triples, kg_txt_triples, snapshot
from streams.neo4j_sink import SINK_GROUP, Neo4jSink, connect
from streams.replay import publish_facts
from streams.settings import ROOT, Settings
from streams.topics import ensure_topics
from streams.triples import MAX_FACTS, Triple, bundles, edge, node

pytestmark = pytest.mark.integration
TMALL = ROOT.parent / "shared" / "data" / "session_kg_dsrhk" / "Tmall"


def real_triples(prefix: str, n_sessions: int = 150, n_kg: int = 1500) -> list[Triple]:
    """Facts from real Tmall data, in the shape the worker emits them: sessions, clicks, absolute NEXT counts
    (each transition re-emits its running total), and the items' category / seller / brand knowledge."""
    triples: list[Triple] = []
    next_counts: Counter = Counter()
    for s, session in enumerate(read_split(TMALL).train[:n_sessions]):
        user, sess = f"{prefix}u{s % 40}", f"{prefix}s{s}"
        triples.append(edge(("User", user), "HAD", ("Session", sess)))
        for pos, item in enumerate(session):
            triples.append(edge(("Session", sess), "CLICKED", ("Item", f"{prefix}{item}"), pos=pos, ts=1e9 + pos))
            if pos:
                pair = (session[pos - 1], item)
                next_counts[pair] += 1
                triples.append(
                    edge(("Item", f"{prefix}{pair[0]}"), "NEXT", ("Item", f"{prefix}{item}"), count=next_counts[pair])
                )
    triples.extend(kg_txt_triples(TMALL / "kg.txt", prefix=prefix, limit=n_kg))
    triples.append(node("Item", f"{prefix}{read_split(TMALL).train[0][0]}", title="first item", tags=["a", "b"]))
    return triples


async def publish(settings: Settings, topic: str, payloads: list[bytes], pause: float = 0.0, chunks: int = 1) -> None:
    await ensure_topics(settings, [topic])
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), enable_idempotence=True, acks="all")
    await producer.start()
    try:
        size = -(-len(payloads) // chunks)
        for begin in range(0, len(payloads), size):
            for payload in payloads[begin : begin + size]:
                await producer.send(topic, payload, key=b"k")
            await producer.flush()
            await asyncio.sleep(pause)
    finally:
        await producer.stop()


async def drain(settings: Settings, topic: str, group: str) -> Neo4jSink:
    sink = Neo4jSink(settings, group_id=group, topic=topic, batch_size=2000)
    await asyncio.wait_for(sink.run(until_caught_up=True), timeout=300)
    return sink


def graph(settings: Settings, prefix: str):
    with connect(settings) as driver:
        return snapshot(driver, settings.neo4j_database, prefix)


async def test_replaying_the_same_triples_changes_nothing(settings: Settings, topic_name: str) -> None:
    prefix = f"{uuid.uuid4().hex[:8]}:"
    triples = real_triples(prefix)
    await publish(settings, topic_name, [t.to_json() for t in triples])
    await drain(settings, topic_name, group=f"{topic_name}-a")
    first = graph(settings, prefix)

    nodes, rels = first
    assert len(rels) > 1000 and len(nodes) > 500
    next_counts = Counter((t.head_id[len(prefix) :], t.tail_id[len(prefix) :]) for t in triples if t.rel == "NEXT")
    stored = {(h, t): dict(p)["count"] for h, kind, p, t in rels if kind == "NEXT"}
    assert stored == dict(next_counts), "NEXT.count must be the absolute count, not a sum of replays"

    await publish(settings, topic_name, [t.to_json() for t in triples])
    await drain(settings, topic_name, group=f"{topic_name}-a")
    assert graph(settings, prefix) == first, "the same triples delivered again must change nothing"
    await drain(settings, topic_name, group=f"{topic_name}-b")
    assert graph(settings, prefix) == first, "a full replay from offset 0 (twice the triples) must change nothing"


async def test_bundles_write_what_single_facts_write(settings: Settings, topic_name: str) -> None:
    """The same facts as one message each and as bundles of 1 to 9 (the worker's shape: one bundle per event,
    one per transitions message), read in polls whose facts span several transactions: the same graph, and
    delivering the bundles again changes nothing."""
    single, bundled = f"{uuid.uuid4().hex[:8]}:", f"{uuid.uuid4().hex[:8]}:"
    await publish(settings, topic_name, [t.to_json() for t in real_triples(single)])
    facts = real_triples(bundled)
    bundle_payloads, begin = [], 0
    for size in itertools.cycle(range(1, 10)):
        if begin >= len(facts):
            break
        bundle_payloads += bundles(facts[begin:begin + size])
        begin += size
    assert len(bundle_payloads) < len(facts) / 4
    await publish(settings, f"{topic_name}.bundles", bundle_payloads)
    await drain(settings, topic_name, group=f"{topic_name}-a")
    sink = Neo4jSink(settings, group_id=f"{topic_name}-b", topic=f"{topic_name}.bundles", batch_size=40)
    await asyncio.wait_for(sink.run(until_caught_up=True), timeout=300)
    assert sink.stats.written == len(facts) and sink.stats.messages == len(bundle_payloads)
    first = graph(settings, bundled)
    assert first == graph(settings, single)

    await publish(settings, f"{topic_name}.bundles", bundle_payloads)
    await drain(settings, f"{topic_name}.bundles", group=f"{topic_name}-b")
    assert graph(settings, bundled) == first


async def test_item_knowledge_replays_identically(settings: Settings, topic_name: str, tmp_path) -> None:
    """The fashion catalogue's item knowledge (`igrec items facts`: item nodes with photo attributes,
    category paths, resolved attributes, TF-IDF keywords) through `kg load`'s reader and publisher (bundles of up
    to MAX_FACTS), the topic and the sink, delivered twice: the graph holds every fact once, with its values, and
    the second delivery changes nothing."""
    from model.cli import main as model_main

    facts_file = tmp_path / "facts.jsonl"
    model_main(["items", "facts", "--out", str(facts_file)])
    prefix = f"{uuid.uuid4().hex[:8]}:"
    triples = list(facts_jsonl_triples(facts_file, prefix=prefix))
    own_topic = settings.replace(topic_triples=topic_name)
    assert await publish_facts(own_topic, triples) == -(-len(triples) // MAX_FACTS)
    sink = await drain(settings, topic_name, group=f"{topic_name}-a")
    assert sink.stats.written == len(triples)
    first = graph(settings, prefix)
    nodes, rels = first
    assert Counter(r[1] for r in rels) == Counter(t.rel for t in triples if t.rel)
    keywords = {(h, t): dict(p)["tfidf"] for h, kind, p, t in rels if kind == "HAS_KEYWORD"}
    assert keywords == {(t.head_id[len(prefix):], t.tail_id[len(prefix):]): t.props["tfidf"]
                        for t in triples if t.rel == "HAS_KEYWORD"}
    labels = Counter(n[0][0] for n in nodes)
    assert labels["Item"] == 2637 and labels["Keyword"] > 1000 and labels["Category"] > 100 and labels["Entity"] > 50

    await publish_facts(own_topic, triples)
    await drain(settings, topic_name, group=f"{topic_name}-a")
    assert graph(settings, prefix) == first, "item knowledge delivered again must change nothing"


async def test_predicted_links_become_related_edges(settings: Settings, topic_name: str, tmp_path) -> None:
    """`igrec linkpred train` (a few epochs on GATNE Amazon) and `predict` -> RELATED {type, score} facts ->
    the facts reader, Kafka and the sink: one RELATED edge per fact with its score, none to a known edge,
    and delivering them again changes nothing."""
    from model.cli import main as model_main
    from model.linkpred_data import read_gatne

    data = ROOT.parent / "shared" / "data" / "gatne" / "amazon"
    model_main(["linkpred", "train", "--data", str(data), "--out", str(tmp_path / "lp"), "--epochs", "3"])
    facts_file = tmp_path / "related.jsonl"
    model_main(["linkpred", "predict", str(tmp_path / "lp" / "best.pt"), "--out", str(facts_file), "--top-k", "2"])
    prefix = f"{uuid.uuid4().hex[:8]}:"
    triples = list(facts_jsonl_triples(facts_file, prefix=prefix))
    assert len(triples) > 1000 and {t.rel for t in triples} == {"RELATED"}
    await publish(settings, topic_name, [t.to_json() for t in triples])
    await drain(settings, topic_name, group=f"{topic_name}-a")
    first = graph(settings, prefix)
    stored = {(h, dict(p)["type"], t): dict(p)["score"] for h, kind, p, t in first[1] if kind == "RELATED"}
    assert stored == {(t.head_id[len(prefix):], t.props["type"], t.tail_id[len(prefix):]): t.props["score"]
                      for t in triples}
    lp = read_gatne(data)
    known = {(lp.relations[r], lp.nodes[h], lp.nodes[t]) for r, h, t in lp.known_edges()}
    assert not known & {(kind, h, t) for h, kind, t in stored}, "a predicted link is never a known edge"
    assert len(known & {(lp.relations[r], lp.nodes[h], lp.nodes[t]) for r, h, t in lp.train.tolist()}) > 1000

    await publish(settings, topic_name, [t.to_json() for t in triples])
    await drain(settings, topic_name, group=f"{topic_name}-a")
    assert graph(settings, prefix) == first


async def test_cypher_in_a_field_is_stored_as_text(settings: Settings, topic_name: str) -> None:
    prefix = f"{uuid.uuid4().hex[:8]}:"
    evil_id = prefix + "x'}) MATCH (n) DETACH DELETE n //"
    evil_title = "MATCH (n) DETACH DELETE n RETURN 1"
    payloads = [
        node("Item", f"{prefix}keep", title="keep me").to_json(),
        node("Item", evil_id, title=evil_title).to_json(),
        edge(("Item", evil_id), "HAS_KEYWORD", ("Keyword", f"{prefix}`) DELETE n")).to_json(),
    ]
    await publish(settings, topic_name, payloads)
    await drain(settings, topic_name, group=topic_name)
    nodes, rels = graph(settings, prefix)
    ids = {n[1]: dict(n[2]) for n in nodes}
    assert ids["x'}) MATCH (n) DETACH DELETE n //"]["title"] == evil_title
    assert ids["keep"]["title"] == "keep me", "the injected text must not have run"
    assert [r[1] for r in rels] == ["HAS_KEYWORD"]


async def test_malformed_triples_go_to_the_dlq_with_reasons(settings: Settings, topic_name: str) -> None:
    prefix = f"{uuid.uuid4().hex[:8]}:"
    good = [node("Item", f"{prefix}{i}", n=i).to_json() for i in range(5)]
    bad = {
        b"{not json": "not JSON",
        b"[1, 2]": "expected a JSON object",
        orjson.dumps({"schema_version": 1, "head": {"label": "Robot", "id": "1"}}): "head.label",
        orjson.dumps(
            {
                "schema_version": 1,
                "head": {"label": "Item", "id": "1"},
                "rel": "HAD",
                "tail": {"label": "Item", "id": "2"},
            }
        ): "HAD goes from User to Session",
        orjson.dumps(
            {
                "schema_version": 1,
                "head": {"label": "Session", "id": "1"},
                "rel": "CLICKED",
                "tail": {"label": "Item", "id": "2"},
                "props": {"ts": 1},
            }
        ): "identifying properties",
        orjson.dumps({"schema_version": 1, "head": {"label": "Item", "id": "1", "props": {"x": {"y": 1}}}}): "values",
        orjson.dumps({"schema_version": 7, "head": {"label": "Item", "id": "1"}}): "schema_version",
        orjson.dumps({"schema_version": 1, "facts": [
            {"head": {"label": "Item", "id": f"{prefix}lost"}}, {"head": {"label": "Robot", "id": "1"}},
        ]}): "facts[1]: head.label",
    }
    good_bundle = bundles([node("Item", f"{prefix}b{i}", n=i) for i in range(3)])
    await publish(settings, topic_name, [good[0], *bad, *good[1:], *good_bundle])
    sink = await drain(settings, topic_name, group=topic_name)
    assert sink.stats.dead_lettered == len(bad) and sink.stats.written == len(good) + 3
    assert len(graph(settings, prefix)[0]) == len(good) + 3, "a refused bundle writes none of its facts"

    consumer = AIOKafkaConsumer(settings.topic_triples_dlq, **settings.aiokafka_kwargs(), auto_offset_reset="earliest")
    await consumer.start()
    try:
        records = []
        while True:
            batch = await consumer.getmany(timeout_ms=3000)
            if not batch:
                break
            records += [orjson.loads(m.value) for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    ours = [r for r in records if r.get("source_topic") == topic_name]
    assert [r["source_offset"] for r in ours] == list(range(1, 1 + len(bad)))
    schema = Draft202012Validator(orjson.loads(
        (ROOT / "docs" / "schemas" / f"{Settings().topic_triples_dlq}.schema.json").read_bytes()))
    for record, (raw, reason) in zip(ours, bad.items(), strict=True):
        assert reason in record["reason"], record
        assert record["value"] == raw.decode()
        assert not list(schema.iter_errors(record)), "the record follows the topic's documented contract"
    assert [r["code"] for r in ours[:3]] == ["not_json", "not_an_object", "unknown_label"]


async def test_neo4j_down_for_60_s_mid_stream_loses_nothing(settings: Settings, topic_name: str) -> None:
    outage, clean = f"{uuid.uuid4().hex[:8]}:", f"{uuid.uuid4().hex[:8]}:"
    sink = Neo4jSink(settings, group_id=topic_name, topic=topic_name, batch_size=500)
    stop = asyncio.Event()
    running = asyncio.create_task(sink.run(stop))
    producing = asyncio.create_task(
        publish(settings, topic_name, [t.to_json() for t in real_triples(outage)], pause=1.0, chunks=40)
    )
    await asyncio.sleep(8)
    written_before = sink.stats.written
    await asyncio.to_thread(stack.down, settings, only="neo4j")
    await asyncio.sleep(60)
    await asyncio.to_thread(stack.up, settings)
    await producing
    stop.set()
    await asyncio.wait_for(running, timeout=120)
    assert 0 < written_before < sink.stats.messages, "the outage must fall mid-stream"
    assert sink.stats.retries > 0, "the sink must have waited for Neo4j"
    await drain(settings, topic_name, group=topic_name)

    clean_topic = f"{topic_name}.clean"
    await publish(settings, clean_topic, [t.to_json() for t in real_triples(clean)])
    await drain(settings, clean_topic, group=clean_topic)
    assert graph(settings, outage) == graph(settings, clean)


def nodes_written(settings: Settings, prefix: str) -> int:
    with connect(settings) as driver:
        records, _, _ = driver.execute_query("MATCH (n) WHERE n.id STARTS WITH $p RETURN count(n) AS n", p=prefix,
                                             database_=settings.neo4j_database)
    return records[0]["n"]


def start_sink(settings: Settings, log: Path) -> subprocess.Popen:
    """`igrec sink` as a process of its own (small batches: many transactions to fall between)."""
    return subprocess.Popen([sys.executable, "-m", "streams.cli", "sink", "--batch-size", "100"],
                            env=os.environ | settings.to_env(), stdout=log.open("ab"), stderr=subprocess.STDOUT,
                            cwd=ROOT)


def test_the_sink_and_neo4j_killed_mid_stream_lose_and_duplicate_nothing(settings: Settings, topic_name: str,
                                                                         tmp_path: Path) -> None:
    """The quality bar's crash case for the knowledge graph: `igrec sink` gets SIGKILL mid-stream and a new one
    starts; later Neo4j gets SIGKILL under it and is started again on its data. Afterwards the graph equals the
    same triples written by an undisturbed sink: nothing lost (offsets are committed only after Neo4j commits,
    and Neo4j restarts on its data after a SIGKILL) and nothing twice (each write MERGEs absolute values).
    Neo4j is back within the driver's own transaction retry window (30 s); the sink's retries beyond it have
    their test above (60 s down), and re-delivered triples changing nothing has its own too."""
    killed, clean = f"{uuid.uuid4().hex[:8]}:", f"{uuid.uuid4().hex[:8]}:"
    iso = settings.replace(topic_triples=topic_name, topic_triples_dlq=f"{topic_name}.dlq")
    triples = real_triples(killed)
    payloads = [t.to_json() for t in triples]
    total_nodes = len({(t.head_label, t.head_id) for t in triples} |
                      {(t.tail_label, t.tail_id) for t in triples if t.tail_id is not None})
    producing = threading.Thread(
        target=lambda: asyncio.run(publish(iso, topic_name, payloads, pause=0.5, chunks=40)))
    producing.start()
    sink = start_sink(iso, tmp_path / "sink.log")
    try:
        assert wait_until(lambda: nodes_written(iso, killed) > 0, timeout=120), (tmp_path / "sink.log").read_text()
        sink.send_signal(signal.SIGKILL)
        sink.wait(timeout=30)
        at_kill = nodes_written(iso, killed)
        sink = start_sink(iso, tmp_path / "sink.log")
        assert wait_until(lambda: nodes_written(iso, killed) > at_kill, timeout=120)
        stack.kill(settings, "neo4j", log=lambda _: None)
        producing.join(timeout=120)
        stack.up(settings, timeout=240)
        caught_up = wait_until(lambda: group_offsets(iso.replace(topic_events=topic_name), SINK_GROUP)
                               == (len(payloads), len(payloads)), timeout=240)
        assert caught_up, (tmp_path / "sink.log").read_text()[-4000:]
    finally:
        sink.send_signal(signal.SIGTERM)
        sink.wait(timeout=60)
    assert 0 < at_kill < total_nodes, "the sink must be killed mid-stream"

    clean_topic = f"{topic_name}.clean"
    asyncio.run(publish(settings, clean_topic, [t.to_json() for t in real_triples(clean)]))
    asyncio.run(drain(settings, clean_topic, group=clean_topic))
    assert graph(settings, killed) == graph(settings, clean)


async def test_a_late_lower_next_count_does_not_lower_the_stored_one(settings: Settings, topic_name: str) -> None:
    """A worker frozen past its session timeout can deliver a pair's NEXT fact after the new owner's, with an
    older, lower count. NEXT counts only grow, so the sink keeps the larger value; a higher count still wins."""
    prefix = f"{uuid.uuid4().hex[:8]}:"
    triples = real_triples(prefix)
    await publish(settings, topic_name, [t.to_json() for t in triples])
    await drain(settings, topic_name, group=topic_name)
    final = {(t.head_id, t.tail_id): t.props["count"] for t in triples if t.rel == "NEXT"}
    late = [t for t in triples if t.rel == "NEXT" and t.props["count"] < final[t.head_id, t.tail_id]]
    assert len(late) >= 10, "the Tmall slice must repeat some item pairs"

    rises = late[0]
    pair = (rises.head_id, rises.tail_id)
    higher = edge(("Item", pair[0]), "NEXT", ("Item", pair[1]), count=final[pair] + 1)
    await publish(settings, topic_name, [t.to_json() for t in late] + bundles([higher, rises]))
    await drain(settings, topic_name, group=topic_name)

    _, rels = graph(settings, prefix)
    stored = {(f"{prefix}{h}", f"{prefix}{t}"): dict(p)["count"] for h, kind, p, t in rels if kind == "NEXT"}
    assert stored == final | {pair: final[pair] + 1}


def test_neighbourhood_keeps_every_direct_neighbour(settings: Settings) -> None:
    from streams.kg import neighbourhood
    from streams.neo4j_sink import write_triples

    prefix = f"{uuid.uuid4().hex[:8]}:"
    facts = [edge(("Item", f"{prefix}c"), "HAS_KEYWORD", ("Keyword", f"{prefix}k{i}")) for i in range(5)]
    facts += [edge(("Item", f"{prefix}o{i}"), "HAS_KEYWORD", ("Keyword", f"{prefix}k0")) for i in range(10)]
    with connect(settings) as driver:
        write_triples(driver, settings.neo4j_database, facts)
        near = neighbourhood(driver, settings.neo4j_database, "Item", f"{prefix}c", hops=2, per_neighbour=3)
    ids = [node_id[len(prefix) :] for _, node_id, _ in near.nodes.values()]
    assert ids[0] == "c", "the centre comes first"
    assert {f"k{i}" for i in range(5)} <= set(ids), "every direct neighbour is kept"
    assert sum(i.startswith("o") for i in ids) == 3, "second hop capped per neighbour"


def test_neighbourhood_shares_its_limit_among_relationship_types(settings: Settings) -> None:
    from streams.kg import neighbourhood
    from streams.neo4j_sink import write_triples

    prefix = f"{uuid.uuid4().hex[:8]}:"
    facts = [edge(("Item", f"{prefix}c"), "NEXT", ("Item", f"{prefix}n{i}"), count=1) for i in range(40)]
    facts += [edge(("Item", f"{prefix}c"), "IN_CATEGORY", ("Category", f"{prefix}cat"))]
    facts += [edge(("Item", f"{prefix}c"), "HAS", ("Entity", f"{prefix}brand:{i}"), relation="brand") for i in range(2)]
    with connect(settings) as driver:
        write_triples(driver, settings.neo4j_database, facts)
        near = neighbourhood(driver, settings.neo4j_database, "Item", f"{prefix}c", limit=10)
    kinds = Counter(kind for _, kind, _, _ in near.rels)
    assert kinds == {"IN_CATEGORY": 1, "HAS": 2, "NEXT": 7}, "every type shows, the rest of the limit is NEXT"


def test_counting_a_type_the_graph_lacks_logs_nothing(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    """A whitelisted relationship type the graph does not hold yet (NEXT on a fresh graph, as the demo counts
    it) is just none: the server's "does not exist" warning is not logged, other warnings still are."""
    with connect(settings) as driver, caplog.at_level(logging.INFO, logger="neo4j"):
        records, _, _ = driver.execute_query("MATCH ()-[r:NO_SUCH_TYPE_YET]->() RETURN count(r) AS n",
                                             database_=settings.neo4j_database)
    assert records[0]["n"] == 0
    assert not [r for r in caplog.records if r.name.startswith("neo4j.notifications")], caplog.text
