"""Create igrec's topics (idempotently) with the configured partition count; delete a run's own topics."""

from __future__ import annotations

import asyncio
import time

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import RequestTimedOutError, TopicAlreadyExistsError, for_code
from aiokafka.partitioner import murmur2

from streams.settings import Settings


async def ensure_topics(settings: Settings, names: list[str] | None = None,
                        configs: dict[str, dict[str, str]] | None = None, timeout: float = 30.0) -> dict[str, int]:
    """Create the missing topics among ``names`` (default: every igrec topic), with the topic ``configs``
    given per name (e.g. ``cleanup.policy``); returns partitions per topic once the broker serves all of them.

    A KRaft broker answers CreateTopics when the controller has committed the topic, and learns of it from
    the metadata log a moment later; until then its metadata omits the topic. So this waits (up to
    ``timeout`` seconds) until every wanted topic is described with its partitions, and raises
    TimeoutError naming the ones still missing."""
    wanted = names if names is not None else list(settings.topics.values())
    configs = configs or {}
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            response = await admin.create_topics([
                NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=1,
                         topic_configs=configs.get(name, {}))
                for name in missing
            ])
            _raise_creation_errors(response.to_object()["topic_errors"])
        return await _served_partitions(admin, wanted, timeout)
    finally:
        await admin.close()


_STILL_COMING = (TopicAlreadyExistsError.errno, RequestTimedOutError.errno)


def _raise_creation_errors(topic_errors: list[dict]) -> None:
    """Raise for a topic the broker refused to create; one that another client created first, or whose
    creation outlasted the request, is not an error (the wait for the broker's metadata follows)."""
    refused = [entry for entry in topic_errors if entry["error_code"] and entry["error_code"] not in _STILL_COMING]
    if refused:
        raise RuntimeError("the broker refused to create " + "; ".join(
            f"{entry['topic']}: {for_code(entry['error_code']).__name__} {entry.get('error_message') or ''}".rstrip()
            for entry in refused))


def _served(described: list[dict]) -> dict[str, int]:
    """Partitions per topic of a metadata answer, for the topics the broker serves (no error, partitions known)."""
    return {entry["topic"]: len(entry["partitions"]) for entry in described
            if not entry["error_code"] and entry["partitions"]}


async def _served_partitions(admin: AIOKafkaAdminClient, names: list[str], timeout: float) -> dict[str, int]:
    """Partitions per topic as the broker's metadata gives them, polled until every one of ``names`` is there."""
    deadline = time.monotonic() + timeout
    while True:
        served = _served(await admin.describe_topics(names))
        absent = [name for name in names if name not in served]
        if not absent:
            return served
        if time.monotonic() > deadline:
            raise TimeoutError(f"the broker does not serve {absent} {timeout:g} s after they were created")
        await asyncio.sleep(0.1)


async def partition_count(settings: Settings, topic: str) -> int:
    """How many partitions ``topic`` has; raises ValueError when it does not exist."""
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        served = _served(await admin.describe_topics([topic]))
    finally:
        await admin.close()
    if topic not in served:
        raise ValueError(f"topic {topic} does not exist")
    return served[topic]


async def delete_topics(settings: Settings, prefix: str, timeout: float = 30.0) -> list[str]:
    """Delete every topic whose name starts with ``prefix``: the topics of one bench or test run (their
    isolated settings give all of them, internal and changelog topics too, one prefix). Returns the names
    once the broker's metadata no longer lists them (deletion, like creation, reaches it a moment after the
    answer), or raises TimeoutError after ``timeout`` seconds."""
    if not prefix.rstrip("."):
        raise ValueError(f"prefix {prefix!r} would delete every topic")
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if names:
            await admin.delete_topics(names)
        deadline = time.monotonic() + timeout
        while left := sorted(set(names) & set(await admin.list_topics())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the broker still lists {left} {timeout:g} s after deleting them")
            await asyncio.sleep(0.1)
        return names
    finally:
        await admin.close()


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client and aiokafka) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
