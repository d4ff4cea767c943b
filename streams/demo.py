"""``igrec demo``: the whole system on a public split, from a fresh machine, in a few minutes.

1. the local stack (Kafka + Neo4j);
2. a small but real model trained on the split (default: the Tmall sessions of session_kg_dsrhk, whose items
   carry category / seller / brand knowledge; a slice of the training cases, one epoch);
3. its ONNX artefact, parity-checked against PyTorch;
4. the worker and the Neo4j sink, as the processes a deployment would run;
5. the split's item knowledge (its kg.txt, when it has one) published through the same triples topic and sink;
6. test sessions replayed click by click, with live progress;
7. stream metrics (recommendation t vs click t + 1) next to the offline metrics of the same artefact on the
   same sessions, which must be equal;
8. the knowledge graph: Neo4j must hold exactly what the replay wrote (CLICKED per click, HAD per session, NEXT
   counts grown by the replay's transitions); then what the stream wrote joined with the item knowledge:
   counts, a picture, where to look.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from deploy import stack
from model.data import read_test_tsv
from model.metrics import metrics_from_ranks, ranks_from_top_k
from streams.evaluate_stream import stream_metrics
from streams.replay import cases_to_sessions, publish, session_events
from streams.settings import ROOT, Settings
from streams.topics import ensure_topics, partition_count

DEFAULT_DATASET = ROOT.parent / "shared" / "data" / "session_kg_dsrhk" / "Tmall"
STEPS = 8


FACTS = {
    "CLICKED": "MATCH (s:Session)-[r:CLICKED]->(:Item) WHERE s.id STARTS WITH $run RETURN count(r) AS n",
    "HAD": "MATCH (:User)-[r:HAD]->(s:Session) WHERE s.id STARTS WITH $run RETURN count(r) AS n",
    "NEXT": "MATCH (:Item)-[r:NEXT]->(:Item) RETURN coalesce(sum(r.count), 0) AS n",
}
"""What a replay writes into Neo4j: its sessions' CLICKED and HAD relationships (session ids start with the
run), and the sum of all NEXT counts (item pairs are shared between runs, so a run shows as the sum's growth)."""


def _say(step: int, text: str) -> None:
    print(f"\n[{step}/{STEPS}] {text}", flush=True)


def _spawn(args: list[str], log: Path) -> subprocess.Popen:
    """An ``igrec`` subcommand in its own process, output to ``log``."""
    return subprocess.Popen(
        [sys.executable, "-m", "streams.cli", *args],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        env=os.environ.copy(),
    )


def _train(dataset: Path, out: Path, train_cases: int) -> dict:
    from model.train import TrainConfig, train

    config = TrainConfig(
        data=str(dataset),
        out=str(out),
        epochs=1,
        max_train_cases=train_cases,
        batch_size=256,
        lr=3e-3,
        test_each_epoch=False,
        model={"dim": 64},
    )
    return train(config)


def _export(checkpoint: Path, dataset: Path, out: Path) -> tuple[Path, str]:
    from export.exporter import ExportOptions, build_artefact

    folder, report = build_artefact(
        ExportOptions(checkpoint=str(checkpoint), out=str(out), data=str(dataset), parity_cases=3000, force=True)
    )
    return folder, report.summary()


def _offline_metrics(artefact: Path, sessions: list[list[int]]) -> dict[str, float]:
    """The artefact on every (prefix -> next click) of ``sessions``, ranked as the stream evaluation ranks."""
    from export.scorer import Scorer

    scorer = Scorer(artefact, spin=False)
    prefixes = [s[:i] for s in sessions for i in range(1, len(s))]
    targets = np.array([s[i] for s in sessions for i in range(1, len(s))], dtype=np.int64)
    ranks = []
    for begin in range(0, len(prefixes), 256):
        top, scores = scorer.recommend_sessions(prefixes[begin : begin + 256])
        ranks.append(ranks_from_top_k(top, scores, targets[begin : begin + 256]))
    metrics = metrics_from_ranks(np.concatenate(ranks))
    metrics["cases"] = float(len(prefixes))
    return metrics


async def _end_offsets(settings: Settings, topic: str) -> dict:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs())
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(await partition_count(settings, topic))]
        return await consumer.end_offsets(tps)
    finally:
        await consumer.stop()


