"""Benchmark: one igrec worker, events/s and event -> recommendation latency, next to the raw Kafka ceiling.

In one run, on the configured stack (IGREC_* settings; the local stack is started if needed):
  1. ceiling: aiokafka produce -> consume of the same events on a fresh topic, no processing;
  2. throughput: one worker (a subprocess; its scorer a child process of it; default micro-batching) fed as
     fast as possible;
  3. latency: the worker fed at fixed rates (--rate, one phase each), per event the time from the producer's
     send to the bench's receipt of its recommendation (one clock: both happen in this process), and the
     worker's own split of it (the latency_ms of each recommendation);
  4. fan-out: the Kafka messages the worker wrote per event (all its topics: outputs, internal topics,
     changelogs), counted from the end offsets, and a plain aiokafka relay that consumes each event and
     produces that many messages for it, no state and no scoring: the ceiling of the worker's Kafka I/O
     alone on this machine;
  5. CPU time per event in phases 2 and 3, from /proc, from the first send to the last recommendation: the
     worker's scorer process and the rest of the worker (steadier than events/s when other work shares the
     cores), the local Kafka broker's when this run's stack is local, and this bench's own (the load it
     generates runs on the same cores); with the share of the machine's cores busy meanwhile. Phase 2's
     worker and broker figures together give the most events/s the machine's cores could carry. The
     broker's figure takes in all it did during the phase, including about a second of work that does not
     grow with the events, so it is steady only over long phases (on the 2-vCPU Xeon: 14-41 us per event
     with --events 45000 or more, 107 us with 15000).
Events are real Diginetica test sessions replayed click by click, one user per session, interleaved so that
about --concurrent-users users are active at once (a micro-batch then rarely holds two events of one user, as
in live traffic). Each phase replays them from the start as users of its own, so a phase can be as long as
the split (76,821 clicks): at high rates give the latency phases enough events to reach a steady state (at
3,000 events/s, 6,000 events last 2 s, too short for the queues a longer phase builds: p99 then reads lower;
docs/results.md). Prints a table;
--json keeps the figures, --plot draws them (bench/plot_worker.py draws several runs together). A local broker
started less than 5 minutes before the run gets a note under the table: a fresh broker made every figure worse.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from plot_worker import plot_runs

from deploy import stack
from export.artefact import CARD_FILE, read_card
from model.data import read_test_tsv
from streams.harness import WorkerProcess, child_pids, run_prefix
from streams.replay import cases_to_sessions, session_events
from streams.scoring import SCORER_PROCESS
from streams.settings import ROOT, Settings
from streams.topics import delete_topics, ensure_topics

DIGINETICA_TEST = ROOT.parent / "shared" / "data" / "diginetica" / "srgnn_split" / "test.tsv"
WARM_EVENTS = 200
"""Events sent to the worker before the measured phases (its first batches load and warm up the scorer)."""
BROKER_SETTLE_S = 300
"""A local broker younger than this gave slower runs (its JIT was still compiling): every figure worse,
even after a 40 s warm-up run (docs/results.md, "a leaner local broker")."""


def isolated(settings: Settings) -> Settings:
    tag = f"bench{uuid.uuid4().hex[:6]}"
    return settings.replace(**{f"topic_{role}": f"{tag}.{role}" for role in settings.topics})


async def produce(settings: Settings, topic: str, events: list[dict], rate: float | None) -> dict[str, float]:
    """Send ``events`` (at ``rate`` per second, or as fast as possible); returns send time per event id."""
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), linger_ms=2, acks=1)
    await producer.start()
    sent: dict[str, float] = {}
    began = time.perf_counter()
    try:
        for index, event in enumerate(events):
            if rate:
                delay = began + index / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent[event["event_id"]] = time.perf_counter()
            await producer.send(topic, orjson.dumps(event), key=event["user_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()
    return sent


async def receive(settings: Settings, topic: str, want: int, timeout: float,
                  parts: dict[str, dict] | None = None) -> dict[str, float]:
    """Receipt time per event id of the first ``want`` distinct records on ``topic`` after now; with ``parts``,
    also each record's own ``latency_ms`` (the worker's split of its latency), where it has one."""
    consumer = AIOKafkaConsumer(
        topic, **settings.aiokafka_kwargs(), auto_offset_reset="latest", group_id=f"bench-{uuid.uuid4().hex[:6]}"
    )
    await consumer.start()
    await consumer.seek_to_end()
    got: dict[str, float] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(got) < want and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500)
            now = time.perf_counter()
            for messages in batch.values():
                for message in messages:
                    record = orjson.loads(message.value)
                    got.setdefault(record["event_id"], now)
                    if parts is not None and "latency_ms" in record:
                        parts.setdefault(record["event_id"], record["latency_ms"])
    finally:
        await consumer.stop()
    return got


async def run_phase(
    settings: Settings, in_topic: str, out_topic: str, events: list[dict], rate: float | None, timeout: float,
    parts: dict[str, dict] | None = None, meter: Meter | None = None,
) -> tuple[float, np.ndarray]:
    """Produce ``events`` and receive one output per event; returns (events/s, latencies in ms). ``meter``, if
    given, counts from just before the first send to the last receipt."""
    receiver = asyncio.create_task(receive(settings, out_topic, len(events), timeout, parts))
    await asyncio.sleep(2.0)
    if meter is not None:
        meter.start()
    sent = await produce(settings, in_topic, events, rate)
    got = await receiver
    if meter is not None:
        meter.stop()
    if len(got) < len(events):
        raise RuntimeError(f"only {len(got)} of {len(events)} outputs arrived within {timeout:.0f} s")
    first, last = min(sent.values()), max(got.values())
    latencies = np.array([1000.0 * (got[e] - sent[e]) for e in sent])
    return len(events) / (last - first), latencies


async def relay(settings: Settings, in_topic: str, out_topic: str, spill_topic: str, fanout: int, n: int) -> None:
    """Consume ``n`` events; for each produce one copy to ``out_topic`` and ``fanout - 1`` to ``spill_topic``,
    awaiting each send as the worker does (the fan-out ceiling, phase 4)."""
    consumer = AIOKafkaConsumer(in_topic, **settings.aiokafka_kwargs(), auto_offset_reset="earliest",
                                group_id=f"relay-{uuid.uuid4().hex[:6]}")
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), linger_ms=5, acks="all",
                                max_batch_size=256 * 1024)
    await consumer.start()
    await producer.start()
    seen = 0
    try:
        while seen < n:
            for messages in (await consumer.getmany(timeout_ms=200, max_records=256)).values():
                for message in messages:
                    await producer.send(out_topic, message.value, key=message.key)
                    for _ in range(fanout - 1):
                        await producer.send(spill_topic, message.value, key=message.key)
                    seen += 1
        await producer.flush()
    finally:
        await producer.stop()
        await consumer.stop()


async def messages_written(settings: Settings, prefix: str, exclude: set[str]) -> int:
    """Sum of end offsets over every topic whose name starts with ``prefix`` (minus ``exclude``); the
    partitions come from the admin client (a plain consumer's metadata lists none for unsubscribed topics)."""
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs())
    await admin.start()
    await consumer.start()
    try:
        topics = [t for t in await admin.list_topics() if t.startswith(prefix) and t not in exclude]
        partitions = [TopicPartition(entry["topic"], p["partition"])
                      for entry in await admin.describe_topics(topics) for p in entry["partitions"]]
        return sum((await consumer.end_offsets(partitions)).values())
    finally:
        await consumer.stop()
        await admin.close()


