"""A task: one uploaded file to transcribe or translate, and what became of it."""

from __future__ import annotations

import enum
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from ..transcript import Transcript


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    FINISHED = "finished"
    FAILED = "failed"


def new_task_id() -> str:
    return secrets.token_hex(16)  # unguessable: the id is the capability to read the result


MAX_FILE_NAME = 255


def clean_file_name(name: str | None) -> str | None:
    """A client's file name as it is kept, shown and used for downloads: no control, format
    (bidi overrides) or line-separator characters, no surrounding blanks, at most 255
    characters; None when nothing is left."""
    if name is None:
        return None
    kept = "".join(c if c.isprintable() else "" for c in name).strip()
    return kept[:MAX_FILE_NAME] or None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")


@dataclass
class Task:
    type: Literal["transcribe", "translate"]
    audio: bytes | None  # the upload, in memory only; dropped as soon as it is decoded
    language: str | None = None
    file_name: str | None = None
    callback_url: str | None = None
    id: str = field(default_factory=new_task_id)
    status: TaskStatus = TaskStatus.PENDING
    uploaded_at: float = field(default_factory=time.time)
    started_at: float | None = None
    finished_at: float | None = None
    expires_at: float | None = None
    transcript: Transcript | None = None
    error: dict | None = None
    cancelled: bool = False
    warnings: list[str] = field(default_factory=list)  # audio that could not be decoded
    target_model: str | None = None  # the model that was to run it, when it was submitted
    used_model: str | None = None  # the model that did run it, and on which device
    used_device: str | None = None  # `cuda` or `cpu`

    def __post_init__(self) -> None:
        self.file_name = clean_file_name(self.file_name)

    @property
    def size(self) -> int:
        return len(self.audio) if self.audio else 0

    @property
    def done(self) -> bool:
        return self.status in (TaskStatus.FINISHED, TaskStatus.FAILED)

    def to_json(self, position: int | None) -> dict:
        """The task as the status routes answer it: asrd's fields (`result` with segments,
        `error`, `warnings`, `expires_at`, ...) and, beside them, the second seed's names for
        what its clients read (`transcript`, `source_language`, `time_processing_finished`,
        `target_model_size`, `used_model_size`, `used_device`), which it fills only once the
        task is finished."""
        result = None
        if self.transcript is not None:
            result = {
                "text": self.transcript.text,
                "segments": [
                    {"start": s.start, "end": s.end, "text": s.text.strip()}
                    for s in self.transcript.segments
                ],
                "language": self.transcript.language,
                "duration": round(self.transcript.duration, 3),
            }
        processing = None
        if self.started_at is not None and self.finished_at is not None:
            processing = round(self.finished_at - self.started_at, 3)
        finished = self.status is TaskStatus.FINISHED and result is not None
        return {
            "task_id": self.id,
            "task_type": self.type,
            "status": str(self.status),
            "position_in_queue": position,
            "file_name": self.file_name,
            "language": self.language,
            "time_uploaded": _iso(self.uploaded_at),
            "time_started": _iso(self.started_at),
            "time_finished": _iso(self.finished_at),
            "processing_duration": processing,
            "result": result,
            "error": self.error,
            "warnings": self.warnings,
            "expires_at": _iso(self.expires_at),
            # The second seed's fields.
            "transcript": result["text"] if finished else None,
            "source_language": result["language"] if finished else None,
            "time_processing_finished": _iso(self.finished_at) if finished else None,
            "target_model_size": self.target_model,
            "used_model_size": self.used_model if finished else None,
            "used_device": _seed_device(self.used_device) if finished else None,
        }


def _seed_device(device: str | None) -> str | None:
    """The seed's word for a device: `gpu` or `cpu`."""
    if device is None:
        return None
    return "gpu" if device == "cuda" else device
