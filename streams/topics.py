"""Create igrec's topics (idempotently) with the configured partition count; delete a run's own topics."""

from __future__ import annotations

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.partitioner import murmur2

from streams.settings import Settings


async def ensure_topics(settings: Settings, names: list[str] | None = None,
                        configs: dict[str, dict[str, str]] | None = None) -> dict[str, int]:
    """Create the missing topics among ``names`` (default: every igrec topic), with the topic ``configs``
    given per name (e.g. ``cleanup.policy``); returns partitions per topic."""
    wanted = names if names is not None else list(settings.topics.values())
    configs = configs or {}
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [name for name in wanted if name not in existing]
        if missing:
            await admin.create_topics([
                NewTopic(name, num_partitions=settings.topic_partitions, replication_factor=1,
                         topic_configs=configs.get(name, {}))
                for name in missing
            ])
        described = await admin.describe_topics(wanted)
        return {entry["topic"]: len(entry["partitions"]) for entry in described}
    finally:
        await admin.close()


async def partition_count(settings: Settings, topic: str) -> int:
    """How many partitions ``topic`` has; raises ValueError when it does not exist."""
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    if not described or described[0]["error_code"] or not described[0]["partitions"]:
        raise ValueError(f"topic {topic} does not exist")
    return len(described[0]["partitions"])


async def delete_topics(settings: Settings, prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix``: the topics of one bench or test run (their
    isolated settings give all of them, internal and changelog topics too, one prefix). Returns the names."""
    if not prefix.rstrip("."):
        raise ValueError(f"prefix {prefix!r} would delete every topic")
    admin = AIOKafkaAdminClient(**settings.aiokafka_kwargs())
    await admin.start()
    try:
        names = sorted(t for t in await admin.list_topics() if t.startswith(prefix))
        if names:
            await admin.delete_topics(names)
        return names
    finally:
        await admin.close()


def default_partition(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner (murmur2, as in the Java client and aiokafka) gives ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
