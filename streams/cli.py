"""``igrec``: one console script, one subcommand per job.

Subcommands that train or export import torch lazily; the stream side never needs it.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from streams.settings import Settings, SettingsError

DESCRIPTION = """\
igrec: real-time next-item recommendations from a Kafka click stream.

events (Kafka) -> per-user session graphs -> multi-interest GGNN scorer (ONNX) -> top-K recommendations,
enriched events and knowledge triples (Kafka) -> Neo4j.

Settings come from IGREC_* environment variables or a TOML file (--config / IGREC_CONFIG);
see README.md, "Configuration".
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="igrec", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", help="TOML settings file (flat keys named like the IGREC_* variables)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = commands.add_parser(
        "stack",
        help="the local Kafka (KRaft) + Neo4j stack on 127.0.0.1",
        description="Resolve Kafka and Neo4j from Maven Central, start them on 127.0.0.1 with all data under "
        "the state folder (IGREC_STATE_DIR), wait until healthy, report, stop.",
    )
    stack.add_argument("action", choices=["up", "down", "status", "fetch", "reset"],
                       help="what to do (reset: delete the stopped stack's Kafka topics, Neo4j graph and the "
                            "workers' local state in <state_dir>/worker)")
    stack.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for health (up) or stop")
    stack.set_defaults(func=_stack)

    demo = commands.add_parser(
        "demo",
        help="the whole system on a public split: train, export, worker, replay, metrics, knowledge graph",
        description="Starts the local stack, trains a small model on a session split (default: the Tmall sessions of "
        "session_kg_dsrhk, whose items carry category/seller/brand knowledge), exports and parity-checks it, starts "
        "the worker and the Neo4j sink, loads the split's item knowledge (kg.txt) through the sink, replays test "
        "sessions with live progress, prints stream metrics next to the offline metrics of the same artefact (they "
        "must be equal), and shows the knowledge graph the stream and the item knowledge built together.",
    )
    demo.add_argument("--dataset", default=None,
                      help="split folder, with a kg.txt for item knowledge (default: "
                      "../shared/data/session_kg_dsrhk/Tmall; e.g. ../shared/data/diginetica/srgnn_split)")
    demo.add_argument("--sessions", type=int, default=2000, help="test sessions to replay")
    demo.add_argument("--train-cases", type=int, default=150_000, help="training cases for the one epoch")
    demo.add_argument("--artefact", default=None, help="use this exported artefact instead of training one")
    demo.set_defaults(func=_demo)

    worker = commands.add_parser(
        "worker",
        help="run the stream worker: events -> session graphs -> scores -> recommendations",
        description="Consumes igrec.events (key = user id), keeps per-user sessions in a RocksDB-backed faust Table, "
        "scores micro-batches with an exported artefact (onnxruntime; CUDA if present, else CPU) and emits "
        "recommendations, enriched events and knowledge triples. Malformed events go to igrec.events.dlq. "
        "Run several with the same --app-id to share the partitions. If one of its agents crashes, the worker "
        "stops with exit status 1 and says why in its log (run it under a supervisor that restarts it): Kafka "
        "then re-delivers whatever the crash left unanswered, and nothing is lost.",
    )
    worker.add_argument("--artefact", required=True, help="artefact folder written by `igrec export`")
    worker.add_argument("--app-id", default="igrec-worker", help="consumer group and state name")
    worker.add_argument("--batch-max", type=int, default=256, help="most events per scoring micro-batch")
    worker.add_argument("--batch-wait-ms", type=float, default=10.0, help="longest wait to fill a micro-batch")
    worker.add_argument("--session-gap-min", type=float, default=30.0, help="inactivity that ends a session")
    worker.add_argument("--providers", default="auto", help="onnxruntime providers: auto, cpu, cuda, tensorrt")
    worker.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads on the CPU (default 1: the event loop needs a core of its "
                             "own; on 2 cores, 2 threads cut the sustained rate, see docs/results.md)")
    precision = worker.add_mutually_exclusive_group()
    precision.add_argument("--fp16", action="store_true", help="score the item product in float16 (GPU providers)")
    precision.add_argument("--int8", action="store_true",
                           help="score the item product in int8 on the CPU and its top 64 candidates again in "
                                "float32: the float32 top-K set bar near-ties; it saves scorer CPU only at small "
                                "batches and with wide item embeddings on the CPUs measured (D = 100, not D = 32: "
                                "docs/export.md; check a model with `igrec parity --int8`)")
    worker.add_argument("--scorer-nice", type=int, default=-10,
                        help="added to the scorer process's nice value (negative: higher priority, needs "
                             "CAP_SYS_NICE, else ignored; 0: leave it)")
    worker.add_argument("--session-timeout", type=float, default=10.0,
                        help="seconds without a heartbeat after which Kafka drops a worker from the consumer "
                             "group and gives its partitions to the others (default 10; faust's own 60 leaves "
                             "a crashed worker's users without recommendations for a minute)")
    worker.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop",
                        help="the event loop (default uvloop: about a tenth more events/s flat out than the "
                             "standard library's, docs/results.md)")
    worker.add_argument("--metrics-port", type=int, default=9108, help="Prometheus /metrics port (0: off)")
    worker.add_argument("--data-dir", default=None, help="local RocksDB folder (default under the state folder)")
    worker.add_argument("--loglevel", default="info", help="debug, info, warning or error")
    worker.add_argument("--log-format", choices=["json", "text"], default="json",
                        help="json: one JSON object per line on stderr (for log shippers); text: plain lines")
    worker.set_defaults(func=_worker)

    replay = commands.add_parser(
        "replay",
        help="publish a dataset as click events, or copy a recorded topic range for re-scoring",
        description="split: the test sessions of a split folder, click by click (one user and session each, "
        "deterministic timestamps). raw: a raw click log (diginetica / yoochoose / csv) in time order with its "
        "users and sessions. copy: a range of a recorded topic (by offsets or by time) into another topic.",
    )
    replay_commands = replay.add_subparsers(dest="replay_command", required=True, metavar="SOURCE")
    split = replay_commands.add_parser("split", help="test sessions of a split folder (train_sessions.txt + test.tsv)")
    split.add_argument("folder", help="e.g. ../shared/data/diginetica/srgnn_split")
    split.add_argument("--sessions", type=int, default=None, help="only the first N test sessions")
    raw = replay_commands.add_parser("raw", help="a raw click log with session/user/item/time columns")
    raw.add_argument("path")
    raw.add_argument("--format", required=True, choices=["diginetica", "yoochoose"])
    for source in (split, raw):
        source.add_argument("--rate", type=float, default=None, help="events per second (default: as fast as possible)")
        source.add_argument("--run", default=None, help="prefix of user and event ids (default: replay-<time>)")
        source.add_argument("--topic", default=None, help="target topic (default: the events topic)")
        source.set_defaults(func=_replay)
    copy = replay_commands.add_parser("copy", help="copy a topic range (offsets or time) to a new topic")
    copy.add_argument("source_topic")
    copy.add_argument("target_topic")
    copy.add_argument("--from-offset", type=int, default=None, help="first offset, in every partition")
    copy.add_argument("--to-offset", type=int, default=None, help="end offset (exclusive), in every partition")
    copy.add_argument("--since", default=None, help="ISO time or epoch seconds: first message at or after it")
    copy.add_argument("--until", default=None, help="ISO time or epoch seconds: stop before it")
    copy.set_defaults(func=_replay_copy)

    stream_eval = commands.add_parser(
        "stream-eval",
        help="metrics of the recommendations on Kafka, judged against the next click of each session",
        description="Reads the recommendations and events topics, pairs the recommendation for click t of a session "
        "with the item of click t+1, and prints HR/MRR/NDCG@10,20 computed by model.metrics (the offline tie rule).",
    )
    stream_eval.add_argument("--run", default=None, help="only events whose id starts with this (a replay's --run)")
    stream_eval.add_argument("--json", default=None, help="also write the metrics here")
    stream_eval.set_defaults(func=_stream_eval)
    dlq = commands.add_parser(
        "dlq",
        help="what a dead-letter topic holds: records by rule (code) and source, since when, the latest reason",
        description="Reads a dead-letter topic from its start to its current end and prints one row per rule "
        "(the records' code: not_json, ts_too_old, ...; README 'Dead letters' lists them) with its count, share, "
        "first and last received time (UTC) and the latest record's reason and source offset.",
    )
    dlq.add_argument("--topic", choices=["events", "triples"], default="events",
                     help="events: the worker's igrec.events.dlq (default); triples: the sink's igrec.kg.triples.dlq")
    dlq.add_argument("--json", default=None, help="also write the rules here as JSON")
    dlq.set_defaults(func=_dlq)
    ab = commands.add_parser(
        "ab",
        help="A/B on recorded traffic: score the recorded events topic with two artefacts, compare, plot",
        description="Re-scores every recorded event of the events topic with artefact A and with artefact B through "
        "the worker's own state and scoring code, prints both metric sets and B - A, and draws them.",
    )
    ab.add_argument("artefact_a")
    ab.add_argument("artefact_b")
    ab.add_argument("--plot", default="ab.png", help="PNG to draw (default ab.png)")
    ab.add_argument("--int8", choices=["a", "b", "both"],
                    help="score A, B or both with the int8 item product (the worker's --int8); the same artefact "
                         "as A and B with --int8 b measures what int8 changes")
    ab.set_defaults(func=_ab)

    sink = commands.add_parser(
        "sink",
        help="run the Neo4j sink: igrec.kg.triples -> Neo4j (batched, idempotent)",
        description="Consume the triples topic (messages of one fact or a bundle of facts) in the consumer group "
        "igrec-neo4j-sink and write each poll as Neo4j transactions of UNWIND + MERGE statements; offsets are "
        "committed only after Neo4j commits; malformed messages go to the triples DLQ with the reason. Waits with "
        "backoff while Neo4j is unreachable.",
    )
    sink.add_argument("--batch-size", type=int, default=5000,
                      help="most messages per poll, and most facts per Neo4j transaction")
    sink.add_argument("--until-caught-up", action="store_true", help="exit once every triple so far is written")
    sink.add_argument("--log-format", choices=["json", "text"], default="json", help="log lines as JSON or text")
    sink.set_defaults(func=_sink)

    kg = commands.add_parser("kg", help="the knowledge graph in Neo4j: summary counts, bulk load of item knowledge")
    kg_commands = kg.add_subparsers(dest="kg_command", required=True, metavar="KG_COMMAND")
    kg_commands.add_parser("summary", help="node counts per label and relationship counts per type").set_defaults(
        func=_kg_summary
    )
    near = kg_commands.add_parser(
        "neighbourhood",
        help="the nodes and relationships around an item or a user; --png draws them",
        description="Prints the paths of up to --hops relationships around one node as JSON; with --png also draws "
        "them (force layout, nodes coloured by label).",
    )
    near.add_argument("label", choices=["Item", "User", "Session", "Category", "Keyword", "Entity", "Interest"])
    near.add_argument("id", help="the node's id")
    near.add_argument("--hops", type=int, default=1, choices=[1, 2])
    near.add_argument("--limit", type=int, default=30, help="most direct neighbours")
    near.add_argument("--png", help="write a picture of the subgraph here")
    near.set_defaults(func=_kg_neighbourhood)
    rdf = kg_commands.add_parser(
        "rdf",
        help="export the graph as Turtle that neosemantics (n10s) imports",
        description="Writes every igrec node and relationship as Turtle: nodes <urn:igrec:Label/id> typed with their "
        "label, properties as literals, relationships as object properties; relationship properties as RDF-star "
        "annotations (n10s format 'Turtle-star') unless --no-star.",
    )
    rdf.add_argument("--out", required=True, help="output .ttl file")
    rdf.add_argument("--no-star", action="store_true", help="plain Turtle, without relationship properties")
    rdf.set_defaults(func=_kg_rdf)
    load = kg_commands.add_parser(
        "load",
        help="publish item knowledge (kg.txt or facts .jsonl) to the triples topic, through the same sink path",
        description="Reads `item relation entity` lines (e.g. ../shared/data/session_kg_dsrhk/Tmall/kg.txt) or a "
        "JSON-lines file of facts (`igrec items facts`, `igrec linkpred predict`; name ending in .jsonl), validates "
        "every one (a bad file is refused, naming the line, before anything is sent), publishes them as triples "
        "to igrec.kg.triples (in bundles of up to 1,000 facts per message), and with --sink runs the sink until "
        "they are in Neo4j.",
    )
    load.add_argument("path", help="kg.txt file (relation names from a relations.txt beside it if present), "
                      "or facts .jsonl")
    load.add_argument("--prefix", default="", help="prefix for every node id (keeps datasets apart)")
    load.add_argument("--limit", type=int, default=None, help="load only the first N lines")
    load.add_argument("--sink", action="store_true", help="also run the sink until everything is written")
    load.set_defaults(func=_kg_load)

    from export.cli import add_subcommands as add_export_subcommands
    from model.cli import add_subcommands as add_model_subcommands

    add_model_subcommands(commands)
    add_export_subcommands(commands)
    return parser


