"""ASGI factory for API-only nodes (gunicorn/uvicorn): no local workers, schema upgraded before serving."""

from __future__ import annotations

from typing import Any

from media_cleaner.config import Settings, load_settings


def create_api_app(settings: Settings | None = None) -> Any:
    from media_cleaner.api.app import create_app
    from media_cleaner.jobs.migrate import upgrade

    settings = settings or load_settings()
    upgrade(settings.effective_database_url)  # idempotent, serialised by an advisory lock on PostgreSQL
    return create_app(settings, pool=None, maintenance=True)
