"""Crash recovery and scale-out, round after round: kill -9 the worker at a random moment mid-stream and restart it
with an empty local state folder (``--disruption kill9``), start a second worker in the group at a random
moment while events keep arriving (``--disruption join``), kill the broker (``--disruption broker``) or freeze
a worker (``--disruption freeze``); then check that nothing was lost.

Each kill -9 round uses fresh topics and a fresh consumer group: a worker starts and the events of
``--sessions`` Diginetica test sessions are published at ``--rate`` per second; at a random moment of the
stream (1 s after the start or later, and 1 s before its end or earlier) the worker gets SIGKILL, and a new
worker in the same group starts at once, with an empty local folder (its state comes from the changelog),
while the rest is published. Depending on the moment the killed worker had committed nothing yet or some of
its work (it commits every 2.8 s), with more in flight. The new worker must answer every event: each
recommendation must equal the offline Scorer's on the same prefix (top-20 items, ties within 1e-4 aside;
scores within 1e-4), every item -> item NEXT count must equal the number of times the pair was clicked in a
row (none lost, none counted twice), and the consumer group's committed offsets must reach the end of the
events topic (a worker that cannot commit never acknowledged an event).

A broker round (fresh topics and group too): a worker starts, 30, 50 or 70 % of the events are published,
and once a quarter of those is answered the Kafka broker gets SIGKILL; it stays down for one of ``--down``
(default 1, 5 or 15 s) and is
started again on its data (``igrec stack up``), then the rest is published. The same worker must answer
every event, with the same three checks; if it died meanwhile a new one is started (what a supervisor
would do) and the row says so.

A join round also uses fresh topics and group: a worker starts, the events are published at ``--rate`` per
second, a second worker (its own empty folder) is started after a random 2-12 s, and both must then answer
every event, with the same three checks. The re-emitted count shows what the rebalance made the workers do
twice (at-least-once allows it; each one is an answer sent again under the same event id).

A freeze round (fresh topics and group): two workers share the partitions; once a tenth of the stream is
answered the rest is published at ``--rate`` per second, and at a random moment of it one worker and its scorer
are frozen (SIGSTOP) for ``--frozen`` seconds, longer than the session timeout, as a paused VM would be. The
other worker takes its partitions; thawed (SIGCONT), the frozen one goes on where it stopped before it notices,
and what it then delivers lands after the new owner's. Each session's last click is held back: once the rest is
answered and committed, both workers stop and a third one, on an empty folder, restores the partitions from the
changelogs and must answer the last clicks (the same three checks, over every answer of the round).

Prints one row per round (the disruption point, seconds from the restart, the join, the broker's return or the
restoring worker's start to the last answer, re-emitted duplicates, mismatches, NEXT count errors, events left
uncommitted, and the late writes seen: changelog messages that are an earlier version of one before them under
their key, and NEXT counts lower than one before them of their pair) and a summary; exits 1 if any round lost
or changed anything. A NEXT count is judged by the largest of its pair, as the Neo4j sink keeps it. Needs the
local stack (``igrec stack up``; ``IGREC_*`` variables choose which one) and
``../shared/data/diginetica``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from deploy import stack
from export.scorer import Scorer
from model.data import read_test_tsv
from streams.harness import (
    WorkerProcess,
    collect,
    expected_recommendations,
    isolated_settings,
    late_counts,
    late_states,
    mismatched,
    pair_counts,
    run_prefix,
    settled_next_count_history,
    uncommitted,
)
from streams.next_counts import counted_offsets
from streams.replay import cases_to_sessions, publish, session_events
from streams.settings import ROOT, Settings
from streams.state import applied_offsets
from streams.topics import delete_topics, ensure_topics

DIGINETICA_TEST = ROOT.parent / "shared" / "data" / "diginetica" / "srgnn_split" / "test.tsv"


def next_count_errors(settings: Settings, sessions: list[list[int]], timeout: float) -> tuple[int, int]:
    """Item pairs whose NEXT count in Neo4j would differ from the clicks in a row (the sink keeps a pair's largest
    count) or that should not have one, and the late counts (:func:`streams.harness.late_counts`)."""
    history, expected = settled_next_count_history(settings, sessions, timeout, largest=True)
    counts = pair_counts(history, largest=True)
    errors = sum(counts.get(pair) != n for pair, n in expected.items()) + len(set(counts) - set(expected))
    return errors, late_counts(history)


def kill_round(base: Settings, scorer: Scorer, artefact: Path, sessions: list[list[int]], rng: random.Random,
               workdir: Path, name: str, rate: float) -> dict:
    settings, events, expected = prepare(base, scorer, sessions, name)
    kill_s = 1 + max(len(events) / rate - 2, 0) * rng.random()
    app_id = f"{settings.topic_events}-w"
    workers = [WorkerProcess(settings, artefact, workdir, app_id=app_id, name="first").start()]

    def kill_and_restart() -> None:
        workers[0].kill9()
        workers[0] = WorkerProcess(settings, artefact, workdir, app_id=app_id, name="restarted").start()

    try:
        restarted = asyncio.run(publish_meanwhile(settings, events, rate, kill_s, kill_and_restart))
        return settle(settings, app_id, sessions, expected, restarted, workers, f"kill at {kill_s:.1f} s")
    finally:
        workers[0].stop()


def join_round(base: Settings, scorer: Scorer, artefact: Path, sessions: list[list[int]], rng: random.Random,
               workdir: Path, name: str, rate: float) -> dict:
    settings, events, expected = prepare(base, scorer, sessions, name)
    join_s = 2 + 10 * rng.random()
    app_id = f"{settings.topic_events}-w"
    first = WorkerProcess(settings, artefact, workdir, app_id=app_id, name="first").start()
    second = WorkerProcess(settings, artefact, workdir, app_id=app_id, name="joining")
    try:
        joined = asyncio.run(publish_meanwhile(settings, events, rate, join_s, second.start))
        return settle(settings, app_id, sessions, expected, joined, [first, second], f"join at {join_s:.1f} s")
    finally:
        first.stop()
        second.stop()


def broker_round(base: Settings, scorer: Scorer, artefact: Path, sessions: list[list[int]], rng: random.Random,
                 workdir: Path, name: str, rate: float, down: list[float]) -> dict:
    settings, events, expected = prepare(base, scorer, sessions, name)
    first = int(len(events) * rng.choice([0.3, 0.5, 0.7]))
    down_s = rng.choice(down)
    app_id = f"{settings.topic_events}-w"
    workers = [WorkerProcess(settings, artefact, workdir, app_id=app_id, name="first").start()]
    try:
        asyncio.run(publish(settings, settings.topic_events, events[:first]))
        asyncio.run(collect(settings, settings.topic_recommendations, max(1, first // 4), timeout=240,
                            watch=workers))
        stack.kill(base, "kafka", log=lambda _: None)
        time.sleep(down_s)
        stack.up(base, log=lambda _: None)
        back = time.monotonic()
        asyncio.run(publish(settings, settings.topic_events, events[first:]))
        died = not workers[0].alive()
        if died:  # what a supervisor would do; the row says so
            workers[0] = WorkerProcess(settings, artefact, workdir, app_id=app_id, name="restarted").start()
        row = settle(settings, app_id, sessions, expected, back, workers,
                     f"down {down_s:.0f} s{', died' if died else ''}")
        return row | {"died": died}
    finally:
        workers[0].stop()


def freeze_round(base: Settings, scorer: Scorer, artefact: Path, sessions: list[list[int]], rng: random.Random,
                 workdir: Path, name: str, rate: float, frozen: float) -> dict:
    settings, events, expected = prepare(base, scorer, sessions, name)
    last = {event["user_id"]: event for event in events}
    held_back = list(last.values())
    stream = [event for event in events if event is not last[event["user_id"]]]
    warm = len(stream) // 10
    freeze_s = (len(stream) - warm) / rate * (0.2 + 0.6 * rng.random())
    app_id = f"{settings.topic_events}-w"
    workers = [WorkerProcess(settings, artefact, workdir, app_id=app_id, name=n).start() for n in ("frozen", "other")]
    try:
        asyncio.run(publish(settings, settings.topic_events, stream[:warm]))
        asyncio.run(collect(settings, settings.topic_recommendations, warm, timeout=240, watch=workers))
        frozen_at = asyncio.run(publish_meanwhile(settings, stream[warm:], rate, freeze_s, workers[0].freeze))
        time.sleep(max(frozen_at + frozen - time.monotonic(), 0.0))
        workers[0].thaw()
        asyncio.run(collect(settings, settings.topic_recommendations, len(stream), timeout=300, watch=workers))
        uncommitted(settings, app_id, timeout=60)
        died = not workers[0].alive()
        for worker in workers:
            worker.stop()
        workers.append(WorkerProcess(settings, artefact, workdir, app_id=app_id, name="restored").start())
        restored = time.monotonic()
        asyncio.run(publish(settings, settings.topic_events, held_back))
        row = settle(settings, app_id, sessions, expected, restored, workers[-1:],
                     f"frozen at {freeze_s:.1f} s{', died' if died else ''}")
        return row | {"died": died}
    finally:
        for worker in workers:
            worker.stop()


async def publish_meanwhile(settings: Settings, events: list[dict], rate: float, after_s: float,
                            disrupt: Callable[[], object]) -> float:
    """Publish ``events`` at ``rate`` per second and call ``disrupt`` ``after_s`` seconds in; returns when it was
    called (monotonic clock), once every event is published."""
    publishing = asyncio.ensure_future(publish(settings, settings.topic_events, events, rate=rate))
    await asyncio.sleep(after_s)
    disrupt()
    disrupted = time.monotonic()
    await publishing
    return disrupted


def prepare(base: Settings, scorer: Scorer, sessions: list[list[int]], name: str) -> tuple[Settings, list, dict]:
    """A round's fresh topics, its events and the offline answers."""
    settings = isolated_settings(base)
    asyncio.run(ensure_topics(settings))
    return settings, list(session_events(sessions, run=name)), expected_recommendations(scorer, sessions, name)


