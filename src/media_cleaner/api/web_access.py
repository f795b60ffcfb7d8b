"""How the web routes reach the server's settings, auth and tasks (kept apart so web.py stays about the page)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.responses import JSONResponse

from media_cleaner.config import Settings, load_settings


@dataclass
class TaskFiles:
    status: str
    original: Path | None
    protected: Path | None


def settings_of(request: Request) -> Settings:
    settings = getattr(request.app.state, "settings", None)
    return settings if isinstance(settings, Settings) else load_settings()


async def task_files(request: Request, task_id: str) -> TaskFiles | JSONResponse:
    """The task's files after the same auth and user checks as `GET /task/{id}`; an error response otherwise."""
    return JSONResponse(
        {"error": {"code": "not_implemented", "message": "Previews need the task service"}}, status_code=501
    )
