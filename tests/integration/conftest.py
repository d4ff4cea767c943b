"""Integration fixtures: the real local Kafka + Neo4j, started once per test session.

The test stack has its own state folder and ports (``IGREC_TEST_*`` to change them), so it never touches a
demo stack running beside it. A stack that was already up is reused and left running; one started here is
stopped at the end.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from deploy import stack
from streams.settings import ROOT, Settings


def _test_settings() -> Settings:
    env = os.environ
    return Settings.load(env={}).replace(
        state_dir=ROOT / ".state" / "test",
        kafka_port=int(env.get("IGREC_TEST_KAFKA_PORT", 19092)),
        kafka_controller_port=int(env.get("IGREC_TEST_KAFKA_CONTROLLER_PORT", 19093)),
        neo4j_port=int(env.get("IGREC_TEST_NEO4J_PORT", 17687)),
    )


@pytest.fixture(scope="session")
def settings() -> Iterator[Settings]:
    """Settings of a running, healthy local stack."""
    test_settings = _test_settings()
    was_running = all(entry["healthy"] for entry in stack.status(test_settings).values())
    stack.up(test_settings, timeout=240)
    yield test_settings
    if not was_running and not os.environ.get("IGREC_TEST_KEEP_STACK"):
        stack.down(test_settings)


@pytest.fixture
def topic_name() -> str:
    """A fresh topic name per test, so tests never read each other's messages."""
    return f"test.{uuid.uuid4().hex[:12]}"
