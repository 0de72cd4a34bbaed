"""What routes get from the app, as typed FastAPI dependencies (no untyped `app.state`
lookups in the routes); HTTP and WebSocket routes alike."""

from __future__ import annotations

from concurrent.futures import Executor
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from ..audio_lanes import AudioLanes
from ..config import Settings
from ..metrics import Metrics
from ..realtime.ticker import PartialTicker
from ..registry import ModelRegistry
from ..shutdown import ShutdownState
from ..tasks import TaskQueue, TaskWorker


def get_settings(request: HTTPConnection) -> Settings:
    return request.app.state.settings


def get_models(request: HTTPConnection) -> ModelRegistry:
    return request.app.state.models


def get_audio(request: HTTPConnection) -> AudioLanes:
    return request.app.state.audio


def get_task_queue(request: HTTPConnection) -> TaskQueue:
    return request.app.state.task_queue


def get_task_worker(request: HTTPConnection) -> TaskWorker | None:
    """None on an API replica (ROLE=api): the workers run elsewhere."""
    return request.app.state.task_worker


def get_metrics(request: HTTPConnection) -> Metrics:
    return request.app.state.metrics


def get_shutdown(request: HTTPConnection) -> ShutdownState:
    return request.app.state.shutdown


def get_realtime_thread(request: HTTPConnection) -> Executor:
    """Live sessions' audio conversion and speech scoring thread."""
    return request.app.state.realtime_executor


def get_partial_ticker(request: HTTPConnection) -> PartialTicker:
    """The clock live sessions' partial re-decodes start on, together."""
    return request.app.state.partial_ticker


SettingsDep = Annotated[Settings, Depends(get_settings)]
ModelsDep = Annotated[ModelRegistry, Depends(get_models)]
AudioDep = Annotated[AudioLanes, Depends(get_audio)]
TaskQueueDep = Annotated[TaskQueue, Depends(get_task_queue)]
TaskWorkerDep = Annotated[TaskWorker | None, Depends(get_task_worker)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
ShutdownDep = Annotated[ShutdownState, Depends(get_shutdown)]
RealtimeThreadDep = Annotated[Executor, Depends(get_realtime_thread)]
PartialTickerDep = Annotated[PartialTicker, Depends(get_partial_ticker)]
