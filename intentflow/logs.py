"""Logging setup: plain or JSON lines, with secrets scrubbed from every record."""

from __future__ import annotations

import logging
import re
import sys
import time
from typing import Final

import orjson

__all__ = ["JsonFormatter", "RedactingFilter", "setup_logging"]

_URL_SECRET: Final = re.compile(r"(rediss?://[^:@/\s]*:)[^@\s]+@")


class RedactingFilter(logging.Filter):
    """Masks passwords in Redis URLs that reach a log message.

    >>> f = RedactingFilter()
    >>> rec = logging.LogRecord("x", 20, "", 0, "at redis://u:pw@h:1/0", None, None)
    >>> _ = f.filter(rec); rec.msg
    'at redis://u:***@h:1/0'
    """

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = _URL_SECRET.sub(r"\1***@", msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg (and exc when present)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def setup_logging(*, verbose: bool = False, json_lines: bool = False) -> None:
    """Configure the root logger once for a command-line process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    if json_lines:
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