async def fanout_ceiling(settings: Settings, events: list[dict], fanout: int) -> tuple[float, np.ndarray]:
    """Phase 4: the relay between a fresh input and output topic, measured like the worker."""
    tag = f"{settings.topic_events}.relay{uuid.uuid4().hex[:4]}"
    topics = [f"{tag}.in", f"{tag}.out", f"{tag}.spill"]
    await ensure_topics(settings, topics)
    task = asyncio.create_task(relay(settings, topics[0], topics[1], topics[2], fanout, len(events)))
    result = await run_phase(settings, topics[0], topics[1], events, None, 600)
    await task
    return result


def record_profile(pid: int, svg: Path, seconds: int) -> subprocess.Popen:
    """py-spy sampling ``pid`` for ``seconds`` into a flame graph (idle samples left out, threads apart); a
    ``.txt`` path gets py-spy's collapsed stacks instead (one line per stack and its sample count)."""
    py_spy = Path(sys.executable).with_name("py-spy")
    if not py_spy.exists():
        raise SystemExit("--profile needs py-spy: install the dev extra (make setup does)")
    svg.parent.mkdir(parents=True, exist_ok=True)
    command = [str(py_spy), "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--threads",
               "--nonblocking", "--output", str(svg), *(["--format", "raw"] if svg.suffix == ".txt" else [])]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=Path(f"{svg}.log").open("wb"))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user + system) per OS thread name of process ``pid`` and of its child processes (Linux
    /proc); a child's threads all count under the name of its main thread. The worker's scorer process is
    ``SCORER_PROCESS``; everything else (event loop, aiokafka, RocksDB) has other names. CPU time, unlike wall
    time, is not inflated when other processes share the cores."""
    cpu: dict[str, float] = {}
    for name, seconds in _task_cpu(pid):
        cpu[name] = cpu.get(name, 0.0) + seconds
    for child in child_pids(pid):
        tasks = _task_cpu(child)
        main = next((name for name, _ in tasks), None)
        if main is not None:
            cpu[main] = cpu.get(main, 0.0) + sum(seconds for _, seconds in tasks)
    return cpu


def _task_cpu(pid: int) -> list[tuple[str, float]]:
    """(OS name, CPU seconds) of each thread of ``pid``, its main thread first."""
    tick = os.sysconf("SC_CLK_TCK")
    found = []
    tasks = Path(f"/proc/{pid}/task")
    if not tasks.is_dir():
        return found
    for task in sorted(tasks.iterdir(), key=lambda t: int(t.name) != pid):
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        fields = _stat_fields(stat)
        found.append((stat[stat.index("(") + 1 : stat.rindex(")")], (int(fields[11]) + int(fields[12])) / tick))
    return found


def _stat_fields(stat: str) -> list[str]:
    """The fields of a /proc ``stat`` line after the command name, state first (field 3 of proc(5)): the name
    may hold spaces and parentheses, so the split starts after its last ")"."""
    return stat[stat.rindex(")") + 2 :].split()


def process_cpu(pid: int | None) -> float:
    """CPU seconds of process ``pid`` and its children so far (0 for None: a server this run did not find)."""
    return sum(thread_cpu(pid).values()) if pid is not None else 0.0


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of all the machine's cores so far (/proc/stat; idle and iowait are not busy)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(fields[:8])  # guest time is already counted in user time
    return total - fields[3] - fields[4], total


class Reading(NamedTuple):
    """CPU seconds used so far: per thread name of the worker (its scorer included), by the broker (0 without
    one), by this bench; and the machine's (busy, total) jiffies."""

    worker: dict[str, float]
    broker: float
    bench: float
    machine: tuple[int, int]