def _stack(args: argparse.Namespace) -> int:
    from deploy import stack

    settings = args.settings

    if args.action == "fetch":
        stack.fetch(settings)
    elif args.action == "up":
        stack.up(settings, timeout=args.timeout)
        print(
            f"stack ready: Kafka {settings.bootstrap_servers}, Neo4j {settings.neo4j_url} "
            f"(user {settings.neo4j_user}, password in {settings.neo4j_password_file})"
        )
    elif args.action == "down":
        stack.down(settings, timeout=args.timeout)
    elif args.action == "reset":
        stack.reset(settings)
    else:
        report = stack.status(settings)
        print(json.dumps(report, indent=2))
        return 0 if all(entry["healthy"] for entry in report.values()) else 1
    return 0


def _demo(args: argparse.Namespace) -> int:
    from streams.demo import run_demo

    return run_demo(
        args.settings,
        dataset=args.dataset,
        n_sessions=args.sessions,
        train_cases=args.train_cases,
        artefact=args.artefact,
    )


def _worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.state import SessionPolicy
    from streams.worker import WorkerConfig, run_worker

    config = WorkerConfig(
        artefact=Path(args.artefact),
        app_id=args.app_id,
        batch_max=args.batch_max,
        batch_wait_ms=args.batch_wait_ms,
        policy=SessionPolicy(gap_s=60.0 * args.session_gap_min),
        providers=args.providers,
        threads=args.threads,
        fp16=args.fp16,
        int8=args.int8,
        metrics_port=args.metrics_port or None,
        data_dir=Path(args.data_dir) if args.data_dir else None,
        scorer_nice=args.scorer_nice,
        session_timeout_s=args.session_timeout,
        loop=args.loop,
    )
    run_worker(args.settings, config, loglevel=args.loglevel, json_logs=args.log_format == "json")
    return 0


