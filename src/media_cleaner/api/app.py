"""`create_app(settings) -> FastAPI`: the REST API (+ the web page router when present). Never imports torch."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request, Response

from media_cleaner import __version__
from media_cleaner.api.context import AppContext
from media_cleaner.api.errors import install_error_handlers
from media_cleaner.api.maintenance import Maintenance
from media_cleaner.api.metrics import Metrics
from media_cleaner.api.routes import router
from media_cleaner.config import Settings, load_settings
from media_cleaner.jobs import open_backend, open_store
from media_cleaner.logs import SERVER_LOGGER, configure_logging
from media_cleaner.storage import open_storage

log = logging.getLogger(SERVER_LOGGER)


def create_app(
    settings: Settings | None = None,
    *,
    pool: Any = None,
    configured_workers: int | None = None,
    maintenance: bool = True,
) -> FastAPI:
    """Build the app. `pool` (a started `WorkerPool`) is stopped with the app; `maintenance` runs the background
    upkeep (webhooks, stale-task recovery, periodic cleanup) in this process."""
    settings = settings or load_settings()
    for area in ("input", "output", "temp", "log", "queue"):
        settings.path(area).mkdir(parents=True, exist_ok=True)  # the spec's directories, created automatically
    configure_logging(settings, server=True, queue=False)
    store = open_store(settings)
    if configured_workers is None:
        configured_workers = pool.size if pool is not None else settings.max_concurrent_tasks
    ctx = AppContext(
        settings=settings,
        store=store,
        storage=open_storage(settings),
        backend=open_backend(settings, store),
        configured_workers=configured_workers,
        pool=pool,
    )
    upkeep = Maintenance(ctx) if maintenance else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        ctx.upload_slots = asyncio.Semaphore(settings.max_concurrent_uploads)  # bound to the serving loop
        if upkeep:
            upkeep.start()
        log.info("API up (version %s, database %s)", __version__, store.engine.url.render_as_string())
        try:
            yield
        finally:
            if upkeep:
                upkeep.stop()
            if pool is not None:
                pool.stop()
            ctx.backend.close()
            log.info("API stopped")

    app = FastAPI(
        title="Media Cleaner",
        version=__version__,
        summary="Adds imperceptible perturbations to videos so face detectors and speech recognisers fail.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.ctx = ctx
    app.state.metrics = metrics = Metrics(ctx)
    app.state.maintenance = upkeep
    install_error_handlers(app)
    app.include_router(router)
    _include_web(app)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Any) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(request.method, path, str(response.status_code)).inc()
        metrics.latency.labels(path).observe(time.perf_counter() - started)
        return response

    return app


def _include_web(app: FastAPI) -> None:
    """The web page lives in `api/web.py` (its own engineer); include it when it is there."""
    try:
        web = importlib.import_module("media_cleaner.api.web")
    except ModuleNotFoundError as exc:
        if exc.name == "media_cleaner.api.web":
            return
        raise
    web_router = getattr(web, "router", None)
    if web_router is not None:
        app.include_router(web_router)
