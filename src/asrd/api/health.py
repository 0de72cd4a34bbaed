"""Readiness: `GET /hc`, the seed's health check."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from .. import __version__
from ..engine import Engine, EngineState

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str | None = None
    error: str | None = None


@router.get(
    "/hc",
    response_model=Health,
    responses={503: {"model": Health, "description": "Model loading at start-up, or failed"}},
    summary="Ready check: 200 while requests are accepted, 503 before the start-up load or "
    "after a failed one",
)
async def health(request: Request) -> JSONResponse:
    """`ok`: loaded. `standby`: unloaded (idle, or not loaded at start-up), loads on the next
    request, so still ready to accept. `loading`: the start-up load (503) or an on-demand one
    (200). `failed`: the model can't be loaded (503)."""
    engine: Engine = request.app.state.engine
    if engine.state is EngineState.FAILED:
        return JSONResponse({"status": "failed", "error": engine.error}, status_code=503)
    if not engine.accepting:
        return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
    status = {EngineState.READY: "ok", EngineState.LOADING: "loading"}.get(engine.state, "standby")
    return JSONResponse({"status": status, "version": __version__})


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST
    )
