"""Validation of raw ``igrec.events`` messages: an :class:`Event`, or an :class:`EventError` with the reason.

The worker consumes raw bytes and validates them here rather than letting the deserializer fail inside
faust, so that every refused message reaches the DLQ with a reason a person can act on and the worker
never stops on bad input.
"""

from __future__ import annotations

from typing import Any

import orjson

from streams.records import SCHEMA_VERSION, Event, Refusal, decode_message

MIN_TS = 946_684_800.0  # 2000-01-01: older timestamps are unit mistakes (ms vs s) or garbage
MAX_FUTURE_S = 86_400.0
MAX_ID = 256
MAX_TYPE = 32
MAX_CONTEXT_BYTES = 4_096
MAX_MESSAGE_BYTES = 64 * 1024


class EventError(Refusal):
    """The message is not a valid event; ``str(error)`` is the DLQ reason, ``code`` its rule."""


def parse_event(raw: bytes | None, key: bytes | None, now: float) -> Event:
    """Decode and check one message of the events topic.

    Refused: not JSON or not an object; a wrong ``schema_version``; a missing or mistyped field; ids empty
    or longer than 256 characters; a timestamp before 2000 or more than a day ahead of ``now`` (seconds);
    a ``context`` that is not an object or is over 4 KiB; a message without a key, or with a key that differs
    from ``user_id`` (the key decides the partition, and a user's state lives on one partition).
    """
    if raw is not None and len(raw) > MAX_MESSAGE_BYTES:
        raise EventError(f"message of {len(raw)} bytes; at most {MAX_MESSAGE_BYTES}", "too_large")
    data = decode_message(raw, EventError)
    event_id = _identifier(data, "event_id")
    user_id = _identifier(data, "user_id")
    item_id = _identifier(data, "item_id", allow_int=True)
    session_id = _identifier(data, "session_id", required=False)
    ts = _timestamp(data.get("ts"), now)
    kind = data.get("type", "click")
    if not isinstance(kind, str) or not 0 < len(kind) <= MAX_TYPE:
        raise EventError(f"type must be a string of 1..{MAX_TYPE} characters", "invalid_type")
    context = data.get("context")
    if context is not None:
        if not isinstance(context, dict):
            raise EventError("context must be an object", "invalid_context")
        if len(orjson.dumps(context)) > MAX_CONTEXT_BYTES:
            raise EventError(f"context larger than {MAX_CONTEXT_BYTES} bytes", "context_too_large")
    if key is None:
        raise EventError("message has no key (produce events keyed by user id)", "missing_key")
    if key.decode(errors="replace") != user_id:
        raise EventError("message key differs from user_id (produce events keyed by user id)", "key_mismatch")
    return Event(
        schema_version=SCHEMA_VERSION,
        event_id=event_id,
        user_id=user_id,
        item_id=item_id,
        ts=ts,
        session_id=session_id,
        type=kind,
        context=context,
    )


def _identifier(data: dict[str, Any], name: str, required: bool = True, allow_int: bool = False) -> Any:
    value = data.get(name)
    if value is None:
        if required:
            raise EventError(f"missing field {name}", "missing_field")
        return None
    if allow_int and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise EventError(f"{name} must be a string, got {type(value).__name__}", "wrong_field_type")
    if not 0 < len(value) <= MAX_ID:
        raise EventError(f"{name} must have 1..{MAX_ID} characters", "invalid_id_length")
    return value


def _timestamp(value: Any, now: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise EventError("ts must be a number (seconds since the epoch)", "invalid_ts")
    ts = float(value)
    if ts != ts or ts < MIN_TS:
        raise EventError(f"ts {value!r} is before 2000-01-01 (milliseconds instead of seconds?)", "ts_too_old")
    if ts > now + MAX_FUTURE_S:
        raise EventError(f"ts {value!r} is more than a day in the future", "ts_in_future")
    return ts