class Meter:
    """Where the CPU went over one phase: microseconds per event of the worker's scorer process, the rest of the
    worker, the local broker (when this run found one) and this bench process (the load: producer and
    receiver), and the share of all cores that was busy (everything on the machine)."""

    def __init__(self, worker: int, broker: int | None) -> None:
        self._worker, self._broker = worker, broker
        self._before: Reading | None = None
        self._after: Reading | None = None

    def _read(self) -> Reading:
        bench = sum(seconds for _, seconds in _task_cpu(os.getpid()))  # not its children: the worker is one
        return Reading(thread_cpu(self._worker), process_cpu(self._broker), bench, machine_jiffies())

    def start(self) -> None:
        self._before = self._read()

    def stop(self) -> None:
        self._after = self._read()

    def per_event(self, events: int) -> dict[str, float]:
        """The phase's CPU per event in microseconds (``scorer``, ``rest``, ``broker`` where known, ``bench``)."""
        before, after = self._before, self._after
        used = {name: seconds - before.worker.get(name, 0.0) for name, seconds in after.worker.items()}
        scorer = sum(v for name, v in used.items() if name.startswith(SCORER_PROCESS))
        cpu = {"scorer": scorer, "rest": sum(used.values()) - scorer}
        if self._broker is not None:
            cpu["broker"] = after.broker - before.broker
        cpu["bench"] = after.bench - before.bench
        return {name: round(1e6 * seconds / events, 1) for name, seconds in cpu.items()}

    def busy(self) -> float:
        """The share of the machine's CPU time that was busy over the phase."""
        (busy0, total0), (busy1, total1) = self._before.machine, self._after.machine
        return round((busy1 - busy0) / max(total1 - total0, 1), 3)


