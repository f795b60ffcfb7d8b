"""The Procrastinate backend's pieces, in-process on a real PostgreSQL (no worker processes): defer once per task,
cancel, claim/takeover rules, orphan re-defer, pruning of finished jobs."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text, update

from media_cleaner.config import Settings
from media_cleaner.jobs.backends.procrastinate_backend import (
    ProcrastinateBackend,
    Upkeep,
    WorkerRuntime,
    acquire,
    build_app,
    current_job_states,
)
from media_cleaner.jobs.migrate import upgrade
from media_cleaner.jobs.models import Task, TaskStatus, utcnow
from media_cleaner.jobs.store import TaskStore
from pg import PgCluster


@pytest.fixture
def env(postgres: PgCluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    url = postgres.create_database(f"pb_{request.node.name[:40].lower()}")
    upgrade(url)
    settings = Settings(base_dir=tmp_path, database_url=url, heartbeat_timeout_seconds=1.0)
    store = TaskStore(url)
    backend = ProcrastinateBackend(settings, store)
    sync_app = build_app(settings).open()
    rt = WorkerRuntime(settings, store, None, None, sync_app, ["node:1:0", "node:2:0"])
    yield {"settings": settings, "store": store, "backend": backend, "rt": rt, "url": url}
    rt.stop.set()
    sync_app.close()
    backend.close()
    store.engine.dispose()


def new_task(store: TaskStore, task_id: str) -> Task:
    return store.create(
        id=task_id,
        original_filename="a.mp4",
        input_name=f"{task_id}_a.mp4",
        output_name=f"{task_id}_a_p.mp4",
        download_name="a_protected.mp4",
        input_size_bytes=10,
        epsilon=0.1,
        audio_level="weak",
    )


def test_enqueue_defers_one_job_per_task_and_cancel_cancels_it(env: dict[str, Any]) -> None:
    store, backend = env["store"], env["backend"]
    task = new_task(store, "t_enqueue")
    backend.enqueue(task)
    backend.enqueue(task)  # e.g. a retried request: the queueing lock keeps one waiting job
    assert current_job_states(store, task.id) == ["todo"]
    cancelled = store.cancel(task.id)
    assert cancelled is not None
    backend.cancelled(cancelled)
    assert current_job_states(store, task.id) == ["cancelled"]


def test_acquire_claims_pending_and_takes_over_from_a_silent_worker(env: dict[str, Any]) -> None:
    store, rt = env["store"], env["rt"]
    new_task(store, "t_claim")
    first = acquire(rt, "t_claim", "node:1:0")
    assert first is not None and first.status == TaskStatus.PROCESSING and first.attempts == 1
    # The first worker dies: its heartbeat ages past heartbeat_timeout_seconds.
    with store.engine.begin() as conn:
        conn.execute(update(Task).where(Task.id == "t_claim").values(heartbeat_at=utcnow() - timedelta(seconds=30)))
    second = acquire(rt, "t_claim", "node:2:0")
    assert second is not None and second.worker_id == "node:2:0" and second.attempts == 2
    beating = threading.Event()

    def owner_alive() -> None:  # what the owner's lease thread does while it runs the task
        while not beating.wait(0.1):
            store.heartbeat("t_claim", "node:2:0")

    lease = threading.Thread(target=owner_alive)
    lease.start()
    try:
        assert acquire(rt, "t_claim", "node:1:0") is None, "a live owner keeps its task (after one timeout of patience)"
    finally:
        beating.set()
        lease.join()
    assert store.get("t_claim").worker_id == "node:2:0"
    store.complete("t_claim", "node:2:0", output_size=5, report=None)
    assert acquire(rt, "t_claim", "node:1:0") is None, "finished tasks are never run again"


def test_acquire_gives_up_after_max_attempts(env: dict[str, Any]) -> None:
    store, rt = env["store"], env["rt"]
    new_task(store, "t_lost")
    with store.engine.begin() as conn:
        conn.execute(
            update(Task)
            .where(Task.id == "t_lost")
            .values(status="processing", worker_id="gone:9:0", attempts=3, heartbeat_at=utcnow() - timedelta(minutes=5))
        )
    assert acquire(rt, "t_lost", "node:1:0") is None
    task = store.get("t_lost")
    assert task is not None and task.status == TaskStatus.FAILED and task.error_code == "worker_lost"


def test_upkeep_requeues_orphans_and_prunes_old_jobs(env: dict[str, Any]) -> None:
    store, rt, settings = env["store"], env["rt"], env["settings"]
    new_task(store, "t_orphan")  # a row whose API node died before deferring
    with store.engine.begin() as conn:
        conn.execute(update(Task).where(Task.id == "t_orphan").values(created_at=utcnow() - timedelta(minutes=1)))
    worker_app = build_app(settings)
    upkeep = Upkeep(rt, worker_app)
    assert upkeep.redefer_orphans() == ["t_orphan"]
    assert upkeep.redefer_orphans() == [], "a waiting job is enough"
    assert current_job_states(store, "t_orphan") == ["todo"]

    with store.engine.begin() as conn:  # the job ran long ago
        conn.execute(text("UPDATE procrastinate_jobs SET status = 'succeeded' WHERE lock = 't_orphan'"))
        conn.execute(text("UPDATE procrastinate_events SET at = now() - interval '400 days'"))

    async def prune() -> None:
        async with worker_app.open_async():
            upkeep._next_prune = 0.0
            await upkeep.prune_jobs()

    asyncio.run(prune())
    assert current_job_states(store, "t_orphan") == []


def test_job_stop_follows_process_stop_and_abort_requests() -> None:
    from media_cleaner.jobs.backends.procrastinate_backend import JobStop

    class Context:
        aborted = False

        def should_abort(self) -> bool:
            return self.aborted

    process_stop, context = threading.Event(), Context()
    stop = JobStop(process_stop, context)  # type: ignore[arg-type]
    assert not stop.is_set()
    context.aborted = True
    assert stop.is_set()
    context.aborted = False
    process_stop.set()
    assert stop.is_set() and stop.wait(0)