def _replay(args: argparse.Namespace) -> int:
    import asyncio
    import time
    from pathlib import Path

    from streams.replay import cases_to_sessions, publish, raw_events, session_events

    run = args.run or f"replay-{int(time.time())}"
    if args.replay_command == "split":
        from model.data import read_test_tsv

        sessions = cases_to_sessions(read_test_tsv(Path(args.folder) / "test.tsv"))[: args.sessions]
        events = list(session_events(sessions, run=run))
        what = f"{len(sessions)} test sessions of {args.folder}"
    else:
        from model.data import read_diginetica_clicks, read_yoochoose_clicks

        reader = {"diginetica": read_diginetica_clicks, "yoochoose": read_yoochoose_clicks}[args.format]
        events = raw_events(reader(args.path), run=run)
        what = f"the {args.format} log {args.path}"
    topic = args.topic or args.settings.topic_events
    asyncio.run(publish(args.settings, topic, events, rate=args.rate, desc=f"replay -> {topic}"))
    print(f"published {len(events)} events of {what} to {topic} (run {run})")
    return 0


def _epoch(text: str) -> float:
    """Epoch seconds from a number or an ISO date/time (UTC when no zone is given)."""
    import datetime as dt

    try:
        return float(text)
    except ValueError:
        stamp = dt.datetime.fromisoformat(text)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.UTC)).timestamp()


