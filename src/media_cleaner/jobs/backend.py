"""Queue backends. The task row is always the truth; a backend only decides how pending work reaches workers.

`local`: workers on this machine poll the tasks table (SQLite WAL by default) and claim rows atomically.
Another backend (e.g. Procrastinate on PostgreSQL) implements the same three hooks and registers in `BACKENDS`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

from media_cleaner.config import Settings
from media_cleaner.jobs.models import Task
from media_cleaner.jobs.store import TaskStore


class QueueBackend(ABC):
    name: str = "abstract"

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        self.settings = settings
        self.store = store

    @abstractmethod
    def enqueue(self, task: Task) -> None:
        """Make a freshly created pending task runnable."""

    def cancelled(self, task: Task) -> None:  # noqa: B027 - optional hook
        """Called after the store marked `task` cancelled; running workers also see it through their probe."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class LocalQueueBackend(QueueBackend):
    """Nothing to push: local workers poll `claim()`; the pending row itself is the queue entry."""

    name = "local"

    def enqueue(self, task: Task) -> None:
        return None


def _procrastinate(settings: Settings, store: TaskStore) -> QueueBackend:
    from media_cleaner.jobs.backends.procrastinate_backend import ProcrastinateBackend  # psycopg only when used

    return ProcrastinateBackend(settings, store)


BACKENDS: dict[str, Callable[[Settings, TaskStore], QueueBackend]] = {
    "local": LocalQueueBackend,
    "procrastinate": _procrastinate,
}


def backend_name(settings: Settings) -> str:
    """The configured backend; `auto` picks procrastinate for PostgreSQL, local otherwise."""
    name = getattr(settings, "queue_backend", "auto") or "auto"
    if name == "auto":
        postgres = settings.effective_database_url.startswith(("postgresql", "postgres:"))
        name = "procrastinate" if postgres else "local"
    return name


def open_store(settings: Settings) -> TaskStore:
    return TaskStore(settings.effective_database_url, max_attempts=settings.max_attempts)


def open_backend(settings: Settings, store: TaskStore) -> QueueBackend:
    name = backend_name(settings)
    if name not in BACKENDS:
        raise ValueError(f"unknown queue_backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    return BACKENDS[name](settings, store)
