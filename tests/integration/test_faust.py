"""faust-streaming (with the pinned aiokafka) consumes and produces through the real Kafka 4 broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from streams.settings import Settings
from streams.topics import ensure_topics

pytestmark = pytest.mark.integration
APP = Path(__file__).with_name("faust_echo_app.py")


def _env(settings: Settings, topic: str, tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "IGREC_KAFKA_PORT": str(settings.kafka_port),
        "ECHO_APP_ID": f"echo-{topic}",
        "ECHO_DATADIR": str(tmp_path / "faust"),
        "ECHO_IN": f"{topic}.in",
        "ECHO_OUT": f"{topic}.out",
        "PYTHONPATH": str(APP.parents[2]),
    }


async def test_faust_agent_transforms_a_topic_into_another(settings: Settings, topic_name: str, tmp_path) -> None:
    env = _env(settings, topic_name, tmp_path)
    # The input topic exists before the worker subscribes: a worker that finds it missing gets an empty
    # assignment and only sees it at its next metadata refresh (minutes), after this test's deadline.
    await ensure_topics(settings, [env["ECHO_IN"], env["ECHO_OUT"]])
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, str(APP), "worker", "--loglevel", "info"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    producer = AIOKafkaProducer(**settings.aiokafka_kwargs())
    consumer = AIOKafkaConsumer(
        env["ECHO_OUT"], **settings.aiokafka_kwargs(), auto_offset_reset="earliest", group_id=f"{topic_name}-check"
    )
    await producer.start()
    await consumer.start()
    try:
        for n in range(50):
            payload = orjson.dumps({"user": f"u{n % 5}", "n": n, "__faust": {"ns": "faust_echo_app.Click"}})
            await producer.send(env["ECHO_IN"], key=f"u{n % 5}".encode(), value=payload)
        await producer.flush()
        received: list[dict] = []
        deadline = time.monotonic() + 90
        while len(received) < 50 and time.monotonic() < deadline:
            assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
            batch = await consumer.getmany(timeout_ms=2000)
            received.extend(orjson.loads(m.value) for messages in batch.values() for m in messages)
    finally:
        await consumer.stop()
        await producer.stop()
        worker.terminate()
        worker.wait(timeout=60)
        log.close()
    assert len(received) == 50, (tmp_path / "worker.log").read_text()[-3000:]
    assert sorted((r["n"], r["doubled"], r["user"]) for r in received) == [(n, 2 * n, f"u{n % 5}") for n in range(50)]
