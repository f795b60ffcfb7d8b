"""What the routes share: settings, the task store, storage, the queue backend, and the worker pool if local."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request

from media_cleaner.config import Settings
from media_cleaner.jobs import QueueBackend, TaskStore
from media_cleaner.storage import Storage


@dataclass
class AppContext:
    settings: Settings
    store: TaskStore
    storage: Storage
    backend: QueueBackend
    configured_workers: int
    pool: Any = None  # worker.WorkerPool when this process supervises local workers
    upload_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(16))


def ctx_of(request: Request) -> AppContext:
    return request.app.state.ctx
