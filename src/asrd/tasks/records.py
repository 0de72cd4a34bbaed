"""A task as flat string fields (a Redis hash) and back. Audio is never part of the record:
it lives in its own key, deleted as soon as the task is done."""

from __future__ import annotations

import json
from dataclasses import asdict

from ..transcript import Segment, Transcript, Word
from .model import Task, TaskStatus

# Set when the task is submitted and never changed.
_STATIC = ("type", "language", "file_name", "callback_url", "target_model")
_TIMES = ("uploaded_at", "started_at", "finished_at", "expires_at")


def submitted_fields(task: Task) -> dict[str, str]:
    """The record of a task as it is queued."""
    return {
        "data": json.dumps({name: getattr(task, name) for name in _STATIC}),
        "uploaded_at": repr(task.uploaded_at),
    }


def result_field(task: Task) -> str:
    """What the worker learnt: transcript or error, warnings, the model and device used."""
    return json.dumps(
        {
            "transcript": asdict(task.transcript) if task.transcript is not None else None,
            "error": task.error,
            "warnings": task.warnings,
            "used_model": task.used_model,
            "used_device": task.used_device,
        }
    )


def task_from_fields(task_id: str, fields: dict[str, str]) -> Task:
    """The task a record describes (without its audio)."""
    static = json.loads(fields["data"])
    task = Task(audio=None, id=task_id, **static)
    task.status = TaskStatus(fields.get("status", "pending"))
    for name in _TIMES:
        if fields.get(name):
            setattr(task, name, float(fields[name]))
    if fields.get("result"):
        result = json.loads(fields["result"])
        task.transcript = transcript_from_dict(result["transcript"])
        task.error, task.warnings = result["error"], result["warnings"]
        task.used_model, task.used_device = result["used_model"], result["used_device"]
    return task


def transcript_from_dict(data: dict | None) -> Transcript | None:
    if data is None:
        return None
    segments = []
    for raw in data["segments"]:
        words = raw.pop("words", None)
        segment = Segment(**raw)
        segment.words = [Word(**word) for word in words] if words is not None else None
        segments.append(segment)
    return Transcript(**{**data, "segments": segments})
