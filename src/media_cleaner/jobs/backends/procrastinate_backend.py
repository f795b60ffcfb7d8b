"""Procrastinate (PostgreSQL) queue backend: the same task rows, job body, states, progress and cancel as the local
executor; Procrastinate only carries "run task X" to whichever worker node is free.

- API side (`ProcrastinateBackend`): `enqueue` defers one job per task (lock = queueing lock = task id, so one task
  never runs twice at once nor sits twice in the queue); `cancelled` asks Procrastinate to abort the running job.
- Worker side (`process_task`): claims the task row for this worker slot and runs `worker.runner.run_task` (claim ->
  engine.protect -> store report -> webhooks outbox), with `context.should_abort()` feeding the CancelToken.
- Worker upkeep (`Upkeep`): retries jobs of stalled (killed) workers from Procrastinate's heartbeats, re-defers
  pending tasks that lost their job, fails tasks past `task_timeout_hours`, keeps worker rows alive for /stats.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import procrastinate
from procrastinate import exceptions as pexc
from procrastinate.job_context import AbortReason, JobContext
from sqlalchemy import text
from sqlalchemy.engine import make_url

from media_cleaner.config import Settings
from media_cleaner.jobs.backend import QueueBackend
from media_cleaner.jobs.models import Task, TaskStatus, utcnow
from media_cleaner.jobs.store import TaskStore
from media_cleaner.logs import QUEUE_LOGGER

log = logging.getLogger(QUEUE_LOGGER + ".procrastinate")
QUEUE = "media"
TASK_NAME = "media_cleaner.process_task"
ORPHAN_SWEEP_LOCK = 0x6D635F6F7270  # pg advisory lock key of the orphan sweep ("mc_orp")


def conninfo(database_url: str) -> str:
    """libpq URL for psycopg from a SQLAlchemy URL (`postgresql+psycopg://` -> `postgresql://`)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


def is_postgres(database_url: str) -> bool:
    return make_url(database_url).get_backend_name() == "postgresql"


def build_app(settings: Settings, *, pool_max: int = 4) -> procrastinate.App:
    """A Procrastinate App on the settings' database with the task registered (opened by the caller)."""
    connector = procrastinate.PsycopgConnector(
        conninfo=conninfo(settings.effective_database_url), min_size=1, max_size=pool_max
    )
    app = procrastinate.App(connector=connector)
    app.task(name=TASK_NAME, queue=QUEUE, pass_context=True)(process_task)
    return app


def defer(app: procrastinate.App, task_id: str) -> int | None:
    """Queue one job for `task_id`; None when a job for it is already waiting (the queueing lock holds)."""
    try:
        return app.configure_task(TASK_NAME, lock=task_id, queueing_lock=task_id).defer(task_id=task_id)
    except pexc.AlreadyEnqueued:
        return None


def live_jobs(app: procrastinate.App, task_id: str) -> list[Any]:
    return [j for j in app.job_manager.list_jobs(lock=task_id) if j.status in ("todo", "doing")]


class ProcrastinateBackend(QueueBackend):
    """What the API nodes use: defer on upload, abort on cancel. Task state stays in the tasks table."""

    name = "procrastinate"

    def __init__(self, settings: Settings, store: TaskStore) -> None:
        super().__init__(settings, store)
        self.app = build_app(settings, pool_max=4)
        self._opened = False
        self._lock = threading.Lock()

    def _open(self) -> procrastinate.App:
        with self._lock:
            if not self._opened:
                self.app.open()
                self._opened = True
        return self.app

    def enqueue(self, task: Task) -> None:
        job_id = defer(self._open(), task.id)
        log.info("queued as procrastinate job %s", job_id, extra={"task_id": task.id})

    def cancelled(self, task: Task) -> None:
        # The row is already `cancelled`, so the worker's DB probe stops the job anyway; the abort request makes it
        # visible to Procrastinate too (status `aborted`, and `should_abort()` answers without a DB read).
        app = self._open()
        for job in live_jobs(app, task.id):
            app.job_manager.cancel_job_by_id(job.id, abort=True)

    def close(self) -> None:
        with self._lock:
            if self._opened:
                self.app.close()
                self._opened = False


