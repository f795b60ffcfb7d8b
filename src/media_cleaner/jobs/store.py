"""TaskStore: every state transition of a task, each one a single conditional UPDATE so races resolve in the DB.

A transition names the state (and owner) it expects; if another process got there first the UPDATE matches no row
and the caller learns it lost (e.g. a worker finishing a task that was cancelled meanwhile must drop its output).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, and_, delete, func, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from media_cleaner.jobs.db import make_engine
from media_cleaner.jobs.models import TERMINAL, Task, TaskStatus, WebhookDelivery, WorkerRow, iso, utcnow

WEBHOOK_EVENTS = {
    TaskStatus.COMPLETED: "task.completed",
    TaskStatus.FAILED: "task.failed",
    TaskStatus.CANCELLED: "task.cancelled",
}


class DuplicateIdempotencyKey(Exception):
    """Another request created a task with the same (user, Idempotency-Key) first."""


@dataclass
class Recovery:
    requeued: list[str]
    failed: list[str]


class TaskStore:
    def __init__(self, url_or_engine: str | Engine, *, max_attempts: int = 3) -> None:
        self.engine = make_engine(url_or_engine) if isinstance(url_or_engine, str) else url_or_engine
        self._writer = self.engine.execution_options(sqlite_immediate=True)
        self.max_attempts = max_attempts

    # -- sessions ---------------------------------------------------------------------------------------------
    @contextmanager
    def _read(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    @contextmanager
    def _write(self) -> Iterator[Session]:
        with Session(self._writer, expire_on_commit=False) as session, session.begin():
            yield session

    def ping(self) -> bool:
        """The DB answers and accepts a write transaction (readiness)."""
        with self._write() as session:
            session.execute(select(func.count()).select_from(WorkerRow))
        return True

    # -- creation and reads -----------------------------------------------------------------------------------
    def create(self, **fields: Any) -> Task:
        task = Task(status=TaskStatus.PENDING, created_at=utcnow(), **fields)
        try:
            with self._write() as session:
                session.add(task)
        except IntegrityError as exc:
            if fields.get("idempotency_key"):
                raise DuplicateIdempotencyKey(fields["idempotency_key"]) from exc
            raise
        return task

    def get(self, task_id: str) -> Task | None:
        with self._read() as session:
            return session.get(Task, task_id)

    def find_idempotent(self, scope: str, key: str) -> Task | None:
        with self._read() as session:
            return session.scalars(
                select(Task).where(Task.idempotency_scope == scope, Task.idempotency_key == key)
            ).first()

    def list(
        self,
        *,
        user_id: str | None,
        any_user: bool = False,
        status: str | None = None,
        since: datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> tuple[list[Task], int]:
        """Newest first. `any_user` lists everyone's tasks; otherwise only `user_id`'s (None: tasks without user)."""
        conditions = []
        if not any_user:
            conditions.append(Task.user_id.is_(None) if user_id is None else Task.user_id == user_id)
        if status:
            conditions.append(Task.status == status)
        if since:
            conditions.append(Task.created_at >= since)
        with self._read() as session:
            total = session.scalar(select(func.count()).select_from(Task).where(*conditions)) or 0
            rows = session.scalars(
                select(Task).where(*conditions).order_by(Task.created_at.desc(), Task.id).limit(limit).offset(offset)
            ).all()
        return list(rows), total

    def queue_position(self, task: Task) -> int | None:
        """1-based place among pending tasks (oldest first); None unless pending."""
        if task.status != TaskStatus.PENDING:
            return None
        with self._read() as session:
            ahead = session.scalar(
                select(func.count())
                .select_from(Task)
                .where(
                    Task.status == TaskStatus.PENDING,
                    or_(Task.created_at < task.created_at, and_(Task.created_at == task.created_at, Task.id < task.id)),
                )
            )
        return int(ahead or 0) + 1

    def counts(self) -> dict[str, int]:
        with self._read() as session:
            rows = session.execute(select(Task.status, func.count()).group_by(Task.status)).all()
        result = {status.value: 0 for status in TaskStatus}
        result.update({status: count for status, count in rows})
        result["total"] = sum(result[s.value] for s in TaskStatus)
        return result

    def failure_codes(self) -> dict[str, int]:
        """Failed tasks by error code (for monitoring)."""
        with self._read() as session:
            rows = session.execute(
                select(Task.error_code, func.count()).where(Task.status == TaskStatus.FAILED).group_by(Task.error_code)
            ).all()
        return {code or "unknown": count for code, count in rows}

    def throughput(self, window: timedelta = timedelta(hours=1)) -> dict[str, Any]:
        since = utcnow() - window
        with self._read() as session:
            rows = session.execute(
                select(Task.started_at, Task.finished_at).where(
                    Task.status == TaskStatus.COMPLETED, Task.finished_at >= since
                )
            ).all()
        durations = [(f - s).total_seconds() for s, f in rows if s and f]
        return {
            "completed_last_hour": len(rows),
            "mean_processing_seconds": sum(durations) / len(durations) if durations else None,
        }

    def completed_durations(self, limit: int = 1000) -> list[float]:
        with self._read() as session:
            rows = session.execute(
                select(Task.started_at, Task.finished_at)
                .where(Task.status == TaskStatus.COMPLETED)
                .order_by(Task.finished_at.desc())
                .limit(limit)
            ).all()
        return [(f - s).total_seconds() for s, f in rows if s and f]

    # -- worker side ------------------------------------------------------------------------------------------
    def claim(self, worker_id: str) -> Task | None:
        """Atomically move the oldest pending task to processing for `worker_id`."""
        # Idle workers poll often: look first in a lock-free read, take the write lock only when there is work.
        with self._read() as session:
            if session.scalar(select(Task.id).where(Task.status == TaskStatus.PENDING).limit(1)) is None:
                return None
        oldest = select(Task.id).where(Task.status == TaskStatus.PENDING).order_by(Task.created_at, Task.id).limit(1)
        if self.engine.dialect.name == "postgresql":
            oldest = oldest.with_for_update(skip_locked=True)
        return self._claim_where(Task.id == oldest.scalar_subquery(), worker_id)

    def claim_task(self, task_id: str, worker_id: str) -> Task | None:
        """Move one given task from pending to processing for `worker_id` (a queue that picked the task itself)."""
        return self._claim_where(Task.id == task_id, worker_id)

    def _claim_where(self, which: Any, worker_id: str) -> Task | None:
        """The one claim: a conditional UPDATE of a pending row, so two workers can never both win it."""
        now = utcnow()
        with self._write() as session:
            claimed = session.execute(
                update(Task)
                .where(which, Task.status == TaskStatus.PENDING)
                .values(
                    status=TaskStatus.PROCESSING,
                    worker_id=worker_id,
                    attempts=Task.attempts + 1,
                    started_at=now,
                    heartbeat_at=now,
                    progress=0.0,
                    phase="starting",
                    error_code=None,
                    error_message=None,
                )
                .returning(Task.id)
            ).scalar()
            if claimed is None:
                return None
            session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(current_task_id=claimed))
            return session.get(Task, claimed)

    def _owned(self, task_id: str, worker_id: str) -> Any:
        return and_(Task.id == task_id, Task.status == TaskStatus.PROCESSING, Task.worker_id == worker_id)

    def heartbeat(self, task_id: str, worker_id: str) -> bool:
        """Refresh the lease; False once the task is no longer this worker's (cancelled, timed out, recovered)."""
        with self._write() as session:
            return (
                session.execute(
                    update(Task).where(self._owned(task_id, worker_id)).values(heartbeat_at=utcnow())
                ).rowcount
                == 1
            )

    def set_progress(self, task_id: str, worker_id: str, fraction: float, phase: str | None) -> bool:
        with self._write() as session:
            return (
                session.execute(
                    update(Task)
                    .where(self._owned(task_id, worker_id))
                    .values(progress=min(max(fraction, 0.0), 1.0), phase=phase, heartbeat_at=utcnow())
                ).rowcount
                == 1
            )

    def still_owned(self, task_id: str, worker_id: str) -> bool:
        """Cheap read for the cancel probe: is this worker still the one meant to run the task?"""
        with self._read() as session:
            row = session.execute(select(Task.status, Task.worker_id).where(Task.id == task_id)).first()
        return row is not None and row.status == TaskStatus.PROCESSING and row.worker_id == worker_id

    def complete(self, task_id: str, worker_id: str, *, output_size: int, report: dict[str, Any] | None) -> Task | None:
        with self._write() as session:
            done = session.execute(
                update(Task)
                .where(self._owned(task_id, worker_id))
                .values(
                    status=TaskStatus.COMPLETED,
                    finished_at=utcnow(),
                    progress=1.0,
                    phase="done",
                    output_size_bytes=output_size,
                    report_json=json.dumps(report, default=str) if report is not None else None,
                )
            ).rowcount
            return self._after_terminal(session, task_id, worker_id) if done else None

    def fail(self, task_id: str, worker_id: str, code: str, message: str) -> Task | None:
        with self._write() as session:
            done = session.execute(
                update(Task)
                .where(self._owned(task_id, worker_id))
                .values(status=TaskStatus.FAILED, finished_at=utcnow(), error_code=code, error_message=message[:4000])
            ).rowcount
            return self._after_terminal(session, task_id, worker_id) if done else None

    def release(self, task_id: str, worker_id: str) -> bool:
        """Give a task back untouched (worker shutting down): pending again, the attempt not counted."""
        with self._write() as session:
            done = session.execute(
                update(Task)
                .where(self._owned(task_id, worker_id))
                .values(
                    status=TaskStatus.PENDING,
                    worker_id=None,
                    attempts=Task.attempts - 1,
                    started_at=None,
                    progress=0.0,
                    phase=None,
                )
            ).rowcount
            self._worker_idle(session, worker_id)
            return done == 1

    def worker_idle(self, worker_id: str) -> None:
        """The worker finished with its task, whatever the outcome (the supervisor stops watching it)."""
        with self._write() as session:
            self._worker_idle(session, worker_id)

    def _worker_idle(self, session: Session, worker_id: str) -> None:
        session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(current_task_id=None))

    def _after_terminal(self, session: Session, task_id: str, worker_id: str | None) -> Task:
        if worker_id:
            self._worker_idle(session, worker_id)
        task = session.get(Task, task_id)
        assert task is not None
        session.refresh(task)
        self._queue_webhook(session, task)
        return task

    # -- API side ---------------------------------------------------------------------------------------------
    def cancel(self, task_id: str) -> Task | None:
        """Cancel a pending or running task; None when it was already terminal (or unknown)."""
        now = utcnow()
        with self._write() as session:
            done = session.execute(
                update(Task)
                .where(Task.id == task_id, Task.status.in_([TaskStatus.PENDING, TaskStatus.PROCESSING]))
                .values(
                    status=TaskStatus.CANCELLED,
                    cancel_requested_at=now,
                    finished_at=now,
                    error_code="cancelled",
                    error_message="cancelled by request",
                )
            ).rowcount
            return self._after_terminal(session, task_id, None) if done else None

    def delete_older_than(self, cutoff: datetime, *, user_id: str | None = None, any_user: bool = True) -> list[Task]:
        """Delete finished tasks created before `cutoff` (and pending/processing ones far past it are left alone)."""
        conditions = [Task.created_at < cutoff, Task.status.in_([s.value for s in TERMINAL])]
        if not any_user:
            conditions.append(Task.user_id == user_id if user_id is not None else Task.user_id.is_(None))
        with self._write() as session:
            rows = list(session.scalars(select(Task).where(*conditions)).all())
            if rows:
                ids = [t.id for t in rows]
                session.execute(delete(Task).where(Task.id.in_(ids)))
                session.execute(
                    delete(WebhookDelivery).where(
                        WebhookDelivery.task_id.in_(ids),
                        or_(WebhookDelivery.delivered_at.is_not(None), WebhookDelivery.dead.is_(True)),
                    )
                )
        return rows

    # -- supervision --------------------------------------------------------------------------------------------
    def recover(self, *, stale_before: datetime | None = None, worker_ids: Sequence[str] = ()) -> Recovery:
        """Tasks whose worker died: back to pending while attempts remain, else failed. Never left processing."""
        owner = []
        if stale_before is not None:
            owner.append(or_(Task.heartbeat_at.is_(None), Task.heartbeat_at < stale_before))
        if worker_ids:
            owner.append(Task.worker_id.in_(list(worker_ids)))
        if not owner:
            return Recovery([], [])
        result = Recovery([], [])
        candidates = select(Task.id, Task.attempts, Task.worker_id).where(
            Task.status == TaskStatus.PROCESSING, or_(*owner)
        )
        with self._read() as session:  # the common case, nothing lost, needs no write lock
            if not session.execute(candidates.limit(1)).first():
                return result
        with self._write() as session:
            lost = session.execute(candidates).all()
            for task_id, attempts, worker_id in lost:
                if attempts < self.max_attempts:
                    values: dict[str, Any] = dict(
                        status=TaskStatus.PENDING, worker_id=None, started_at=None, progress=0.0, phase=None
                    )
                    bucket = result.requeued
                else:
                    values = dict(
                        status=TaskStatus.FAILED,
                        finished_at=utcnow(),
                        error_code="worker_lost",
                        error_message=f"the worker processing this task stopped {attempts} time(s); giving up",
                    )
                    bucket = result.failed
                done = session.execute(
                    update(Task)
                    .where(Task.id == task_id, Task.status == TaskStatus.PROCESSING, Task.worker_id == worker_id)
                    .values(**values)
                ).rowcount
                if done:
                    bucket.append(task_id)
                    if worker_id:
                        self._worker_idle(session, worker_id)
                    if bucket is result.failed:
                        self._after_terminal(session, task_id, None)
        return result

    def expire(self, timeout: timedelta) -> list[str]:
        """Fail tasks processing for longer than `task_timeout_hours`; their worker notices through its probe."""
        cutoff = utcnow() - timeout
        hours = timeout.total_seconds() / 3600
        expired: list[str] = []
        overdue = select(Task.id).where(Task.status == TaskStatus.PROCESSING, Task.started_at < cutoff)
        with self._read() as session:
            if session.scalar(overdue.limit(1)) is None:
                return expired
        with self._write() as session:
            ids = session.scalars(overdue).all()
            for task_id in ids:
                done = session.execute(
                    update(Task)
                    .where(Task.id == task_id, Task.status == TaskStatus.PROCESSING)
                    .values(
                        status=TaskStatus.FAILED,
                        finished_at=utcnow(),
                        error_code="timeout",
                        error_message=f"processing exceeded task_timeout_hours={hours:g}",
                    )
                ).rowcount
                if done:
                    expired.append(task_id)
                    self._after_terminal(session, task_id, None)
        return expired

    # -- workers ------------------------------------------------------------------------------------------------
    def register_worker(self, worker_id: str, host: str, pid: int, device: str) -> None:
        with self._write() as session:
            session.merge(
                WorkerRow(
                    id=worker_id,
                    host=host,
                    pid=pid,
                    device=device,
                    started_at=utcnow(),
                    heartbeat_at=utcnow(),
                    models_loaded=False,
                    current_task_id=None,
                )
            )

    def worker_heartbeat(self, worker_id: str, *, models_loaded: bool | None = None) -> None:
        values: dict[str, Any] = {"heartbeat_at": utcnow()}
        if models_loaded is not None:
            values["models_loaded"] = models_loaded
        with self._write() as session:
            session.execute(update(WorkerRow).where(WorkerRow.id == worker_id).values(**values))

    def unregister_worker(self, worker_id: str) -> None:
        with self._write() as session:
            session.execute(delete(WorkerRow).where(WorkerRow.id == worker_id))

    def worker_task(self, worker_id: str) -> str | None:
        with self._read() as session:
            return session.scalar(select(WorkerRow.current_task_id).where(WorkerRow.id == worker_id))

    def workers(self, alive_after: datetime) -> dict[str, int]:
        with self._read() as session:
            rows = session.execute(
                select(WorkerRow.models_loaded, WorkerRow.current_task_id).where(WorkerRow.heartbeat_at >= alive_after)
            ).all()
        return {
            "alive": len(rows),
            "ready": sum(1 for loaded, _ in rows if loaded),
            "busy": sum(1 for _, current in rows if current),
        }

    # -- webhooks outbox ----------------------------------------------------------------------------------------
    def _queue_webhook(self, session: Session, task: Task) -> None:
        if not task.webhook_url or task.status not in WEBHOOK_EVENTS:
            return
        event = WEBHOOK_EVENTS[TaskStatus(task.status)]
        payload = {
            "type": event,
            "timestamp": iso(utcnow()),
            "data": {
                "task_id": task.id,
                "status": task.status,
                "user_id": task.user_id,
                "original_filename": task.original_filename,
                "output_size_bytes": task.output_size_bytes,
                "error": {"code": task.error_code, "message": task.error_message} if task.error_code else None,
                "download_url": f"/download/{task.id}" if task.status == TaskStatus.COMPLETED else None,
                "finished_at": iso(task.finished_at),
            },
        }
        session.add(
            WebhookDelivery(
                id=f"msg_{uuid.uuid4().hex}",
                task_id=task.id,
                url=task.webhook_url,
                event=event,
                payload_json=json.dumps(payload, separators=(",", ":"), ensure_ascii=False),
                next_attempt_at=utcnow(),
            )
        )

    def lease_webhooks(self, lease: timedelta, limit: int = 20) -> list[WebhookDelivery]:
        """Due deliveries, each pushed `lease` into the future so a parallel dispatcher skips it meanwhile."""
        now = utcnow()
        leased = []
        with self._write() as session:
            due = session.scalars(
                select(WebhookDelivery)
                .where(
                    WebhookDelivery.delivered_at.is_(None),
                    WebhookDelivery.dead.is_(False),
                    WebhookDelivery.next_attempt_at <= now,
                )
                .order_by(WebhookDelivery.next_attempt_at)
                .limit(limit)
            ).all()
            for row in due:
                done = session.execute(
                    update(WebhookDelivery)
                    .where(WebhookDelivery.id == row.id, WebhookDelivery.next_attempt_at == row.next_attempt_at)
                    .values(next_attempt_at=now + lease, attempts=WebhookDelivery.attempts + 1)
                ).rowcount
                if done:
                    session.refresh(row)
                    leased.append(row)
        return leased

    def webhook_result(
        self, delivery_id: str, *, ok: bool, error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        values: dict[str, Any] = {"last_error": error}
        if ok:
            values["delivered_at"] = utcnow()
        elif retry_at is None:
            values["dead"] = True
        else:
            values["next_attempt_at"] = retry_at
        with self._write() as session:
            session.execute(update(WebhookDelivery).where(WebhookDelivery.id == delivery_id).values(**values))

    def webhook_deliveries(self, task_id: str) -> list[WebhookDelivery]:
        with self._read() as session:
            return list(session.scalars(select(WebhookDelivery).where(WebhookDelivery.task_id == task_id)).all())
