"""Benchmark: Neo4j sink throughput, batched UNWIND transactions against one transaction per triple.

Real item knowledge (session_kg_dsrhk kg.txt) under a fresh id prefix, so every run creates new nodes:
  1. one managed transaction per triple (the naive sink), on a sample;
  2. the sink's batched write (one UNWIND + MERGE transaction per batch), on all triples;
  3. end to end: publish to a fresh Kafka topic, then the Neo4j sink consumes and writes until caught up;
  4. the same with the facts in bundles of --bundle per message (the worker's shape: one bundle per event).
Prints a table; the ratio of (2) to (1) is the result, and (4) against (3) what bundling saves the sink.
Uses the configured stack (IGREC_* settings); starts the local one if it is not running.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import uuid
from pathlib import Path

from deploy import stack
from streams.kg import kg_txt_triples
from streams.neo4j_sink import Neo4jSink, connect, ensure_schema, write_triples
from streams.replay import publish_payloads
from streams.settings import ROOT, Settings
from streams.triples import bundles

DEFAULT_KG = ROOT.parent / "shared" / "data" / "session_kg_dsrhk" / "Tmall" / "kg.txt"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kg", type=Path, default=DEFAULT_KG, help="kg.txt with `item relation entity` lines")
    parser.add_argument("--triples", type=int, default=100_000, help="triples for the batched runs")
    parser.add_argument("--single", type=int, default=2_000, help="triples for the one-per-transaction run")
    parser.add_argument("--batch-size", type=int, default=5_000)
    parser.add_argument("--bundle", type=int, default=8, help="facts per message in run 4")
    args = parser.parse_args()

    settings = Settings.load()
    stack.up(settings, log=lambda _: None)
    rows = []
    with connect(settings) as driver:
        ensure_schema(driver, settings.neo4j_database)
        single = list(kg_txt_triples(args.kg, prefix=f"b{uuid.uuid4().hex[:6]}:", limit=args.single))
        began = time.perf_counter()
        for triple in single:
            write_triples(driver, settings.neo4j_database, [triple])
        rows.append(("one transaction per triple", len(single), time.perf_counter() - began))

        batched = list(kg_txt_triples(args.kg, prefix=f"b{uuid.uuid4().hex[:6]}:", limit=args.triples))
        began = time.perf_counter()
        for start in range(0, len(batched), args.batch_size):
            write_triples(driver, settings.neo4j_database, batched[start : start + args.batch_size])
        rows.append((f"batched UNWIND ({args.batch_size}/tx)", len(batched), time.perf_counter() - began))

    for name, per_message in (("Kafka -> sink -> Neo4j (end to end)", 1),
                              (f"the same, {args.bundle} facts per message", args.bundle)):
        facts = list(kg_txt_triples(args.kg, prefix=f"b{uuid.uuid4().hex[:6]}:", limit=args.triples))
        payloads = [t.to_json() for t in facts] if per_message == 1 else [
            m for i in range(0, len(facts), per_message) for m in bundles(facts[i:i + per_message])]
        topic = f"bench.triples.{uuid.uuid4().hex[:8]}"
        asyncio.run(publish_payloads(settings, topic, payloads))
        sink = Neo4jSink(settings, group_id=topic, topic=topic, batch_size=args.batch_size)
        began = time.perf_counter()
        stats = asyncio.run(sink.run(until_caught_up=True))
        rows.append((name, stats.written, time.perf_counter() - began))

    print(f"\n{'mode':<40} {'triples':>9} {'seconds':>9} {'triples/s':>11}")
    for name, count, seconds in rows:
        print(f"{name:<40} {count:>9} {seconds:>9.2f} {count / seconds:>11,.0f}")
    speedup = (rows[1][1] / rows[1][2]) / (rows[0][1] / rows[0][2])
    print(f"\nbatched / one-per-transaction: {speedup:.1f}x")


if __name__ == "__main__":
    main()
