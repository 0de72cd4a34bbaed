"""What routes get from the app, as typed FastAPI dependencies (no untyped `app.state`
lookups in the routes)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ..audio_lanes import AudioLanes
from ..config import Settings
from ..metrics import Metrics
from ..registry import ModelRegistry
from ..shutdown import ShutdownState
from ..tasks import TaskQueue, TaskWorker


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_models(request: Request) -> ModelRegistry:
    return request.app.state.models


def get_audio(request: Request) -> AudioLanes:
    return request.app.state.audio


def get_task_queue(request: Request) -> TaskQueue:
    return request.app.state.task_queue


def get_task_worker(request: Request) -> TaskWorker | None:
    """None on an API replica (ROLE=api): the workers run elsewhere."""
    return request.app.state.task_worker


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def get_shutdown(request: Request) -> ShutdownState:
    return request.app.state.shutdown


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
AudioDep = Annotated[AudioLanes, Depends(get_audio)]
TaskQueueDep = Annotated[TaskQueue, Depends(get_task_queue)]
TaskWorkerDep = Annotated[TaskWorker | None, Depends(get_task_worker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ShutdownDep = Annotated[ShutdownState, Depends(get_shutdown)]