async def _wait_for_run(
    settings: Settings, start: dict, run: str, want: int, processes: list[subprocess.Popen], timeout: float
) -> None:
    """Progress until the recommendations topic, read from ``start``, holds ``want`` events of ``run``."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), enable_auto_commit=False)
    await consumer.start()
    seen: set[str] = set()
    try:
        consumer.assign(list(start))
        for tp, offset in start.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout
        with tqdm(total=want, desc="recommendations", unit="rec") as bar:
            while len(seen) < want:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(f"only {len(seen)} of {want} recommendations after {timeout:.0f} s (see logs)")
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    seen.update(e for m in messages if (e := orjson.loads(m.value)["event_id"]).startswith(run))
                bar.update(len(seen) - bar.n)
    finally:
        await consumer.stop()


def run_demo(
    settings: Settings, dataset: str | None, n_sessions: int, train_cases: int = 150_000, artefact: str | None = None
) -> int:
    began = time.monotonic()
    folder = Path(dataset) if dataset else DEFAULT_DATASET
    work = settings.state_dir / "demo"
    work.mkdir(parents=True, exist_ok=True)
    print(f"igrec demo on {folder}; work folder {work}")

    _say(1, "local Kafka + Neo4j")
    stack.up(settings)
    asyncio.run(ensure_topics(settings))

    if artefact is None:
        _say(2, f"training a small IGRec (dim 64, 1 epoch on {train_cases:,} training cases) on {folder.name}")
        test = _train(folder, work / "run", train_cases)["test"]
        print(
            f"offline test (PyTorch, all {int(test['cases']):,} test cases): HR@20 {test['HR@20']:.2f} "
            f"MRR@20 {test['MRR@20']:.2f}"
        )
        _say(3, "exporting the ONNX artefact and checking parity with PyTorch")
        model, parity = _export(work / "run" / "best.pt", folder, work / "artefact")
        print(f"{model}: {parity}")
    else:
        model = Path(artefact)
        _say(2, f"training skipped: using the artefact {model}")
        _say(3, "export skipped")

    _say(4, "starting the worker and the Neo4j sink")
    logs = {name: work / f"{name}.log" for name in ("worker", "sink")}
    processes = [
        _spawn(["worker", "--artefact", str(model), "--metrics-port", "0"], logs["worker"]),
        _spawn(["sink"], logs["sink"]),
    ]
    try:
        _load_knowledge(settings, folder / "kg.txt")
        asyncio.run(_drain_sink(settings, processes))
        next_before = _facts(settings, "")["NEXT"]
        sessions = cases_to_sessions(read_test_tsv(folder / "test.tsv"))[:n_sessions]
        run = f"demo{int(time.time())}"
        events = list(session_events(sessions, run=run))
        _say(6, f"replaying {len(sessions):,} test sessions ({len(events):,} clicks) into {settings.topic_events}")
        start = asyncio.run(_end_offsets(settings, settings.topic_recommendations))
        asyncio.run(publish(settings, settings.topic_events, events, desc="replay"))
        asyncio.run(_wait_for_run(settings, start, run, len(events), processes, timeout=900))

        _say(7, "stream metrics (recommendation for click t vs click t+1) and offline metrics, same artefact")
        streamed = asyncio.run(stream_metrics(settings, run=run))
        offline = _offline_metrics(model, sessions)
        print(f"{'':8} {'cases':>7} " + " ".join(f"{k:>8}" for k in ("HR@10", "MRR@10", "HR@20", "MRR@20")))
        for name, m in (("stream", streamed), ("offline", offline)):
            print(
                f"{name:8} {int(m['cases']):>7} "
                + " ".join(f"{m[k]:>8.2f}" for k in ("HR@10", "MRR@10", "HR@20", "MRR@20"))
            )
        equal = all(abs(streamed[k] - offline[k]) < 1e-9 for k in offline)
        print("equal: yes" if equal else "equal: NO - the stream disagrees with the offline evaluation")

        _say(8, "the knowledge graph in Neo4j: the stream's facts joined with the item knowledge")
        if not equal:
            return 1
        expected = {
            "CLICKED": len(events),
            "HAD": len(sessions),
            "NEXT": next_before + sum(len(session) - 1 for session in sessions),
        }
        if not _check_facts(settings, processes, f"{run}-", expected, next_before):
            print(f"see {work}/worker.log and {work}/sink.log")
            return 1
        return _show_graph(settings, work, began)
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)


def _load_knowledge(settings: Settings, kg_txt: Path) -> None:
    """Publish the split's item knowledge to the triples topic; the running sink writes it (as `igrec kg load`)."""
    from streams.kg import kg_txt_triples
    from streams.replay import publish_facts

    if not kg_txt.is_file():
        _say(5, f"no item knowledge: {kg_txt} does not exist")
        return
    _say(5, f"item knowledge {kg_txt} -> {settings.topic_triples} -> sink -> Neo4j")
    facts = list(tqdm(kg_txt_triples(kg_txt), desc="read kg.txt", unit="fact"))
    asyncio.run(publish_facts(settings, facts, desc="publish item knowledge"))


