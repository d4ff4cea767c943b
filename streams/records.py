"""Topic contracts: the typed faust Records of every igrec topic, and their JSON Schemas.

Every message carries ``schema_version``. JSON goes through orjson (faust uses it when installed; igrec
depends on it). ``python -m streams.records docs/schemas`` regenerates the JSON Schema files from these
classes, so the documented contract can never drift from the code (a unit test checks the files).
"""

from __future__ import annotations

import sys
import time
import types
import typing
from pathlib import Path
from typing import Any

import faust
import orjson

SCHEMA_VERSION = 1
DLQ_TEXT_BYTES = 64 * 1024
"""Most bytes of a refused message's key or value copied into its DLQ record (the whole message stays at its
source offset)."""


class Refusal(ValueError):
    """A message (or stored value) refused by a contract check. ``str(error)`` is the reason with its
    particulars, for a person; ``code`` names the rule, stable across releases, for programs: DLQ records
    carry it, and metrics count by it (a reason with values in it would make a label per value)."""

    code = "refused"

    def __init__(self, reason: str, code: str | None = None):
        super().__init__(reason)
        if code is not None:
            self.code = code


class _Record(faust.Record, serializer="json", include_metadata=False):
    """Base: JSON without faust's ``__faust`` metadata, so non-faust consumers read plain objects."""

    @classmethod
    def encode(cls, **fields: Any) -> bytes:
        """``orjson.dumps(cls(**fields).asdict())`` without building the Record: the same bytes (the fields in
        declaration order, defaults filled in) for a fifth of the time. The worker writes two Records per
        event, and faust's constructor and ``asdict`` cost about 8 us each (docs/results.md). Like the
        constructor it raises TypeError for a missing or unknown field, and it converts no value."""
        options = cls._options
        if fields.keys() != options.fieldset:
            missing = options.fieldset - fields.keys() - options.defaults.keys()
            unknown = fields.keys() - options.fieldset
            if missing or unknown:
                raise TypeError(f"{cls.__name__}: missing fields {sorted(missing)}, unknown fields {sorted(unknown)}")
            fields = options.defaults | fields
        return orjson.dumps({name: fields[name] for name in options.fields})


class Event(_Record):
    """``igrec.events`` (key = user id): one click or other interaction of a user."""

    schema_version: int
    event_id: str
    user_id: str
    item_id: str
    ts: float
    session_id: str | None = None
    type: str = "click"
    context: dict[str, Any] | None = None


class Recommendation(_Record):
    """``igrec.recommendations`` (key = user id): the top-K after one event, idempotent by ``event_id``."""

    schema_version: int
    event_id: str
    user_id: str
    session_id: str
    position: int
    items: list[str]
    scores: list[float]
    scored: bool
    model_version: str
    event_ts: float
    emitted_at: float
    latency_ms: dict[str, float]


class EnrichedEvent(_Record):
    """``igrec.events.enriched`` (key = user id): the event with its session context and recommendations."""

    schema_version: int
    event_id: str
    user_id: str
    session_id: str
    item_id: str
    ts: float
    type: str
    position: int
    session_length: int
    new_session: bool
    known_item: bool
    interest_weights: list[float] | None
    recommendations: list[str]
    context: dict[str, Any] | None = None


class DeadLetter(_Record):
    """``igrec.events.dlq`` and ``igrec.kg.triples.dlq``: an input that was refused, with the reason, its rule
    (``code``, e.g. ``not_json``, ``ts_too_old``; README "Dead letters" lists them) and where it came from; or
    a user's stored state that the worker could not read (code ``user_state_unreadable``, ``value`` the state,
    the source that user's event which met it, and was then applied to a fresh state); or a message or stored
    count of the worker's NEXT counter that it could not read (codes ``transitions_unreadable``,
    ``next_count_unreadable``; the source the worker's transitions topic, ``value`` the message or the one
    transition not counted)."""

    schema_version: int
    reason: str
    source_topic: str
    source_partition: int
    source_offset: int
    key: str | None
    value: str | None
    received_at: float
    code: str = "refused"


