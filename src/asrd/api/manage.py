"""Model management, speaches-compatible, for admins: what is loaded (`/api/ps`), loading and
unloading it, and the models on disk (`POST`/`DELETE /v1/models/{id}`).

Listing the served models (`GET /v1/models`) is OpenAI's route, open to every client (see
`openai.py`); everything here changes the server and needs an admin (ADMIN_API_KEYS).
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse

from ..errors import ApiError
from ..models import ModelNotAvailable, remove_cached, resolve_model
from ..registry import ModelNotServed, ModelRegistry
from ..slot import ModelInUse, ModelNotReady, ModelSlot
from .admin import require_admin
from .common import not_ready
from .deps import ModelsDep, SettingsDep
from .tasks import model_status

router = APIRouter(tags=["model management"], dependencies=[Depends(require_admin)])

_ADMIN = {
    401: {"description": "No admin credentials"},
    403: {"description": "Credentials that are not an admin's"},
}
_SERVED = {**_ADMIN, 404: {"description": "Not a served model"}}


def _slot(models: ModelRegistry, model_id: str) -> ModelSlot:
    try:
        return models.get(model_id.rstrip("/"))
    except ModelNotServed as exc:
        raise ApiError(404, "model_not_found", str(exc), param="model") from None


@router.get("/api/ps", responses=_ADMIN, summary="The models in memory now")
async def loaded_models(models: ModelsDep) -> dict:
    """`models`: their ids (speaches' shape); `data`: each one's state, size and TTL."""
    loaded = models.loaded
    return {
        "models": [slot.public_id for slot in loaded],
        "data": [model_status(slot) for slot in loaded],
    }


@router.post(
    "/api/ps/{model_id:path}",
    responses={**_SERVED, 503: {"description": "It failed to load, or no room (all busy)"}},
    summary="Load a served model now (it then unloads on its TTL)",
)
async def load_model(models: ModelsDep, model_id: str) -> JSONResponse:
    slot = _slot(models, model_id)
    was_loaded = slot.loaded
    try:
        await slot.load()
    except ModelNotReady as exc:
        raise not_ready(exc) from None
    status = "already_loaded" if was_loaded else "loaded"
    return JSONResponse({"model": slot.public_id, "status": status})


@router.delete(
    "/api/ps/{model_id:path}",
    responses={**_SERVED, 409: {"description": "The model has work (or is loading)"}},
    summary="Unload a served model now (the next request for it loads it again)",
)
async def unload_model(models: ModelsDep, model_id: str) -> JSONResponse:
    slot = _slot(models, model_id)
    if not slot.loaded and not slot.busy:
        return JSONResponse({"model": slot.public_id, "status": "not_loaded"})
    try:
        await models.unload(slot)
    except ModelInUse as exc:
        raise ApiError(409, "model_in_use", f"{exc}: try again when its work is done") from None
    return JSONResponse({"model": slot.public_id, "status": "unloaded"})


@router.post(
    "/v1/models/{model_id:path}",
    status_code=201,
    responses={
        **_ADMIN,
        400: {"description": "Not a model name asrd can download"},
        502: {"description": "The download failed"},
    },
    summary="Download a model into CACHE_DIR (for MODELS, now or later)",
)
async def download_model(settings: SettingsDep, model_id: str) -> JSONResponse:
    """Takes the names MODEL_ID takes; a model already on disk (in CACHE_DIR, or shipped in
    an installed package) is not downloaded again. The hub's own timeouts bound it."""
    model_id = model_id.rstrip("/")
    try:
        await asyncio.to_thread(
            resolve_model, model_id, settings.cache_dir, baked_dir=settings.baked_models_dir
        )
    except ModelNotAvailable as exc:
        status, code = (
            (400, "invalid_model") if "unknown model" in str(exc) else (502, "download_failed")
        )
        raise ApiError(status, code, str(exc), param="model") from None
    return JSONResponse({"model": model_id, "status": "downloaded"}, status_code=201)


@router.delete(
    "/v1/models/{model_id:path}",
    responses={
        **_ADMIN,
        404: {"description": "Not in CACHE_DIR"},
        409: {"description": "Loaded now (unload it first), or not asrd's to delete"},
    },
    summary="Delete a downloaded model from CACHE_DIR",
)
async def delete_model(models: ModelsDep, settings: SettingsDep, model_id: str) -> JSONResponse:
    model_id = model_id.rstrip("/")
    try:
        slot = models.get(model_id)
    except ModelNotServed:
        slot = None
    if slot is not None and (slot.loaded or slot.busy):
        raise ApiError(
            409, "model_in_use", f"the model {slot.public_id} is loaded: unload it first "
            "(DELETE /api/ps/{id})",
        )  # fmt: skip
    try:
        removed = await asyncio.to_thread(remove_cached, model_id, settings.cache_dir)
    except ValueError as exc:
        raise ApiError(409, "not_deletable", str(exc), param="model") from None
    if not removed:
        raise ApiError(404, "model_not_found", f"{model_id!r} is not in CACHE_DIR", param="model")
    return JSONResponse({"model": model_id, "status": "deleted"})