def _show_graph(settings: Settings, work: Path, began: float) -> int:
    from streams.kg import draw, neighbourhood
    from streams.neo4j_sink import connect, counts

    with connect(settings) as driver:
        totals = counts(driver, settings.neo4j_database)
        records, _, _ = driver.execute_query(
            "MATCH (:Session)-[:CLICKED]->(i:Item) RETURN i.id AS id, count(*) AS n ORDER BY n DESC LIMIT 1",
            database_=settings.neo4j_database,
        )
        top_item = records[0]["id"]
        picture = draw(
            neighbourhood(driver, settings.neo4j_database, "Item", top_item, hops=1, limit=25),
            work / "kg_top_item.png",
            title=f"most clicked item {top_item} and its neighbours",
        )
    print("Neo4j now holds: " + ", ".join(f"{name} {n:,}" for name, n in totals.items()))
    print(f"picture of the most clicked item's neighbourhood: {picture}")
    print(
        f"\nwhere to look:\n"
        f"  Neo4j  {settings.neo4j_url}  user {settings.neo4j_user}, password in {settings.neo4j_password_file}\n"
        f"         e.g. MATCH (i:Item {{id: '{top_item}'}})-[r:NEXT]->(j) RETURN i, r, j ORDER BY r.count DESC\n"
        f"              MATCH (i:Item {{id: '{top_item}'}})-[:IN_CATEGORY]->(c)<-[:IN_CATEGORY]-(j)<-[:NEXT]-(i)\n"
        f"              RETURN j.id, c.id   // next items in the same category\n"
        f"  Kafka  {settings.bootstrap_servers}  topics {', '.join(settings.topics.values())}\n"
        f"  logs   {work}/worker.log, {work}/sink.log\n"
        f"  more   .venv/bin/igrec kg summary | kg neighbourhood Item {top_item} --png x.png | stream-eval\n"
        f"  stop   .venv/bin/igrec stack down\n"
        f"\ndemo finished in {time.monotonic() - began:.0f} s"
    )
    return 0


def _facts(settings: Settings, run: str) -> dict[str, int]:
    """:data:`FACTS` in Neo4j now, for the sessions whose ids start with ``run``."""
    from streams.neo4j_sink import connect

    with connect(settings) as driver:
        return {name: driver.execute_query(query, run=run, database_=settings.neo4j_database)[0][0]["n"]
                for name, query in FACTS.items()}


def _check_facts(settings: Settings, processes: list[subprocess.Popen], run: str, expected: dict[str, int],
                 next_before: int, timeout: float = 120.0) -> bool:
    """Whether Neo4j holds exactly what the replay should have written: a CLICKED relationship per click, a HAD
    per session, and NEXT counts grown by the run's transitions, each counted once (polled while the NEXT
    counter and the sink finish: the worker writes NEXT counts after the recommendations)."""
    asyncio.run(_drain_sink(settings, processes))
    deadline = time.monotonic() + timeout
    while (got := _facts(settings, run)) != expected and time.monotonic() < deadline:
        if any(process.poll() is not None for process in processes):
            raise RuntimeError("the worker or the sink stopped (see their logs)")
        time.sleep(1.0)
    grown, want = got["NEXT"] - next_before, expected["NEXT"] - next_before
    print(f"this run in Neo4j: CLICKED {got['CLICKED']:,} of {expected['CLICKED']:,}, HAD {got['HAD']:,} of "
          f"{expected['HAD']:,}, NEXT counts grown by {grown:,} for the run's {want:,} transitions")
    if got != expected:
        print("MISMATCH: Neo4j does not hold what the stream should have written")
    return got == expected


async def _drain_sink(settings: Settings, processes: list[subprocess.Popen], timeout: float = 300) -> None:
    """Wait until the sink's consumer group has committed the end of the triples topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.neo4j_sink import SINK_GROUP

    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), group_id=SINK_GROUP, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [
            TopicPartition(settings.topic_triples, p)
            for p in range(await partition_count(settings, settings.topic_triples))
        ]
        deadline = time.monotonic() + timeout
        await asyncio.sleep(3.0)
        end = sum((await consumer.end_offsets(tps)).values())

        async def committed() -> int:
            return sum([await consumer.committed(tp) or 0 for tp in tps])

        # initial: the rate then counts what the sink commits while the bar is up, not what it had before
        with tqdm(total=end, initial=await committed(), desc="sink -> Neo4j", unit="message") as bar:
            while True:
                done = await committed()
                bar.update(done - bar.n)
                if done >= end:
                    return
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError("the sink did not catch up (see sink.log)")
                await asyncio.sleep(0.5)
    finally:
        await consumer.stop()
