"""Logging for every process: structured JSON in production, readable text for ``ferry dev``.

Context travels with ``extra={...}``: ``transfer_id``, ``chain_id``, ``route``,
``request_id`` and friends appear as JSON fields, so one transfer can be followed
across processes with a single filter. ``with logs.bind(transfer_id=...):`` adds
fields to every line logged inside the block, in this task only (a contextvar,
so concurrent jobs and requests never see each other's fields); ``extra=`` wins
over a bound field of the same name. A redaction filter replaces any registered
secret value (keys, passwords, URLs with credentials) with ``***`` before a record
is formatted, as a last line of defence behind "never log a secret".
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
_SECRETS: set[str] = set()
_BOUND: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("ferry_log_context")


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add ``fields`` (e.g. ``transfer_id``, ``request_id``) to every line logged in the block."""
    token = _BOUND.set({**_BOUND.get({}), **fields})
    try:
        yield
    finally:
        _BOUND.reset(token)


def bound() -> dict[str, Any]:
    """The fields bound in the current context."""
    return dict(_BOUND.get({}))


def _context(record: logging.LogRecord) -> dict[str, Any]:
    """Bound fields, then the record's own ``extra`` fields (which win)."""
    fields = bound()
    for key, value in record.__dict__.items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return fields


def register_secret(value: str | None) -> None:
    """Never let ``value`` reach a log line (ignored when short or empty)."""
    if value and len(value) >= 6:
        _SECRETS.add(value)


def redact(text: str) -> str:
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, "***")
    return text


class _RedactFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if _SECRETS:
            record.msg = redact(record.getMessage())
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__()
        self._process = process

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "process": self._process,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _context(record).items():
            entry[key] = value
        if record.exc_info:
            entry["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self, process: str) -> None:
        super().__init__("%(asctime)s %(levelname)-5s " + process + " %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = _context(record)
        if context:
            text += " " + " ".join(f"{k}={v}" for k, v in context.items())
        return text


def configure(process: str, *, fmt: str = "json", level: str = "INFO") -> None:
    """Install the handler on the root logger (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process) if fmt == "json" else TextFormatter(process))
    handler.addFilter(_RedactFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("httpx", "httpcore", "web3", "urllib3", "asyncio", "websockets", "pgserver"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
