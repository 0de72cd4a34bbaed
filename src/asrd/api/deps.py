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


def _settings(request: Request) -> Settings:
    return request.app.state.settings


def _models(request: Request) -> ModelRegistry:
    return request.app.state.models


def _audio(request: Request) -> AudioLanes:
    return request.app.state.audio


def _task_queue(request: Request) -> TaskQueue:
    return request.app.state.task_queue


def _task_worker(request: Request) -> TaskWorker:
    return request.app.state.task_worker


def _metrics(request: Request) -> Metrics:
    return request.app.state.metrics


def _shutdown(request: Request) -> ShutdownState:
    return request.app.state.shutdown


SettingsDep = Annotated[Settings, Depends(_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(_models)]
AudioDep = Annotated[AudioLanes, Depends(_audio)]
TaskQueueDep = Annotated[TaskQueue, Depends(_task_queue)]
TaskWorkerDep = Annotated[TaskWorker, Depends(_task_worker)]
MetricsDep = Annotated[Metrics, Depends(_metrics)]
ShutdownDep = Annotated[ShutdownState, Depends(_shutdown)]
