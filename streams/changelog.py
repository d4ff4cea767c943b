"""faust Tables whose changelog messages go through an :class:`streams.outbox.Outbox`.

A faust Table writes one changelog message per ``table[key] = value``, through faust's ``send_soon``: a
``FutureMessage``, faust's ``ProducerBuffer`` task, ``publish_message`` and aiokafka's per-message ``send``,
then a delivery callback that writes the offset into RocksDB. The worker sets two Tables per event (the
user's state and a NEXT count), and that path was about a tenth of its event loop (py-spy,
docs/results.md). :class:`OutboxTable` appends the same key and value bytes, to the same partition, to the
agent's Outbox, which encodes them with the agent's other outputs and queues them with one call per
partition; a batch's delivery records its last offset as the store's persisted offset, as faust's callback
does per message.

Delivery before commit holds as with faust's path: the worker releases an event for its commit only once
the delivery that :meth:`Outbox.send` returns, which holds its changelog messages, has succeeded.
A Table used outside an agent with an Outbox (nothing in the worker) falls back to faust's own path.

Replaying a changelog (recovery, standbys) keeps the stored value where the changelog's is an earlier version
of it (:meth:`OutboxTable.apply_changelog_batch`). A worker that lost its partitions without a revocation
(frozen for longer than the session timeout) can still deliver what it had queued, and handle events it had
fetched, before it notices: those states land in the changelog after the new owner's. Each of the worker's
values carries the highest source offset it has taken in per partition, and a user's events (and a pair's
transitions) are applied in offset order from the same start by every owner, so of two versions of one
value the one behind on some partition and ahead on none is the earlier.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping
from typing import Any

import faust
from faust.types import TP, EventT

from streams.outbox import Outbox

log = logging.getLogger("igrec.changelog")
HighWater = Callable[[bytes | None], Mapping[str, int] | None]
"""The per-partition high-water offsets of a stored value (None: none to read)."""


def superseded(value: Mapping[str, int], other: Mapping[str, int]) -> bool:
    """Whether a value with the per-partition high-water offsets ``value`` is an earlier version than one with
    ``other``: ahead on no partition and behind on at least one (a partition missing counts as -1)."""
    behind = False
    for partition in value.keys() | other.keys():
        mine, theirs = value.get(partition, -1), other.get(partition, -1)
        if mine > theirs:
            return False
        behind = behind or mine < theirs
    return behind


def earlier_versions(messages: Iterable[tuple[Hashable, bytes | None]],
                     high_water: HighWater,
                     stored: Callable[[Any], bytes | None] = lambda slot: None) -> Iterator[bool]:
    """For each (slot, value) of a changelog in order, whether the value is an earlier version (:func:`superseded`)
    of the latest one before it in its slot, or where there is none, of the value ``stored(slot)``. A value whose
    offsets cannot be read is never earlier, and becomes the latest."""
    latest: dict[Hashable, Mapping[str, int] | None] = {}
    for slot, value in messages:
        incoming = high_water(value)
        if incoming is not None:
            before = latest[slot] if slot in latest else high_water(stored(slot))
            if before is not None and superseded(incoming, before):
                yield True
                continue
        latest[slot] = incoming
        yield False


class OutboxTable(faust.Table):
    """A faust ``Table`` (the app's ``Table`` class: ``faust.App(..., Table=OutboxTable)``) whose changelog
    writes join the Outbox given to :meth:`write_through`."""

    outbox: Outbox | None = None
    high_water: HighWater | None = None
    """Set, a changelog replay keeps a stored value over an earlier version of it (:func:`superseded`)."""

    def write_through(self, outbox: Outbox) -> None:
        """Send this table's changelog messages with ``outbox`` from now on."""
        self.outbox = outbox
        outbox.on_delivered(self.changelog_topic.get_topic_name(), self._persisted)

    def on_key_set(self, key: Any, value: Any) -> None:
        """Called by faust after ``table[key] = value`` has updated the local store."""
        if self.outbox is None:
            super().on_key_set(key, value)
            return
        partition = self.partition_for_key(key)
        if partition is None:
            raise RuntimeError(f"table {self.name}: an OutboxTable needs the source event's partition")
        topic = self.changelog_topic
        key_bytes, _ = topic.prepare_key(key, self.key_serializer)
        value_bytes, _ = topic.prepare_value(value, self.value_serializer)
        self.outbox.add(topic.get_topic_name(), key_bytes, value_bytes, partition=partition)
        self._maybe_set_key_ttl(key, partition)
        self._sensor_on_set(self, key, value)

    def _persisted(self, partition: int, offset: int) -> None:
        """The changelog holds everything up to ``offset`` of ``partition``: recovery starts after it."""
        self.data.set_persisted_offset(TP(self.changelog_topic.get_topic_name(), partition), offset)

    def apply_changelog_batch(self, batch: Iterable[EventT]) -> None:
        """faust's replay of changelog messages into the local store, without those that are an earlier version
        of the value stored (or replayed just before) under their key."""
        if self.high_water is None:
            super().apply_changelog_batch(batch)
            return
        events = list(batch)
        slots = (((event.message.partition, event.message.key), event.message.value) for event in events)
        late = earlier_versions(slots, self.high_water, self._stored)
        kept = [event for event, earlier in zip(events, late, strict=True) if not earlier]
        if len(kept) < len(events):
            log.info("changelog replay of %s kept %d stored values over earlier versions", self.name,
                     len(events) - len(kept))
        super().apply_changelog_batch(kept)

    def _stored(self, slot: tuple[int, bytes]) -> bytes | None:
        """The value the local store (faust's RocksDB store, the worker's) holds for a (partition, key)."""
        partition, key = slot
        return self.data._db_for_partition(partition).get(key)
