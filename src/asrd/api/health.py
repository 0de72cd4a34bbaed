"""Readiness: `GET /hc`, the seed's health check."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from .. import __version__
from ..slot import ModelState
from .deps import MetricsDep, ModelsDep, SettingsDep, TaskQueueDep

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str | None = None
    error: str | None = None


@router.get(
    "/hc",
    response_model=Health,
    responses={
        503: {
            "model": Health,
            "description": "Model loading at start-up, or failed; or (QUEUE_BACKEND=redis) "
            "Redis unreachable",
        }
    },
    summary="Ready check: 200 while requests are accepted, 503 before the start-up load or "
    "after a failed one, or while the task queue's Redis is unreachable",
)
async def health(models: ModelsDep, queue: TaskQueueDep, settings: SettingsDep) -> JSONResponse:
    """The default model's (MODEL_ID) state: `ok`: loaded. `standby`: unloaded (idle, or not
    loaded at start-up), loads on the next request, so still ready to accept. `loading`: the
    start-up load (503) or an on-demand one (200). `failed`: it can't be loaded (503). The
    other models (MODELS) load on demand and don't change it. With QUEUE_BACKEND=redis,
    `queue_unavailable` (503) while Redis can't be reached: `error` says why."""
    if queue.shared:
        problem = await queue.health()
        if problem is not None:
            return JSONResponse(
                {"status": "queue_unavailable", "error": problem},
                status_code=503,
                headers={"Retry-After": "5"},
            )
    default = models.default
    if settings.role == "api":  # no model of its own to wait for
        return JSONResponse({"status": "ok", "version": __version__})
    if default.state is ModelState.FAILED:
        return JSONResponse({"status": "failed", "error": default.error}, status_code=503)
    if not default.accepting:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
    status = {ModelState.READY: "ok", ModelState.LOADING: "loading"}.get(default.state, "standby")
    return JSONResponse({"status": status, "version": __version__})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
