"""Crash recovery, round after round: kill -9 the worker at a random moment mid-stream, restart it with an empty
local state folder, and check that nothing was lost.

Each round uses fresh topics and a fresh consumer group:

1. a worker starts; a random share (30, 50 or 70 %) of the events of ``--sessions`` Diginetica test sessions is
   published;
2. once a random share (2-90 %) of those events is answered, and after a random pause under 2 s, the worker
   gets SIGKILL; the rest of the events is published;
3. a new worker in the same group, with an empty local folder (its state comes from the changelog), must
   answer every event: each recommendation must equal the offline Scorer's on the same prefix (top-20 items,
   ties within 1e-4 aside; scores within 1e-4), and every item -> item NEXT count must equal the number of
   times the pair was clicked in a row (none lost, none counted twice), and the consumer group's committed
   offsets must reach the end of the events topic (a worker that cannot commit never acknowledged an event).

Prints one row per round (kill point, seconds from the restart to the last answer, re-emitted duplicates,
mismatches, events left uncommitted) and a summary; exits 1 if any round lost or changed anything. Needs the local stack
(``igrec stack up``; ``IGREC_*`` variables choose which one) and ``../shared/data/diginetica``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

from deploy import stack
from export.scorer import Scorer
from model.data import read_test_tsv
from streams.replay import cases_to_sessions, publish, session_events
from streams.settings import ROOT, Settings
from streams.topics import ensure_topics

sys.path.insert(0, str(ROOT))  # the worker harness of the integration tests: one way to run and watch workers
from tests.integration.worker_harness import (
    WorkerProcess,
    collect,
    expected_recommendations,
    isolated_settings,
    mismatched,
    next_counts,
    uncommitted,
)

DIGINETICA_TEST = ROOT.parent / "shared" / "data" / "diginetica" / "srgnn_split" / "test.tsv"


def next_count_errors(settings: Settings, sessions: list[list[int]], timeout: float) -> int:
    """Item pairs whose last NEXT count differs from the clicks in a row, or that should not have one."""
    counts, expected = next_counts(settings, sessions, timeout)
    return sum(counts.get(pair) != n for pair, n in expected.items()) + len(set(counts) - set(expected))


def one_round(base: Settings, scorer: Scorer, artefact: Path, sessions: list[list[int]], rng: random.Random,
              workdir: Path, name: str) -> dict:
    settings = isolated_settings(base)
    asyncio.run(ensure_topics(settings))
    events = list(session_events(sessions, run=name))
    expected = expected_recommendations(scorer, sessions, name)
    published, answered = rng.choice([0.3, 0.5, 0.7]), rng.choice([0.02, 0.1, 0.25, 0.5, 0.9])
    first = int(len(events) * published)
    app_id = f"{settings.topic_events}-w"
    worker = WorkerProcess(settings, artefact, workdir, app_id=app_id, name="first").start()
    try:
        asyncio.run(publish(settings, settings.topic_events, events[:first]))
        asyncio.run(collect(settings, settings.topic_recommendations, max(1, int(first * answered)), timeout=240,
                            watch=[worker]))
        time.sleep(rng.random() * 2)
        worker.kill9()
        asyncio.run(publish(settings, settings.topic_events, events[first:]))
        worker = WorkerProcess(settings, artefact, workdir, app_id=app_id, name="restarted").start()
        began = time.monotonic()
        got = asyncio.run(collect(settings, settings.topic_recommendations, len(events), timeout=300,
                                  watch=[worker]))
        recovered_s = time.monotonic() - began
        count_errors = next_count_errors(settings, sessions, timeout=60)
        behind = uncommitted(settings, app_id, timeout=30)
    finally:
        worker.stop()
    return {
        "round": name, "events": len(events), "published": published, "answered": answered,
        "missing": len(set(expected) - set(got)), "recovered_s": recovered_s,
        "duplicates": sum(len(records) - 1 for records in got.values()),
        "mismatches": len(mismatched(got, expected)), "count_errors": count_errors, "uncommitted": behind,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--artefact", type=Path, required=True, help="artefact folder (igrec export)")
    parser.add_argument("--rounds", type=int, default=10, help="kill -9 rounds (default 10)")
    parser.add_argument("--sessions", type=int, default=300, help="Diginetica test sessions per round")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill points and the sessions drawn")
    parser.add_argument("--keep", type=Path, help="keep the workers' logs and local folders here")
    args = parser.parse_args()

    base = Settings.load()
    stack.up(base, log=lambda _: None)
    scorer = Scorer(args.artefact, providers="cpu")
    all_sessions = cases_to_sessions(read_test_tsv(DIGINETICA_TEST))
    rng = random.Random(args.seed)
    root = args.keep or Path(tempfile.mkdtemp(prefix="igrec-crash-"))
    header = f"{'round':>5} {'events':>6} {'published':>9} {'answered':>8} {'missing':>7} {'restart->all s':>14} " \
             f"{'duplicates':>10} {'mismatches':>10} {'count errors':>12} {'uncommitted':>11}"
    print(header, flush=True)
    rows = []
    for r in range(args.rounds):
        skip = rng.randrange(0, len(all_sessions) - args.sessions)
        row = one_round(base, scorer, args.artefact, all_sessions[skip : skip + args.sessions], rng, root / f"r{r}",
                        f"crash{args.seed}-{r}")
        rows.append(row)
        print(f"{r:>5} {row['events']:>6} {row['published']:>9.0%} {row['answered']:>8.0%} {row['missing']:>7} "
              f"{row['recovered_s']:>14.1f} {row['duplicates']:>10} {row['mismatches']:>10} "
              f"{row['count_errors']:>12} {row['uncommitted']:>11}", flush=True)
    failed = [r for r in rows if r["missing"] or r["mismatches"] or r["count_errors"] or r["uncommitted"]]
    times = sorted(r["recovered_s"] for r in rows)
    print(f"\n{len(rows) - len(failed)} of {len(rows)} rounds lost nothing and changed nothing; restart -> last "
          f"answer median {times[len(times) // 2]:.1f} s, max {times[-1]:.1f} s; logs under {root}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
