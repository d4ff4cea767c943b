"""Turn dataset sessions into click events and publish them to Kafka (the seed of ``igrec replay``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import orjson
from aiokafka import AIOKafkaProducer
from tqdm import tqdm

from model.data import Cases
from streams.records import SCHEMA_VERSION
from streams.settings import Settings

REPLAY_EPOCH = 1_700_000_000.0
CLICK_SPACING_S = 30.0


def cases_to_sessions(cases: Cases) -> list[list[int]]:
    """Rebuild the test sessions behind SR-GNN-ordered cases (the inverse of ``sessions_to_cases``).

    A session of ``n`` clicks appears as ``n - 1`` consecutive cases with prefix lengths ``n-1, ..., 1``,
    the first being ``s[:-1] -> s[-1]``. Anything else raises, so a replay can never silently publish
    sessions that would yield different cases than the offline evaluation.
    """
    sessions: list[list[int]] = []
    c = 0
    while c < len(cases):
        n = int(cases.length[c]) + 1
        session = [*cases.flat[cases.start[c] : cases.start[c] + n - 1].tolist(), int(cases.target[c])]
        for k in range(1, n - 1):
            case = c + k
            expected = (n - 1 - k, session[n - 1 - k])
            if case >= len(cases) or (int(cases.length[case]), int(cases.target[case])) != expected:
                raise ValueError(f"case {case}: not the SR-GNN prefix order of the session that starts at case {c}")
        sessions.append(session)
        c += n - 1
    return sessions


def session_events(sessions: Sequence[Sequence[int]], run: str, first_user: int = 0) -> Iterator[dict]:
    """Click events for ``sessions``, one user and one session each, with deterministic timestamps."""
    for index, session in enumerate(sessions, start=first_user):
        user = f"{run}-u{index}"
        for pos, item in enumerate(session):
            yield {
                "schema_version": SCHEMA_VERSION,
                "event_id": f"{user}-{pos}",
                "user_id": user,
                "session_id": f"{user}-s0",
                "item_id": str(item),
                "ts": REPLAY_EPOCH + index * 3600.0 + pos * CLICK_SPACING_S,
                "type": "click",
            }


async def publish(settings: Settings, topic: str, events: Sequence[dict]) -> None:
    """Publish events keyed by user id with an idempotent producer, waiting until all are acknowledged."""
    await publish_payloads(settings, topic, [orjson.dumps(e) for e in events], [e["user_id"].encode() for e in events])


async def publish_payloads(
    settings: Settings,
    topic: str,
    payloads: Sequence[bytes],
    keys: Sequence[bytes] | None = None,
    desc: str | None = None,
) -> None:
    """Publish raw payloads (optionally keyed) with an idempotent producer; returns once all are acknowledged."""
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs(), enable_idempotence=True, acks="all", linger_ms=5)
    await producer.start()
    try:
        with tqdm(total=len(payloads), desc=desc, unit="msg", disable=desc is None) as bar:
            for index, payload in enumerate(payloads):
                await producer.send(topic, value=payload, key=keys[index] if keys else None)
                if index % 1000 == 999:
                    bar.update(1000)
            await producer.flush()
            bar.update(len(payloads) - bar.n)
    finally:
        await producer.stop()
