"""What a dead-letter topic holds (``igrec dlq``): its records counted by rule and by source topic, with the
time range and the latest reason of each rule, so an operator sees why events are refused, and since when,
without decoding records by hand."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from streams.records import json_object

UNREADABLE = "unreadable_record"
"""The code given to a message of the DLQ topic that is not a DLQ record (written by something else)."""


@dataclass
class Rule:
    """The records of one ``code``: how many, from which source topics, first and last received, and the
    latest one's reason and source offset."""

    code: str
    count: int = 0
    sources: dict[str, int] = field(default_factory=dict)
    first: float | None = None
    last: float | None = None
    latest_reason: str = ""
    latest_source: str = ""


def summarise(values: Iterable[bytes | None]) -> list[Rule]:
    """The rules of a DLQ topic's message values, most frequent first."""
    rules: dict[str, Rule] = {}
    for value in values:
        record = _record(value)
        code = str(record.get("code", "refused")) if record else UNREADABLE
        rule = rules.setdefault(code, Rule(code))
        rule.count += 1
        if not record:
            continue
        source = str(record.get("source_topic"))
        rule.sources[source] = rule.sources.get(source, 0) + 1
        received = float(record.get("received_at", 0.0))
        rule.first = received if rule.first is None else min(rule.first, received)
        if rule.last is None or received >= rule.last:
            rule.last = received
            rule.latest_reason = str(record.get("reason", ""))
            rule.latest_source = f"{source}:{record.get('source_partition')}@{record.get('source_offset')}"
    return sorted(rules.values(), key=lambda rule: (-rule.count, rule.code))


def _record(value: bytes | None) -> dict | None:
    record = json_object(value)
    return record if record is not None and "reason" in record else None


def table(rules: list[Rule], width: int = 100) -> str:
    """The rules as a text table: code, count, share, first and last received (UTC), and the latest reason."""
    total = sum(rule.count for rule in rules) or 1
    lines = [f"{'code':<24} {'count':>8} {'share':>6}  {'first':<19}  {'last':<19}  latest reason (source)"]
    for rule in rules:
        reason = f"{rule.latest_reason} ({rule.latest_source})" if rule.latest_source else ""
        lines.append(f"{rule.code:<24} {rule.count:>8,} {100 * rule.count / total:>5.1f}%  {_utc(rule.first):<19}  "
                     f"{_utc(rule.last):<19}  {reason[:width]}")
    lines.append(f"{'all':<24} {sum(rule.count for rule in rules):>8,}")
    return "\n".join(lines)


def _utc(ts: float | None) -> str:
    return "-" if ts is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))
