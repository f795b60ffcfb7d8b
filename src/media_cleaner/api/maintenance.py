"""Background upkeep in the API process: periodic cleanup, recovery of stale/timed-out tasks (so it also works
when workers run elsewhere), and the webhook dispatcher. Nothing here blocks request handling or the queue."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

from media_cleaner.api.context import AppContext
from media_cleaner.jobs import utcnow
from media_cleaner.jobs.webhooks import WebhookDispatcher
from media_cleaner.logs import SERVER_LOGGER

log = logging.getLogger(SERVER_LOGGER + ".maintenance")
SWEEP_EVERY_S = 5.0


def run_cleanup(ctx: AppContext, older_than: timedelta, *, any_user: bool = True, user_id: str | None = None) -> dict:
    """Delete finished tasks created before now - `older_than`, their input/output files, and old temp leftovers."""
    deleted = ctx.store.delete_older_than(utcnow() - older_than, any_user=any_user, user_id=user_id)
    freed = 0
    for task in deleted:
        freed += ctx.storage.delete("input", task.input_name) + ctx.storage.delete("output", task.output_name)
        ctx.storage.clear_work_dir(task.id)
    if any_user:
        # Temp holds live uploads and running tasks' scratch: only sweep what outlived any possible task.
        horizon = max(older_than.total_seconds(), ctx.settings.task_timeout_hours * 3600 + 3600)
        freed += ctx.storage.sweep_temp(horizon)
    if deleted:
        log.info("cleanup removed %d task(s), freed %d bytes", len(deleted), freed)
    return {"deleted_tasks": len(deleted), "freed_bytes": freed}


class Maintenance:
    def __init__(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.dispatcher = WebhookDispatcher(ctx.settings, ctx.store)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_cleanup: dict[str, Any] | None = None

    def start(self) -> None:
        self.dispatcher.start()
        self._thread = threading.Thread(target=self._loop, name="maintenance", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self.dispatcher.stop()

    def _loop(self) -> None:
        settings = self.ctx.settings
        next_cleanup = time.monotonic() + 5.0  # first pass soon after start, then every cleanup_interval_minutes
        while not self._stop.wait(SWEEP_EVERY_S):
            try:
                stale = utcnow() - timedelta(seconds=settings.heartbeat_timeout_seconds)
                recovered = self.ctx.store.recover(stale_before=stale)
                if recovered.requeued or recovered.failed:
                    log.warning("stale tasks: requeued %s, failed %s", recovered.requeued, recovered.failed)
                for task_id in self.ctx.store.expire(timedelta(hours=settings.task_timeout_hours)):
                    log.warning("task timed out", extra={"task_id": task_id})
                if time.monotonic() >= next_cleanup:
                    self.last_cleanup = run_cleanup(self.ctx, timedelta(hours=settings.retention_hours))
                    next_cleanup = time.monotonic() + settings.cleanup_interval_minutes * 60
            except Exception:
                log.exception("maintenance pass failed")