def dead_letter_message(error: Refusal, topic: str, partition: int, offset: int, key: bytes | None,
                        value: bytes | None) -> bytes:
    """The DLQ message for a refused message (or value) read from ``topic``/``partition``/``offset``: a
    :class:`DeadLetter` as JSON, with the key and value as text (their first ``DLQ_TEXT_BYTES`` bytes)."""
    return DeadLetter.encode(
        schema_version=SCHEMA_VERSION, reason=str(error), code=error.code, source_topic=topic,
        source_partition=partition, source_offset=offset, key=_text(key), value=_text(value),
        received_at=time.time())


def _text(raw: bytes | None) -> str | None:
    return None if raw is None else raw[:DLQ_TEXT_BYTES].decode(errors="replace")


def json_object(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON object in ``raw``, or None when it holds anything else (readers of recorded topics, which
    can hold anything, skip those; :func:`decode_message` is the checking reader that says why)."""
    try:
        value = orjson.loads(raw) if raw is not None else None
    except orjson.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def decode_message(raw: bytes | None, error: type[Refusal]) -> dict[str, Any]:
    """The JSON object of one message at this ``SCHEMA_VERSION``; else raises ``error`` with the reason."""
    if raw is None:
        raise error("empty message (tombstone)", "tombstone")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as decode_error:
        raise error(f"not JSON: {decode_error}", "not_json") from None
    if not isinstance(data, dict):
        raise error(f"expected a JSON object, got {type(data).__name__}", "not_an_object")
    if data.get("schema_version") != SCHEMA_VERSION:
        raise error(f"schema_version must be {SCHEMA_VERSION}, got {data.get('schema_version')!r}",
                    "schema_version")
    return data


TOPIC_RECORDS: dict[str, type[_Record]] = {
    "events": Event,
    "recommendations": Recommendation,
    "enriched": EnrichedEvent,
    "dlq": DeadLetter,
}


def json_schema(record: type[_Record]) -> dict[str, Any]:
    """A JSON Schema (draft 2020-12) for a Record: its fields, types, and which are required."""
    hints = typing.get_type_hints(record)
    properties: dict[str, Any] = {}
    required: list[str] = []
    defaults = record._options.defaults
    for name in record._options.fields:
        properties[name] = _type_schema(hints[name])
        if name not in defaults:
            required.append(name)
    properties["schema_version"] = {"const": SCHEMA_VERSION}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": record.__name__,
        "description": " ".join((record.__doc__ or "").split()),
        "type": "object",
        "properties": properties,
        "required": required,
    }


def _type_schema(hint: Any) -> dict[str, Any]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        options = [_type_schema(arg) for arg in args if arg is not type(None)]
        schema = options[0] if len(options) == 1 else {"anyOf": options}
        return {"anyOf": [schema, {"type": "null"}]} if type(None) in args else schema
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "additionalProperties": _type_schema(args[1]) if args[1] is not Any else {}}
    simple = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if hint in simple:
        return {"type": simple[hint]}
    raise TypeError(f"no JSON Schema for {hint!r}")


def topic_schemas(topics: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The JSON Schema of every igrec topic, by topic name: one per Record, and the triples contract."""
    from streams import triples

    schemas = {topics[role]: json_schema(record) for role, record in TOPIC_RECORDS.items()}
    schemas[topics["triples"]] = triples.json_schema()
    schemas[topics["triples_dlq"]] = json_schema(DeadLetter)
    return schemas


def write_schemas(folder: Path, topics: dict[str, str]) -> list[Path]:
    """Write ``<topic>.schema.json`` for every topic; returns the files written."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for topic, schema in topic_schemas(topics).items():
        path = folder / f"{topic}.schema.json"
        path.write_bytes(orjson.dumps(schema, option=orjson.OPT_INDENT_2) + b"\n")
        written.append(path)
    return written


if __name__ == "__main__":
    from streams.settings import Settings

    for written_path in write_schemas(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/schemas"), Settings().topics):
        print(written_path)
