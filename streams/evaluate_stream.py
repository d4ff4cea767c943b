"""Stream evaluation: recommendations joined with the next click of their session, scored with model.metrics.

The recommendation emitted for the click at position ``t`` of a session is judged against the item clicked
at ``t + 1`` in that session (a session's last click has no target and is not a case). Ranks come from the
served top-K list with the offline tie rule (``model.metrics.ranks_from_top_k``), so on the same split and
artefact the numbers equal the offline evaluation of that artefact exactly.

A/B on recorded traffic re-scores one recorded events topic with two artefacts through the worker's own
state and scoring code (``streams.state``, ``streams.scoring.score_batch``), so both see identical sessions.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from tqdm import tqdm

from model.metrics import metrics_from_ranks, ranks_from_top_k
from streams.records import json_object
from streams.settings import Settings
from streams.topics import partition_count


@dataclass(frozen=True)
class Case:
    """One judged recommendation: the listed items and scores, and the item actually clicked next."""

    event_id: str
    items: list[str]
    scores: list[float]
    target: str


async def read_topic(settings: Settings, topic: str,
                     desc: str | None = None) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every message of ``topic`` up to its end offsets at call time, as (partition, offset, key, value)."""
    tps = [TopicPartition(topic, p) for p in range(await partition_count(settings, topic))]
    consumer = AIOKafkaConsumer(**settings.aiokafka_kwargs(), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        starts = {tp: await consumer.position(tp) for tp in tps}
        out: list[tuple[int, int, bytes | None, bytes]] = []
        pending = {tp for tp in tps if ends[tp] > starts[tp]}
        with tqdm(total=sum(ends[tp] - starts[tp] for tp in tps), desc=desc, unit="msg", disable=desc is None) as bar:
            while pending:
                batch = await consumer.getmany(*pending, timeout_ms=2000)
                for tp, messages in batch.items():
                    kept = [m for m in messages if m.offset < ends[tp]]
                    out.extend((m.partition, m.offset, m.key, m.value) for m in kept)
                    bar.update(len(kept))
                    if messages and messages[-1].offset >= ends[tp] - 1:
                        pending.discard(tp)
        return out
    finally:
        await consumer.stop()


def _objects(messages: list[tuple[int, int, bytes | None, bytes]]) -> list[dict]:
    """The JSON objects among the messages' values (a recorded topic can hold anything: the worker
    dead-letters what is not an event)."""
    return [value for *_, raw in messages if (value := json_object(raw)) is not None]


def join_cases(events: Iterable[dict], recommendations: Iterable[dict], run: str | None = None) -> list[Case]:
    """Pair each recommendation with the item of the next click in its session.

    ``events`` give ``event_id -> item_id``; recommendations give ``(session_id, position) -> event_id``.
    Re-delivered recommendations (same ``event_id``) count once. ``run`` keeps only event ids with that prefix.
    """
    item_of = {e["event_id"]: e["item_id"] for e in events}
    first: dict[str, dict] = {}
    for rec in recommendations:
        if run is None or rec["event_id"].startswith(run):
            first.setdefault(rec["event_id"], rec)
    at = {(r["session_id"], r["position"]): r for r in first.values()}
    cases = []
    for (session, position), rec in sorted(at.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        following = at.get((session, position + 1))
        if following is not None and following["event_id"] in item_of:
            cases.append(Case(rec["event_id"], rec["items"], rec["scores"], item_of[following["event_id"]]))
    return cases


def case_metrics(cases: list[Case], k: int = 20) -> dict[str, float]:
    """HR/MRR/NDCG@10,20 (percent) over the cases, ranks from the served lists."""
    if not cases:
        raise ValueError("no case: no recommendation has a following click in its session")
    vocabulary: dict[str, int] = {}

    def index(external: str) -> int:
        return vocabulary.setdefault(external, len(vocabulary) + 1)

    top = np.zeros((len(cases), k), dtype=np.int64)
    scores = np.full((len(cases), k), -np.inf)
    for row, case in enumerate(cases):
        listed = case.items[:k]
        top[row, : len(listed)] = [index(item) for item in listed]
        scores[row, : len(listed)] = case.scores[:k]
    targets = np.array([index(case.target) for case in cases], dtype=np.int64)
    metrics = metrics_from_ranks(ranks_from_top_k(top, scores, targets))
    metrics["cases"] = float(len(cases))
    return metrics


async def stream_metrics(settings: Settings, run: str | None = None) -> dict[str, float]:
    """Metrics of everything on the recommendations topic, judged against the events topic."""
    events = _objects(await read_topic(settings, settings.topic_events, "read events"))
    recs = _objects(await read_topic(settings, settings.topic_recommendations, "read recs"))
    valid = [e for e in events if "event_id" in e and "item_id" in e]
    return case_metrics(join_cases(valid, recs, run))


def rescore(events: list[tuple[int, int, bytes | None, bytes]], artefact: Path, batch: int = 256,
            int8: bool = False) -> list[dict]:
    """Recommendations for recorded raw events, through the worker's validation, state and scoring code
    (``int8``: the worker's ``--int8`` scorer)."""
    from export.scorer import Scorer
    from streams.scoring import score_batch
    from streams.state import OversizedSession, SessionPolicy, apply_event
    from streams.validate import EventError, parse_event

    scorer = Scorer(artefact, int8=int8)
    states: dict[str, dict] = {}
    policy = SessionPolicy()
    steps, meta = [], []
    now = time.time() + 10 * 365 * 86_400.0
    for partition, offset, key, value in sorted(events, key=lambda e: (e[0], e[1])):
        try:
            event = parse_event(value, key, now)
            states[event.user_id], step = apply_event(states.get(event.user_id), event, partition, offset, policy)
        except (EventError, OversizedSession):
            continue  # the worker dead-letters these
        steps.append(step)
        meta.append(event)
    out = []
    for begin in tqdm(range(0, len(steps), batch), desc=f"score with {artefact.name}", unit="batch"):
        results = score_batch(scorer, steps[begin : begin + batch])
        for event, step, scoring in zip(
            meta[begin : begin + batch], steps[begin : begin + batch], results, strict=True
        ):
            out.append(
                {
                    "event_id": event.event_id,
                    "session_id": step.session_id,
                    "position": step.position,
                    "items": scoring.items,
                    "scores": scoring.scores,
                }
            )
    return out


async def ab_test(settings: Settings, artefact_a: Path, artefact_b: Path, plot: Path | None = None,
                  int8: tuple[bool, bool] = (False, False)) -> dict:
    """Score the recorded events topic with two artefacts (``int8``: whether A, B use the int8 scorer; the
    same artefact twice compares float32 with int8); returns both metric sets and B - A."""
    raw = await read_topic(settings, settings.topic_events, "read events")
    valid = [e for e in _objects(raw) if "event_id" in e and "item_id" in e]
    result = {}
    for name, artefact, quantised in (("A", artefact_a, int8[0]), ("B", artefact_b, int8[1])):
        result[name] = case_metrics(join_cases(valid, rescore(raw, artefact, int8=quantised)))
    result["B-A"] = {key: result["B"][key] - result["A"][key] for key in result["A"] if key != "cases"}
    if plot is not None:
        labels = [f"{a.name} (int8)" if q else a.name for a, q in zip((artefact_a, artefact_b), int8, strict=True)]
        draw_ab(result, *labels, plot)
    return result


def draw_ab(result: dict, label_a: str, label_b: str, path: Path) -> None:
    """Grouped bars of every metric for A and B, with the difference printed above each pair."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [key for key in result["A"] if key != "cases"]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(10, 4.5), dpi=110)
    ax.bar(x - 0.2, [result["A"][n] for n in names], 0.4, label=f"A: {label_a}")
    ax.bar(x + 0.2, [result["B"][n] for n in names], 0.4, label=f"B: {label_b}")
    for i, n in enumerate(names):
        top = max(result["A"][n], result["B"][n])
        ax.text(i, top + 0.5, f"{result['B-A'][n]:+.2f}", ha="center", fontsize=8)
    ax.set_xticks(x, names)
    ax.set_ylabel("percent")
    ax.set_title(f"A/B on recorded traffic ({int(result['A']['cases'])} cases)")
    ax.legend()
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
