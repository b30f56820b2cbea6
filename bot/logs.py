"""Logging setup: French lines (default) or JSON lines (`[log] format = "json"`) for log shippers.

The bot never logs a message body nor a patient's identity (dispatch logs an exception's type, not
its message). On top of that, what leaves through the handler is scrubbed at every level: access
tokens, and in JSON lines, which usually leave the machine, Matrix user ids are replaced by a
stable pseudonym (`@#1a2b3c4d:server`: the same person gives the same pseudonym, so lines can
still be correlated; the server part stays, it says which CPTS).
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import sys
from datetime import datetime, timezone

NOISY = ("nio", "peewee", "apscheduler", "aiosqlite", "alembic", "aiohttp.access")

_TOKEN = re.compile(r"\b(syt|syr|mat|mct)_[A-Za-z0-9_\-]{8,}")  # Synapse/MAS access and refresh tokens
_TOKEN_PARAM = re.compile(r"(access_token=|Bearer\s+)[^\s&\"']+", re.IGNORECASE)
_USER_ID = re.compile(r"@([A-Za-z0-9._=\-/+]+):([A-Za-z0-9.\-]+(?::\d+)?)")


def scrub_tokens(text: str) -> str:
    return _TOKEN_PARAM.sub(r"\1<masqué>", _TOKEN.sub("<jeton masqué>", text))


def pseudonymise(text: str) -> str:
    return _USER_ID.sub(lambda m: f"@#{hashlib.sha256(m.group(1).encode()).hexdigest()[:8]}:{m.group(2)}", text)


class TextFormatter(logging.Formatter):
    def __init__(self):
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return scrub_tokens(super().format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601), level, logger, message, and exc (traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": pseudonymise(scrub_tokens(record.getMessage())),
        }
        if record.exc_info:
            entry["exc"] = pseudonymise(scrub_tokens(self.formatException(record.exc_info)))
        return json.dumps(entry, ensure_ascii=False)


def setup_logging(verbose: bool = False, fmt: str = "text", stream=None) -> None:
    """(Re)configure the root logger; called once at start, again once the config names a format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_cercle", False)]:
        root.removeHandler(old)
    handler._cercle = True
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