def settle(settings: Settings, app_id: str, sessions: list[list[int]], expected: dict, since: float,
           workers: list[WorkerProcess], at: str) -> dict:
    """Wait for every answer, then check them, the NEXT counts and the group's commits."""
    got = asyncio.run(collect(settings, settings.topic_recommendations, len(expected), timeout=300, watch=workers))
    count_errors, late = next_count_errors(settings, sessions, timeout=60)
    return {
        "events": len(expected), "at": at, "missing": len(set(expected) - set(got)),
        "recovered_s": time.monotonic() - since, "duplicates": sum(len(records) - 1 for records in got.values()),
        "mismatches": len(mismatched(got, expected)),
        "count_errors": count_errors,
        "uncommitted": uncommitted(settings, app_id, timeout=30),
        "late_states": sum(late_states(settings, f"{app_id}-{table}-changelog", high_water)
                           for table, high_water in (("users", applied_offsets), ("next-counts", counted_offsets))),
        "late_counts": late,
        "prefix": run_prefix(settings),
    }


ROUNDS = {"kill9": kill_round, "join": join_round, "broker": broker_round, "freeze": freeze_round}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artefact", type=Path, required=True, help="artefact folder (igrec export)")
    parser.add_argument("--disruption", choices=sorted(ROUNDS), default="kill9",
                        help="kill9: kill the worker and restart it; join: a second worker joins; broker: kill the "
                             "Kafka broker under the worker and restart it; freeze: freeze one of two workers past "
                             "its session timeout, thaw it, then restore a third from the changelogs (default kill9)")
    parser.add_argument("--rounds", type=int, default=10, help="rounds (default 10)")
    parser.add_argument("--sessions", type=int, default=600,
                        help="Diginetica test sessions per round (default 600, about 2,900 events: 11-12 s at 250/s)")
    parser.add_argument("--rate", type=float, default=250.0,
                        help="events published per second in kill9 and join rounds (default 250; broker rounds "
                             "publish before and after the outage at once)")
    parser.add_argument("--down", default="1,5,15",
                        help="broker rounds: outage lengths in seconds, one drawn per round (default 1,5,15)")
    parser.add_argument("--frozen", type=float, default=20.0,
                        help="freeze rounds: seconds the worker stays frozen (default 20; the worker's session "
                             "timeout is 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points and the sessions drawn")
    parser.add_argument("--keep", type=Path, help="keep the workers' logs and local folders here, and each round's "
                                                  "topics (else deleted after the round)")
    args = parser.parse_args()

    base = Settings.load()
    stack.up(base, log=lambda _: None)
    scorer = Scorer(args.artefact, providers="cpu")
    all_sessions = cases_to_sessions(read_test_tsv(DIGINETICA_TEST))
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="igrec-crash-"))
    since = {"kill9": "restart", "join": "join", "broker": "broker back", "freeze": "restore"}[args.disruption]
    header = f"{'round':>5} {'events':>6} {'disruption':>20} " \
             f"{'missing':>7} {since + '->all s':>14} " \
             f"{'duplicates':>10} {'mismatches':>10} {'count errors':>12} {'uncommitted':>11} " \
             f"{'late states':>11} {'late counts':>11}"
    print(header, flush=True)
    rows = []
    extra = {"broker": {"down": [float(s) for s in args.down.split(",")]},
             "freeze": {"frozen": args.frozen}}.get(args.disruption, {})
    for r in range(args.rounds):
        skip = rng.randrange(0, len(all_sessions) - args.sessions)
        row = ROUNDS[args.disruption](base, scorer, args.artefact, all_sessions[skip : skip + args.sessions], rng,
                                      root / f"r{r}", f"{args.disruption}{args.seed}-{r}", args.rate, **extra)
        rows.append(row)
        print(f"{r:>5} {row['events']:>6} {row['at']:>20} {row['missing']:>7} "
              f"{row['recovered_s']:>14.1f} {row['duplicates']:>10} {row['mismatches']:>10} "
              f"{row['count_errors']:>12} {row['uncommitted']:>11} {row['late_states']:>11} "
              f"{row['late_counts']:>11}", flush=True)
        if not args.keep:
            asyncio.run(delete_topics(base, row["prefix"]))
    failed = [r for r in rows if r["missing"] or r["mismatches"] or r["count_errors"] or r["uncommitted"]
              or r.get("died")]
    times = sorted(r["recovered_s"] for r in rows)
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rounds lost nothing and changed nothing; {since} -> last "
          f"answer median {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s; logs under {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