# ------------------------------------------------------------------------------------------------ worker side
@dataclass
class WorkerRuntime:
    """What every job in one worker process shares: models loaded once, DB, storage, and the slot ids that
    show up in /stats as workers (one per unit of concurrency)."""

    settings: Settings
    store: TaskStore
    storage: Any
    protectors: Any
    app: procrastinate.App
    slot_ids: list[str]
    stop: threading.Event = field(default_factory=threading.Event)
    _free: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._free = list(self.slot_ids)

    @contextmanager
    def slot(self) -> Iterator[str]:
        with self._lock:
            slot_id = self._free.pop(0)
        try:
            yield slot_id
        finally:
            with self._lock:
                self._free.append(slot_id)


class JobStop:
    """The `stop` event `run_task` watches: the process is stopping, or Procrastinate asked this job to abort."""

    def __init__(self, process_stop: threading.Event, context: JobContext) -> None:
        self.process_stop, self.context = process_stop, context

    def is_set(self) -> bool:
        return self.process_stop.is_set() or self.context.should_abort()

    def wait(self, timeout: float | None = None) -> bool:
        return self.process_stop.wait(timeout)


def acquire(rt: WorkerRuntime, task_id: str, worker_id: str) -> Task | None:
    """Claim the row this job is about. A row still `processing` under a silent worker (killed mid-task) goes back
    through the store's recovery (pending, or failed after max_attempts) first. A row under a live worker (a local
    executor polling the same database, or a duplicate job) is left to it: if that worker dies, recovery makes the
    row pending again and the upkeep re-defers it. None: nothing to run."""
    stale_after = timedelta(seconds=rt.settings.heartbeat_timeout_seconds)
    # A retried job of a killed worker can arrive a little before the row's own heartbeat goes stale (the two
    # heartbeats tick independently): wait up to one timeout for it before calling the owner alive.
    patience = time.monotonic() + rt.settings.heartbeat_timeout_seconds
    while time.monotonic() < patience + 60:  # bound even a row that keeps changing under us
        task = rt.store.get(task_id)
        if task is None or task.terminal:
            return None
        if task.status == TaskStatus.PENDING:
            claimed = rt.store.claim_task(task_id, worker_id)
            if claimed is not None:
                return claimed
            continue  # someone else moved it meanwhile: look again
        if task.heartbeat_at is None or task.heartbeat_at < utcnow() - stale_after:
            recovered = rt.store.recover(stale_before=utcnow() - stale_after)
            log.warning("took over from silent worker %s: %s", task.worker_id, recovered, extra={"task_id": task_id})
            continue
        if time.monotonic() > patience or rt.stop.wait(0.5):
            log.info("task is running on live worker %s; job skipped", task.worker_id, extra={"task_id": task_id})
            return None
    return None


def process_task(context: JobContext, task_id: str) -> str:
    """The Procrastinate job: one task through `worker.runner.run_task`, the same body the local workers run."""
    from media_cleaner.worker.runner import WorkerContext, run_task

    rt: WorkerRuntime = context.additional_context["runtime"]
    with rt.slot() as worker_id:
        task = acquire(rt, task_id, worker_id)
        if task is None:
            return "skipped"
        wctx = WorkerContext(rt.settings, rt.store, rt.storage, worker_id, rt.protectors, JobStop(rt.stop, context))
        outcome = run_task(wctx, task)
        if outcome == "released":  # stopped without a user's cancel: the task went back to pending
            if context.abort_reason() == AbortReason.USER_REQUEST:
                rt.store.cancel(task_id)
                outcome = "cancelled"
            else:
                defer(rt.app, task_id)  # a fresh job, picked up by another worker (or this one after restart)
        if outcome == "cancelled" and context.should_abort():
            raise pexc.JobAborted(f"task {task_id} cancelled")
        return outcome