def interleaved(sessions: list[list[int]], run: str, concurrent: int) -> list[dict]:
    """The sessions' click events with about ``concurrent`` users active at a time, each user's clicks in order,
    as live traffic would bring them: session i starts when i * (mean length) / concurrent clicks have gone
    by. With 1 they follow one another session by session."""
    events = list(session_events(sessions, run=run))
    mean_length = len(events) / max(len(sessions), 1)
    clock = [index * mean_length / concurrent + pos for index, s in enumerate(sessions) for pos in range(len(s))]
    return [events[i] for i in np.argsort(clock, kind="stable")]


def latency_split(parts: dict[str, dict]) -> dict[str, np.ndarray]:
    """The worker's latency parts per event: Kafka timestamp -> admitted ("queue"), waiting for the scoring
    thread (the rest of "total"), scoring chunk start -> emitted ("score"), Kafka timestamp -> emitted."""
    rows = list(parts.values())
    total = np.array([r["total"] for r in rows])
    queue = np.array([r["queue"] for r in rows])
    score = np.array([r["score"] for r in rows])
    return {"to admission": queue, "waiting to be scored": total - queue - score, "scoring and emit": score,
            "in the worker, all told": total}


def rates(text: str) -> list[float]:
    values = [float(x) for x in text.split(",") if x.strip()]
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError("rates are positive events/s, comma-separated")
    return values


def row(name: str, phase: dict) -> str:
    return f"{name:<52} {phase['events_per_s']:>10,.0f} {phase['p50_ms']:>9.1f} {phase['p99_ms']:>9.1f}"


def measure(args: argparse.Namespace, settings: Settings, broker: int | None, sessions: list[list[int]]) -> dict:
    """The phases of the module docstring on the run's topics (``settings``), each on the test ``sessions`` as
    new users of its own: the run's figures, as ``--json`` writes them."""
    broker_age = process_age_s(broker)
    tag = f"b{uuid.uuid4().hex[:6]}"
    events = interleaved(sessions, tag, args.concurrent_users)[: args.events]
    ceiling_topic = f"{settings.topic_events}.ceiling"
    asyncio.run(ensure_topics(settings, [ceiling_topic]))
    ceiling = asyncio.run(run_phase(settings, ceiling_topic, ceiling_topic, events, None, 120))

    with tempfile.TemporaryDirectory() as workdir:
        worker = WorkerProcess(settings, args.artefact, Path(workdir), app_id=f"{settings.topic_events}-w",
                               name="worker", extra=args.worker_arg, nice=args.worker_nice).start()
        pid = worker.process.pid
        try:
            warm = interleaved(sessions, f"{tag}w", args.concurrent_users)[:WARM_EVENTS]
            try:
                asyncio.run(run_phase(settings, settings.topic_events, settings.topic_recommendations, warm, None, 180))
            except RuntimeError:
                if not worker.alive():
                    raise RuntimeError(f"the worker exited with code {worker.process.returncode}; the end of its "
                                       f"log:\n{worker.log_tail()}") from None
                raise
            profiler = record_profile(pid, args.profile, args.profile_seconds) if args.profile else None
            flat_meter = Meter(pid, broker)
            flat_out = asyncio.run(run_phase(settings, settings.topic_events, settings.topic_recommendations, events,
                                             None, 600, meter=flat_meter))
            if profiler is not None and profiler.wait(timeout=args.profile_seconds + 60) != 0:
                print(f"py-spy failed (exit {profiler.returncode}); see {args.profile}.log", file=sys.stderr)
            at_rate, parts, meters = [], [], []
            for index, rate in enumerate(args.rate):
                phase = interleaved(sessions, f"{tag}r{index}", args.concurrent_users)[: args.latency_events]
                parts.append({})
                meters.append(Meter(pid, broker))
                at_rate.append(asyncio.run(run_phase(settings, settings.topic_events, settings.topic_recommendations,
                                                     phase, rate, 600, parts[-1], meters[-1])))
        finally:
            worker.stop()
    inputs = {settings.topic_events, ceiling_topic, settings.topic_dlq}
    worker_events = WARM_EVENTS + args.events + len(args.rate) * args.latency_events
    written = asyncio.run(messages_written(settings, run_prefix(settings), inputs))
    fanout = round(written / worker_events)
    relayed = asyncio.run(fanout_ceiling(settings, events, fanout))
    card = read_card(args.artefact)
    return {
        "artefact": str(args.artefact),
        "model": {key: card.get("model", {}).get(key) for key in ("arch", "n_items", "dim", "interests")},
        "test": {key: card.get("metrics", {}).get("test", {}).get(key) for key in ("HR@20", "MRR@20")},
        "machine": {"cores": os.cpu_count(), "cpu": cpu_model(), "load_average": round(os.getloadavg()[0], 2),
                    "broker_up_s": None if broker_age is None else round(broker_age)},
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                 cwd=ROOT).stdout.strip() or None,
        "events": args.events,
        "latency_events": args.latency_events,
        "concurrent_users": args.concurrent_users,
        "worker_args": args.worker_arg,
        "worker_nice": args.worker_nice,
        "ceiling": summary(*ceiling),
        "flat_out": summary(*flat_out) | metered(flat_meter, args.events),
        "phases": [summary(*phase, offered=rate, split=parts_at) | metered(meter, args.latency_events)
                   for rate, phase, parts_at, meter in zip(args.rate, at_rate, parts, meters, strict=True)],
        "relay": summary(*relayed) | {"messages_per_event": fanout},
        "messages_written": written,
        "worker_events": worker_events,
    }


