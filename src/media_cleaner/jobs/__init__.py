"""Tasks and their queue: SQLAlchemy model, the TaskStore (all state transitions) and queue backends."""

from media_cleaner.jobs.backend import BACKENDS, LocalQueueBackend, QueueBackend, open_backend, open_store
from media_cleaner.jobs.models import TERMINAL, Task, TaskStatus, iso, utcnow
from media_cleaner.jobs.store import DuplicateIdempotencyKey, Recovery, TaskStore

__all__ = [
    "BACKENDS",
    "TERMINAL",
    "DuplicateIdempotencyKey",
    "LocalQueueBackend",
    "QueueBackend",
    "Recovery",
    "Task",
    "TaskStatus",
    "TaskStore",
    "iso",
    "open_backend",
    "open_store",
    "utcnow",
]
