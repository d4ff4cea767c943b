"""The global NEXT counter's messages and state, checked before use (pure; the agent is in
:mod:`streams.worker`).

The worker's admitting agent sends each micro-batch's item -> item transitions to an internal topic, one
JSON list per partition (``{"head", "tail", "p", "o"}``: the pair and the source event's partition and
offset). The counting agent keeps per pair ``{"count", "hw"}``: the count and, per source partition, the
highest source offset counted, so a re-delivered transition counts once.

Only workers write that topic and that state, but a message or a stored value this code cannot read
(another version's layout, a hand-made record, a damaged changelog) must not stop the worker at every
restart: :func:`transition_bundle` and :func:`read_count` refuse it with a :class:`~streams.records.Refusal`
that the agent dead-letters.
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.records import Refusal


class UnreadableTransitions(Refusal):
    """A transitions-topic message that is not a list of transitions (none of it is counted)."""

    code = "transitions_unreadable"


class UnreadableCount(Refusal):
    """A stored NEXT count that is not ``{"count", "hw"}``: the pair's transitions are dead-lettered, not
    counted, until it is repaired. Starting the pair afresh would write a smaller absolute count over the
    knowledge graph's."""

    code = "next_count_unreadable"


def transition_key(head: str, tail: str) -> bytes:
    """The key of an item -> item pair in the transitions topic and the ``next-counts`` Table."""
    return f"{head}>{tail}".encode()


def transition_bundle(raw: bytes | None) -> list[dict[str, Any]]:
    """The transitions of one transitions-topic message: a list (one message per partition and micro-batch),
    or a single object (written by workers before the lists; read so that an upgrade loses none). Raises
    :class:`UnreadableTransitions` unless every entry has string ``head`` and ``tail`` and integer ``p`` and
    ``o``."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError as error:
        raise UnreadableTransitions(f"transitions message is not JSON: {error}") from None
    bundle = value if isinstance(value, list) else [value]
    for i, entry in enumerate(bundle):
        if not (isinstance(entry, dict) and type(entry.get("head")) is str and type(entry.get("tail")) is str
                and type(entry.get("p")) is int and type(entry.get("o")) is int):
            raise UnreadableTransitions(f"transitions message entry {i} of {len(bundle)} is not "
                                        '{"head": str, "tail": str, "p": int, "o": int}; none counted')
    return bundle


def read_count(raw: bytes | None) -> dict[str, Any]:
    """The stored count of a pair (zero when ``raw`` is None). Raises :class:`UnreadableCount` unless it is
    ``{"count": int, "hw": {partition: int}}``."""
    if raw is None:
        return {"count": 0, "hw": {}}
    try:
        state = orjson.loads(raw)
    except orjson.JSONDecodeError as error:
        raise UnreadableCount(f"stored NEXT count is not JSON: {error}") from None
    if not (isinstance(state, dict) and type(state.get("count")) is int and isinstance(state.get("hw"), dict)
            and all(type(v) is int for v in state["hw"].values())):
        raise UnreadableCount('stored NEXT count is not {"count": int, "hw": {partition: int}}')
    return state


def counted_offsets(raw: bytes | None) -> dict[str, int] | None:
    """The highest counted source offset per partition of the count stored as ``raw``; None where there is no
    readable count (the counterpart of :func:`streams.state.applied_offsets`)."""
    if raw is None:
        return None
    try:
        return read_count(raw)["hw"]
    except UnreadableCount:
        return None


def counted(state: dict[str, Any], transition: dict[str, Any]) -> dict[str, Any] | None:
    """``state`` with ``transition`` counted, or None when it was counted before (a re-delivery)."""
    source = str(transition["p"])
    if transition["o"] <= state["hw"].get(source, -1):
        return None
    return {"count": state["count"] + 1, "hw": {**state["hw"], source: transition["o"]}}
