"""Structured logs: one JSON object per line on stderr, for the worker and the sink.

Every record carries ``ts`` (epoch seconds), ``level``, ``logger`` and ``msg``; fields passed with
``log.info("...", extra={"fields": {...}})`` are merged in, so a log shipper can index them without
parsing prose. faust's own records (rebalances, commits) come out the same way. aiokafka repeats itself
while a broker is away (a line per reconnect attempt, thousands a minute): :class:`RepeatFilter` lets the
first of each of its messages through and then one per ``window_s``, with the count it held back.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JsonFormatter(logging.Formatter):
    """Formats a :class:`logging.LogRecord` as one JSON line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created, 6),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update(getattr(record, "fields", None) or {})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


class RepeatFilter(logging.Filter):
    """Passes a record of a logger under ``prefixes`` only if the same message (its template, level and logger)
    has not passed in the last ``window_s`` seconds; the next one that passes carries ``repeated``, the number
    held back meanwhile. Records of other loggers always pass."""

    def __init__(self, prefixes: tuple[str, ...] = ("aiokafka",), window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)
        self.window_s = window_s
        self.clock = clock
        self._last: dict[tuple, tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(self.prefixes):
            return True
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        passed, held = self._last.get(key, (None, 0))
        if passed is not None and now - passed < self.window_s:
            self._last[key] = (passed, held + 1)
            return False
        self._last[key] = (now, 0)
        if held:
            record.fields = {**(getattr(record, "fields", None) or {}), "repeated": held}
        return True


def logging_config(level: str = "info", json: bool = True) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary: JSON lines (or plain text) on stderr at ``level``."""
    formatter = {"()": JsonFormatter} if json else {"format": _TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"igrec": formatter},
        "filters": {"repeats": {"()": RepeatFilter}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "igrec", "stream": "ext://sys.stderr",
                                "filters": ["repeats"]}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"aiokafka": {"level": "WARNING"}},
    }


def setup(level: str = "info", json: bool = True) -> None:
    """Configure the root logger with :func:`logging_config` (for processes that are not faust workers)."""
    import logging.config

    logging.config.dictConfig(logging_config(level, json))
