"""Logging: console and optional rotating files, task ids shortened in privacy mode. (The
one-line access log is written by `metrics.MetricsMiddleware`, which times every request
anyway.) Transcripts are never logged: no code path passes text to a logger.

A log line is one line whatever a client sends: every message's control characters are
escaped by the formatter (`\\n`, `\\x1b`), and request targets are logged as sent
(percent-encoded), so a path with `%0a` can't forge a line or colour a terminal."""

from __future__ import annotations

import logging
import re
from logging.handlers import TimedRotatingFileHandler
from urllib.parse import quote_from_bytes

from starlette.types import Scope

from .config import Settings

TASK_ID = re.compile(r"\b([0-9a-f]{4})[0-9a-f]{24}([0-9a-f]{4})\b")
ACCESS = logging.getLogger("asrd.access")

# C0 and C1 controls and DEL (newlines, ESC sequences), Unicode line and paragraph separators,
# and the bidi overrides that would make a line read differently than it is written.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
# Bytes kept as they are in a logged request target: printable ASCII, no space.
_TARGET_SAFE = bytes(range(0x21, 0x7F)).decode()


def escape(text: str) -> str:
    """`text` on one line: control characters written as Python escapes (`\\n`, `\\x1b`)."""
    return CONTROL.sub(lambda found: found.group().encode("unicode_escape").decode(), text)


def request_target(scope: Scope) -> str:
    """The request's path and query as the client sent them (percent-encoded, not decoded as
    `scope["path"]` is), with any byte that is not printable ASCII percent-encoded too."""
    raw = scope.get("raw_path") or scope["path"].encode("utf-8", "surrogateescape")
    query = scope.get("query_string", b"")
    return quote_from_bytes(raw + (b"?" + query if query else b""), safe=_TARGET_SAFE)


class EscapingFormatter(logging.Formatter):
    """Escapes control characters in each message (defence in depth: whatever a logged
    string holds, it can't start a new line); the traceback after it stays multi-line."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


def short_id(task_id: str) -> str:
    """`3f2a…9c1d`: enough to tell tasks apart in logs, not enough to read their results."""
    return f"{task_id[:4]}…{task_id[-4:]}" if len(task_id) > 8 else task_id


class PrivacyFilter(logging.Filter):
    """Shortens every 32-hex task id in a record, wherever it comes from."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if TASK_ID.search(message):
            record.msg, record.args = TASK_ID.sub(r"\1…\2", message), None
        return True


def log_levels(settings: Settings) -> tuple[int, int]:
    """The console's and the files' levels: LOG_LEVEL_CONSOLE and LOG_LEVEL_FILE (the second
    seed's names), each LOG_LEVEL when unset."""
    console = settings.log_level_console or settings.log_level
    file = settings.log_level_file or settings.log_level
    return logging.getLevelName(console), logging.getLevelName(file)


def setup_logging(settings: Settings) -> None:
    formatter = EscapingFormatter(settings.log_format, settings.log_date_format, style="{")
    console_level, file_level = log_levels(settings)
    console = logging.StreamHandler()
    console.setLevel(console_level)
    handlers: list[logging.Handler] = [console]
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        file = TimedRotatingFileHandler(
            settings.log_dir / settings.log_file,
            when=settings.log_rotation_when,
            interval=settings.log_rotation_interval,
            backupCount=settings.log_rotation_backup_count,
            encoding="utf-8",
        )
        file.setLevel(file_level)
        handlers.append(file)
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        if settings.log_privacy_mode:
            handler.addFilter(PrivacyFilter())
        root.addHandler(handler)
    # The root passes on what the most verbose handler wants; each handler drops the rest.
    lowest = min(handler.level for handler in handlers)
    root.setLevel(lowest)
    # faster-whisper logs every request at INFO; asrd logs what matters itself.
    verbose = lowest <= logging.DEBUG
    logging.getLogger("faster_whisper").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