class Upkeep:
    """Periodic chores of a worker node; every statement is conditional, so any number of nodes may run them."""

    def __init__(self, rt: WorkerRuntime, worker_app: procrastinate.App, interval_s: float = 2.0) -> None:
        """`worker_app` is the async-opened app of the worker loop (its pool lives on that event loop)."""
        self.rt, self.worker_app, self.interval_s = rt, worker_app, interval_s
        self._next_prune = time.monotonic() + 60.0

    async def retry_stalled(self) -> list[int]:
        """Jobs whose worker stopped sending heartbeats (kill -9, lost node) go back to `todo`."""
        manager = self.worker_app.job_manager
        retried = []
        stalled = await manager.get_stalled_jobs(
            queue=QUEUE, seconds_since_heartbeat=self.rt.settings.heartbeat_timeout_seconds
        )
        for job in stalled:
            try:
                await manager.retry_job(job)
                retried.append(job.id)
            except Exception:  # another node retried it first
                log.debug("stalled job %s already handled", job.id)
        if retried:
            log.warning("retried jobs of stalled workers: %s", retried)
        return retried

    async def prune_jobs(self) -> None:
        """Finished job rows older than the task retention go, like the tasks they ran (at most once an interval)."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self.rt.settings.cleanup_interval_minutes * 60
        await self.worker_app.job_manager.delete_old_jobs(
            nb_hours=max(1, int(self.rt.settings.retention_hours)),
            queue=QUEUE,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )

    def redefer_orphans(self, min_age_s: float = 5.0) -> list[str]:
        """Pending tasks without a waiting or running job (an API node died between insert and defer)."""
        cutoff = utcnow() - timedelta(seconds=min_age_s)
        with self.rt.store.engine.begin() as conn:
            # One sweep at a time across nodes, held until its jobs are deferred: two nodes that both saw the row
            # without a job would each defer one (the queueing lock only refuses a second job while the first still
            # waits, and a quick task's first job may already be running or done; seen in CI as two jobs).
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ORPHAN_SWEEP_LOCK})
            ids = (
                conn.execute(
                    text(
                        "SELECT t.id FROM tasks t WHERE t.status = 'pending' AND t.created_at < :cutoff "
                        "AND NOT EXISTS (SELECT 1 FROM procrastinate_jobs j WHERE j.lock = t.id "
                        "AND j.status IN ('todo', 'doing'))"
                    ),
                    {"cutoff": cutoff},
                )
                .scalars()
                .all()
            )
            requeued = [task_id for task_id in ids if defer(self.rt.app, task_id) is not None]
        if requeued:
            log.warning("re-queued pending tasks that had no job: %s", requeued)
        return requeued

    def sync_chores(self) -> None:
        for slot_id in self.rt.slot_ids:
            self.rt.store.worker_heartbeat(slot_id)
        for task_id in self.rt.store.expire(timedelta(hours=self.rt.settings.task_timeout_hours)):
            log.warning("task timed out", extra={"task_id": task_id})
        self.redefer_orphans()

    async def run(self) -> None:
        import asyncio

        while not self.rt.stop.is_set():
            for chore in (self.retry_stalled, lambda: asyncio.to_thread(self.sync_chores), self.prune_jobs):
                try:
                    await chore()
                except Exception:  # one failing chore must not starve the others
                    log.exception("worker upkeep chore failed")
            await asyncio.sleep(self.interval_s)


def current_job_states(store: TaskStore, task_id: str) -> list[str]:
    """Procrastinate job statuses for a task, oldest first (tests and diagnostics)."""
    with store.engine.connect() as conn:
        return list(
            conn.execute(
                text("SELECT status::text FROM procrastinate_jobs WHERE lock = :t ORDER BY id"), {"t": task_id}
            ).scalars()
        )


__all__ = [
    "QUEUE",
    "TASK_NAME",
    "ProcrastinateBackend",
    "Upkeep",
    "WorkerRuntime",
    "build_app",
    "conninfo",
    "current_job_states",
    "defer",
    "is_postgres",
    "process_task",
]
