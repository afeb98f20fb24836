"""Logging for the long-running commands: text on a terminal, else one JSON object per line.

A JSON line holds ``ts`` (UTC ISO), ``level``, ``logger``, ``msg`` and the
record's extra fields (``log.info("...", extra={"seq": 5})``).  Every written
line (message, extra fields, exception text) passes a scrubber that replaces the password of any ``mongodb://`` URI and
each configured secret with ``***``; walkit itself never logs document
contents (events are logged by seq, namespace and operation only).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = ["setup_logging", "JsonFormatter", "Scrubber"]

_URI_PASSWORD = re.compile(r"(mongodb(?:\+srv)?://[^:/@\s]+:)[^@\s]+@")
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class Scrubber(logging.Filter):
    """Replaces URI passwords and the given secrets in every record's message."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s and len(s) >= 4]

    def scrub(self, text: str) -> str:
        text = _URI_PASSWORD.sub(r"\1***@", text)
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = self.scrub(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info and record.exc_info[1] is not None:
            out["error"] = f"{type(record.exc_info[1]).__name__}: {record.exc_info[1]}"
        return json.dumps(out, default=str)


class _ScrubbingHandler(logging.StreamHandler):
    """Scrubs the whole formatted line: the message, extra fields, exception text."""

    def __init__(self, stream: TextIO, scrubber: Scrubber) -> None:
        super().__init__(stream)
        self.scrubber = scrubber

    def format(self, record: logging.LogRecord) -> str:
        return self.scrubber.scrub(super().format(record))


def setup_logging(fmt: str = "auto", level: str = "info", secrets: Iterable[str] = (), stream: TextIO | None = None) -> logging.Handler:
    """Route the ``walkit`` loggers (at ``level``) and the root logger (other libraries, at
    the root's level) to ``stream`` (default stderr); returns the handler.

    ``fmt``: ``json``, ``text`` or ``auto`` (text when ``stream`` is a terminal).
    Replaces a handler an earlier call installed, so it can be called again.
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    scrubber = Scrubber(secrets)
    handler = _ScrubbingHandler(stream, scrubber)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(scrubber)
    handler.set_name("walkit")
    ours = logging.getLogger("walkit")
    for old in [h for h in ours.handlers if h.get_name() == "walkit"]:
        ours.removeHandler(old)
    ours.addHandler(handler)
    ours.setLevel(level.upper())
    ours.propagate = False
    logging.getLogger().handlers[:] = [handler]  # other libraries' warnings (uvicorn, pymongo) in the same form
    return handler
