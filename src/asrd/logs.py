"""Logging: console and optional rotating files, task ids shortened in privacy mode. (The
one-line access log is written by `metrics.MetricsMiddleware`, which times every request
anyway.) Transcripts are never logged: no code path passes text to a logger."""

from __future__ import annotations

import logging
import re
from logging.handlers import TimedRotatingFileHandler

from .config import Settings

TASK_ID = re.compile(r"\b([0-9a-f]{4})[0-9a-f]{24}([0-9a-f]{4})\b")
ACCESS = logging.getLogger("asrd.access")


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


def setup_logging(settings: Settings) -> None:
    formatter = logging.Formatter(settings.log_format, settings.log_date_format, style="{")
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    if settings.log_dir is not None:
        settings.log_dir.mkdir(parents=True, exist_ok=True)
        handlers.append(
            TimedRotatingFileHandler(
                settings.log_dir / settings.log_file,
                when=settings.log_rotation_when,
                interval=settings.log_rotation_interval,
                backupCount=settings.log_rotation_backup_count,
                encoding="utf-8",
            )
        )
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        handler.setFormatter(formatter)
        if settings.log_privacy_mode:
            handler.addFilter(PrivacyFilter())
        root.addHandler(handler)
    root.setLevel(settings.log_level)
    # faster-whisper logs every request at INFO; asrd logs what matters itself.
    verbose = settings.log_level == "DEBUG"
    logging.getLogger("faster_whisper").setLevel(logging.DEBUG if verbose else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
