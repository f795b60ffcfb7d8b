"""Local workers: spawned processes that load the protectors once and run claimed tasks through the engine."""

from media_cleaner.worker.pool import WorkerPool
from media_cleaner.worker.runner import WorkerContext, run_task

__all__ = ["WorkerContext", "WorkerPool", "run_task"]
