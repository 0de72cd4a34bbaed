"""The application factory."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI

from . import __version__
from .api import asr, health, openai
from .config import Settings, load_settings
from .engine import Engine, EngineState
from .errors import install_error_handlers
from .limits import BodySizeLimitMiddleware

log = logging.getLogger(__name__)

# Room for multipart framing and form fields around an upload of exactly MAX_UPLOAD_MB.
BODY_OVERHEAD_BYTES = 1024 * 1024


def create_app(
    settings: Settings | None = None,
    *,
    on_load_failure: Callable[[str], None] | None = None,
) -> FastAPI:
    """Build the app. The model loads in the background after start-up; `/hc` says when it's
    ready. `on_load_failure` is called with the reason if it can't load (the CLI exits then)."""
    settings = settings or load_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = Engine(settings)
        app.state.engine = engine

        async def load() -> None:
            await engine.start()
            if engine.state is EngineState.FAILED and on_load_failure:
                on_load_failure(engine.error or "unknown error")

        loader = asyncio.create_task(load())
        try:
            yield
        finally:
            loader.cancel()
            engine.close()

    app = FastAPI(
        title="asrd",
        version=__version__,
        summary="Whisper speech recognition server",
        lifespan=lifespan,
    )
    app.state.settings = settings
    install_error_handlers(app)
    app.add_middleware(
        BodySizeLimitMiddleware, max_bytes=settings.max_upload_bytes + BODY_OVERHEAD_BYTES
    )
    app.include_router(health.router)
    app.include_router(asr.router)
    app.include_router(openai.router)
    return app
