"""How the web routes reach the server's settings, auth and tasks (kept apart so web.py stays about the page)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request

from media_cleaner.api.auth import principal
from media_cleaner.api.context import ctx_of
from media_cleaner.api.routes import authorised_task
from media_cleaner.config import Settings


@dataclass
class TaskFiles:
    status: str
    original: Path | None  # None once the file is gone (retention cleanup)
    protected: Path | None


def settings_of(request: Request) -> Settings:
    return ctx_of(request).settings


def task_files(request: Request, task_id: str) -> TaskFiles:
    """The task's files after the same auth and ownership checks as `GET /task/{id}` (raises the API's 401/403/404)."""
    task = authorised_task(request, task_id, principal(request))
    storage = ctx_of(request).storage

    def present(area: str, name: str | None) -> Path | None:
        if not name or storage.size(area, name) is None:
            return None
        return storage.local_path(area, name)

    return TaskFiles(
        status=str(task.status),
        original=present("input", task.input_name),
        protected=present("output", task.output_name),
    )