def process_age_s(pid: int | None) -> float | None:
    """Seconds since process ``pid`` started (Linux /proc; None without a pid or where /proc has no answer)."""
    if pid is None:
        return None
    try:
        started_ticks = int(_stat_fields(Path(f"/proc/{pid}/stat").read_text())[19])
        uptime_s = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return uptime_s - started_ticks / os.sysconf("SC_CLK_TCK")


def cpu_model() -> str | None:
    """The processor's model name from /proc/cpuinfo (None where there is none)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)


def metered(meter: Meter, events: int) -> dict:
    """A phase's CPU figures as the run's JSON holds them."""
    return {"cpu_us_per_event": meter.per_event(events), "machine_busy": meter.busy()}


def summary(rate: float, latencies: np.ndarray, offered: float | None = None,
            split: dict[str, dict] | None = None) -> dict:
    """One phase as the run's JSON holds it: events/s, p50 / p99 ms, the offered rate and the worker's own
    split (p50 / p99 ms of each part) where given."""
    p50, p99 = np.percentile(latencies, [50, 99])
    result = {"events_per_s": round(rate, 1), "p50_ms": round(float(p50), 2), "p99_ms": round(float(p99), 2)}
    if offered is not None:
        result = {"offered": offered} | result
    if split is not None:
        result["split_ms"] = {name: [round(float(np.percentile(values, q)), 2) for q in (50, 99)]
                              for name, values in latency_split(split).items()}
    return result


def report(run: dict) -> None:
    """Print a run (:func:`measure`) as the table and lines of the module docstring."""
    print(f"\n{'phase':<52} {'events/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
    print(row("aiokafka produce -> consume (ceiling)", run["ceiling"]))
    print(row("worker, as fast as possible", run["flat_out"]))
    for phase in run["phases"]:
        print(row(f"worker at {phase['offered']:,.0f} events/s", phase))
    print(row(f"aiokafka relay, {run['relay']['messages_per_event']} messages per event (I/O ceiling)", run["relay"]))
    written, events = run["messages_written"], run["worker_events"]
    print(f"\nthe worker wrote {written:,} Kafka messages for {events:,} events: {written / events:.2f} per event "
          "(outputs, internal topics and changelogs)")
    for phase in run["phases"]:
        print(f"\nthe worker's own split at {phase['offered']:,.0f} events/s, p50 / p99 ms: " + "; ".join(
            f"{name} {p50:.1f} / {p99:.1f}" for name, (p50, p99) in phase["split_ms"].items()))
    print("\nCPU per event (us), from the first send to the last recommendation of each phase: the worker's scorer "
          "process, the rest of the worker (event loop, aiokafka, RocksDB), the local Kafka broker, this bench (the "
          "load); and the share of the machine's cores busy meanwhile")
    print(f"{'phase':<28} {'scorer':>7} {'rest':>7} {'broker':>7} {'bench':>7} {'busy':>7}")
    for name, phase in [("flat out", run["flat_out"]),
                        *((f"at {p['offered']:,.0f} events/s", p) for p in run["phases"])]:
        cpu = phase["cpu_us_per_event"]
        print(f"{name:<28} {cpu['scorer']:>7.0f} {cpu['rest']:>7.0f} {cpu.get('broker', float('nan')):>7.0f} "
              f"{cpu['bench']:>7.0f} {phase['machine_busy']:>7.0%}")
    cpu = run["flat_out"]["cpu_us_per_event"]
    cores = run["machine"]["cores"]
    if "broker" in cpu:
        total = cpu["scorer"] + cpu["rest"] + cpu["broker"]
        print(f"flat out, the worker and the broker took {total:.0f} us of CPU per event: {cores} cores busy all the "
              f"time would carry at most {cores * 1e6 / total:,.0f} events/s")
    print(f"\nmachine: {cores} cores ({run['machine']['cpu']}); load average {run['machine']['load_average']:.1f}; "
          f"artefact {run['artefact']}; about {run['concurrent_users']:,} users active at once; worker arguments "
          f"{run['worker_args'] or 'default'}; worker nice {run['worker_nice']:+d}")
    broker_up = run["machine"].get("broker_up_s")
    if broker_up is not None and broker_up < BROKER_SETTLE_S:
        print(f"note: the local broker had been up {broker_up:.0f} s when this run began; a broker's first "
              f"{BROKER_SETTLE_S // 60} minutes gave slower runs on the 2-vCPU Xeon (docs/results.md): for figures "
              "to compare, run on a stack that has been up longer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artefact", type=Path, required=True, help="artefact folder (igrec export)")
    parser.add_argument("--events", type=int, default=30_000, help="events in the throughput phases")
    parser.add_argument("--rate", type=rates, default=[250.0, 500.0, 1_000.0],
                        help="events/s of the latency phases, comma-separated (one phase per rate; default "
                             "250,500,1000)")
    parser.add_argument("--latency-events", type=int, default=5_000, help="events in each latency phase")
    parser.add_argument("--plot", type=Path, metavar="PNG",
                        help="also draw p50 / p99 latency against the offered rate (with the flat-out rate)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the run's figures (with machine, date, commit and the artefact's model "
                             "and test HR@20) here; bench/plot_worker.py draws several runs in one plot")
    parser.add_argument("--worker-arg", action="append", default=[], metavar="ARG",
                        help="an extra `igrec worker` argument, e.g. --worker-arg=--threads=1 (repeatable)")
    parser.add_argument("--worker-nice", type=int, default=0, metavar="N",
                        help="run the worker under `nice -n N` (negative: ahead of the broker and of this bench's "
                             "own load on shared cores; needs CAP_SYS_NICE); its scorer adds --scorer-nice to it")
    parser.add_argument("--profile", type=Path, metavar="SVG|TXT",
                        help="also record the worker with py-spy (dev extra) in the flat-out phase and write a "
                             "flame graph (.svg) or collapsed stacks (.txt) of all its threads here")
    parser.add_argument("--profile-seconds", type=int, default=15, help="length of the py-spy recording")
    parser.add_argument("--concurrent-users", type=int, default=1_000,
                        help="users clicking at the same time: sessions interleaved so that about this many are "
                             "active at once (1: one session after another)")
    parser.add_argument("--keep-topics", action="store_true",
                        help="keep the run's topics (its events, outputs, the worker's internal and changelog "
                             "topics, the ceiling and relay topics) instead of deleting them at the end")
    args = parser.parse_args()
    if not (args.artefact / CARD_FILE).is_file():
        parser.error(f"--artefact {args.artefact}: no {CARD_FILE} there (an `igrec export` folder is expected)")
    sessions = cases_to_sessions(read_test_tsv(DIGINETICA_TEST))
    available = sum(len(session) for session in sessions)
    if max(args.events, args.latency_events) > available:
        parser.error(f"--events and --latency-events can be at most {available:,}: the clicks of the Diginetica "
                     "test split (each phase replays them as users of its own)")

    base = Settings.load()
    broker = stack.up(base, log=lambda _: None).get("kafka")
    settings = isolated(base)
    try:
        asyncio.run(ensure_topics(settings))
        run = measure(args, settings, broker, sessions)
        report(run)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_bytes(orjson.dumps(run, option=orjson.OPT_INDENT_2))
            print(f"figures: {args.json}")
        if args.plot:
            plot_runs(args.plot, [run])
            print(f"plot: {args.plot}")
    finally:
        if not args.keep_topics:
            asyncio.run(delete_topics(base, run_prefix(settings)))


if __name__ == "__main__":
    main()