def _replay_copy(args: argparse.Namespace) -> int:
    import asyncio

    from streams.replay import copy_range
    from streams.topics import ensure_topics

    start = {p: args.from_offset for p in range(1024)} if args.from_offset is not None else None
    end = {p: args.to_offset for p in range(1024)} if args.to_offset is not None else None
    start = _epoch(args.since) if args.since else start
    end = _epoch(args.until) if args.until else end
    asyncio.run(ensure_topics(args.settings, [args.target_topic]))
    copied = asyncio.run(copy_range(args.settings, args.source_topic, args.target_topic, start, end))
    print(f"copied {copied} messages from {args.source_topic} to {args.target_topic}")
    return 0


def _stream_eval(args: argparse.Namespace) -> int:
    import asyncio

    from streams.evaluate_stream import stream_metrics

    metrics = asyncio.run(stream_metrics(args.settings, run=args.run))
    print(json.dumps(metrics, indent=2))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(metrics, handle, indent=2)
    return 0


def _dlq(args: argparse.Namespace) -> int:
    import asyncio
    from dataclasses import asdict

    from streams.dlq import summarise, table
    from streams.evaluate_stream import read_topic

    topic = args.settings.topic_dlq if args.topic == "events" else args.settings.topic_triples_dlq
    rules = summarise(value for *_, value in asyncio.run(read_topic(args.settings, topic, f"read {topic}")))
    print(f"{topic}:\n{table(rules)}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([asdict(rule) for rule in rules], handle, indent=2)
    return 0


def _ab(args: argparse.Namespace) -> int:
    import asyncio
    from pathlib import Path

    from streams.evaluate_stream import ab_test

    int8 = (args.int8 in ("a", "both"), args.int8 in ("b", "both"))
    result = asyncio.run(ab_test(args.settings, Path(args.artefact_a), Path(args.artefact_b), Path(args.plot), int8))
    print(f"{'metric':<10} {'A':>8} {'B':>8} {'B - A':>8}")
    for name, diff in result["B-A"].items():
        print(f"{name:<10} {result['A'][name]:>8.2f} {result['B'][name]:>8.2f} {diff:>+8.2f}")
    print(f"cases: {int(result['A']['cases'])}; plot: {args.plot}")
    return 0


def _sink(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from streams import logs
    from streams.neo4j_sink import Neo4jSink

    logs.setup("info", json=args.log_format == "json")
    sink = Neo4jSink(
        args.settings,
        batch_size=args.batch_size,
        on_batch=lambda s: logging.getLogger("igrec.sink").info(
            "batch written", extra={"fields": {"batches": s.batches, "written": s.written,
                                               "dead_lettered": s.dead_lettered}}
        ),
    )
    stats = asyncio.run(sink.run(until_caught_up=args.until_caught_up))
    print(json.dumps(stats.__dict__, indent=2))
    return 0


def _kg_summary(args: argparse.Namespace) -> int:
    from streams.neo4j_sink import connect, counts

    with connect(args.settings) as driver:
        print(json.dumps(counts(driver, args.settings.neo4j_database), indent=2))
    return 0


def _kg_neighbourhood(args: argparse.Namespace) -> int:
    from streams.kg import draw, neighbourhood
    from streams.neo4j_sink import connect

    with connect(args.settings) as driver:
        graph = neighbourhood(driver, args.settings.neo4j_database, args.label, args.id, args.hops, args.limit)
    if not graph.nodes:
        print(f"no {args.label} with id {args.id!r}, or it has no relationships", file=sys.stderr)
        return 1
    nodes = {key: {"label": label, "id": node_id} for key, (label, node_id, _) in graph.nodes.items()}
    rels = [
        {"head": nodes[h]["id"], "type": rel, "props": props, "tail": nodes[t]["id"]} for h, rel, props, t in graph.rels
    ]
    print(json.dumps({"nodes": list(nodes.values()), "relationships": rels}, indent=2, default=str))
    if args.png:
        print(f"picture: {draw(graph, args.png, title=f'{args.label} {args.id}: {args.hops}-hop neighbourhood')}")
    return 0


def _kg_rdf(args: argparse.Namespace) -> int:
    from pathlib import Path

    from streams.kg import all_graph, to_turtle
    from streams.neo4j_sink import connect

    with connect(args.settings) as driver:
        graph = all_graph(driver, args.settings.neo4j_database)
    Path(args.out).write_text(to_turtle(graph, star=not args.no_star))
    print(f"wrote {len(graph.nodes)} nodes and {len(graph.rels)} relationships to {args.out}")
    return 0


def _kg_load(args: argparse.Namespace) -> int:
    import asyncio

    from tqdm import tqdm

    from streams.kg import facts_jsonl_triples, kg_txt_triples
    from streams.neo4j_sink import Neo4jSink
    from streams.replay import publish_facts
    from streams.triples import TripleError

    reader = facts_jsonl_triples if args.path.endswith(".jsonl") else kg_txt_triples
    try:
        triples = list(tqdm(reader(args.path, prefix=args.prefix, limit=args.limit), desc="read", unit="fact"))
    except TripleError as error:
        print(f"igrec kg load: refused, nothing published: {error}", file=sys.stderr)
        return 1
    messages = asyncio.run(publish_facts(args.settings, triples, desc="publish bundles"))
    print(f"published {len(triples)} triples in {messages} messages to {args.settings.topic_triples}")
    if args.sink:
        with tqdm(total=messages, desc="write Neo4j", unit="message") as bar:
            sink = Neo4jSink(args.settings, on_batch=lambda s: bar.update(s.messages - bar.n))
            stats = asyncio.run(sink.run(until_caught_up=True))
        print(f"sink: {stats.written} written, {stats.dead_lettered} dead-lettered, {stats.batches} batches")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.settings = Settings.load(args.config)
        return args.func(args) or 0
    except SettingsError as error:
        print(f"igrec: configuration error: {error}", file=sys.stderr)
        return 2
    except Exception as error:
        from deploy.stack import StackError

        if isinstance(error, StackError):
            print(f"igrec: {error}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
