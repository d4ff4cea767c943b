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
"""

from __future__ import annotations

from typing import Any

import faust
from faust.types import TP

from streams.outbox import Outbox


class OutboxTable(faust.Table):
    """A faust ``Table`` (the app's ``Table`` class: ``faust.App(..., Table=OutboxTable)``) whose changelog
    writes join the Outbox given to :meth:`write_through`."""

    outbox: Outbox | None = None

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
