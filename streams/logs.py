"""Structured logs: one JSON object per line on stderr, for the worker and the sink.

Every record carries ``ts`` (epoch seconds), ``level``, ``logger`` and ``msg``; fields passed with
``log.info("...", extra={"fields": {...}})`` are merged in, so a log shipper can index them without
parsing prose. faust's own records (rebalances, commits) come out the same way.
"""

from __future__ import annotations

import logging
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


def logging_config(level: str = "info", json: bool = True) -> dict[str, Any]:
    """A :func:`logging.config.dictConfig` dictionary: JSON lines (or plain text) on stderr at ``level``."""
    formatter = {"()": JsonFormatter} if json else {"format": _TEXT_FORMAT}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"igrec": formatter},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "igrec", "stream": "ext://sys.stderr"}},
        "root": {"level": level.upper(), "handlers": ["stderr"]},
        "loggers": {"aiokafka": {"level": "WARNING"}},
    }


def setup(level: str = "info", json: bool = True) -> None:
    """Configure the root logger with :func:`logging_config` (for processes that are not faust workers)."""
    import logging.config

    logging.config.dictConfig(logging_config(level, json))
