"""Readiness: `GET /hc`, the seed's health check."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from .. import __version__
from ..engine import EngineState

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str
    version: str | None = None
    error: str | None = None


@router.get(
    "/hc",
    response_model=Health,
    responses={503: {"model": Health, "description": "Model still loading, or failed to load"}},
    summary="Ready check: 200 once the model is loaded and warmed up, 503 before",
)
async def health(request: Request) -> JSONResponse:
    engine = request.app.state.engine
    if engine.state is EngineState.READY:
        return JSONResponse({"status": "ok", "version": __version__})
    if engine.state is EngineState.FAILED:
        return JSONResponse({"status": "failed", "error": engine.error}, status_code=503)
    return JSONResponse({"status": "loading"}, status_code=503, headers={"Retry-After": "5"})
