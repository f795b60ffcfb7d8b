"""SQLAlchemy 2 tables: tasks (the truth about a task), workers (liveness), webhook deliveries (durable outbox)."""

from __future__ import annotations

import enum
import json
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, DateTime, Float, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class TaskStatus(enum.StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


TERMINAL = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


def utcnow() -> datetime:
    """Naive UTC: SQLite drops tz info, so every timestamp in the DB is naive UTC by convention."""
    return datetime.now(UTC).replace(tzinfo=None)


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.replace(tzinfo=UTC).isoformat()


class Base(DeclarativeBase):
    pass


class Task(Base):
    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("idempotency_scope", "idempotency_key", name="uq_task_idempotency"),
        Index("ix_tasks_status_created", "status", "created_at"),
        Index("ix_tasks_user_created", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), default=TaskStatus.PENDING)
    user_id: Mapped[str | None] = mapped_column(String(128), default=None)
    original_filename: Mapped[str] = mapped_column(String(512))
    input_name: Mapped[str] = mapped_column(String(256))
    output_name: Mapped[str] = mapped_column(String(256))
    download_name: Mapped[str] = mapped_column(String(256))
    # BigInteger: sizes pass 2 GiB (max_video_size_gb) and PostgreSQL INTEGER is 32-bit.
    input_size_bytes: Mapped[int] = mapped_column(BigInteger)
    output_size_bytes: Mapped[int | None] = mapped_column(BigInteger, default=None)
    epsilon: Mapped[float] = mapped_column(Float)
    audio_level: Mapped[str] = mapped_column(String(16))
    # Added in migration 0003; the server defaults let rows from before it load as untargeted.
    audio_objective: Mapped[str] = mapped_column(String(16), default="untargeted", server_default="untargeted")
    audio_phrase: Mapped[str] = mapped_column(String(256), default="", server_default="")
    protect_video: Mapped[bool] = mapped_column(Boolean, default=True)
    protect_audio: Mapped[bool] = mapped_column(Boolean, default=True)
    webhook_url: Mapped[str | None] = mapped_column(String(2048), default=None)
    idempotency_scope: Mapped[str | None] = mapped_column(String(128), default=None)
    idempotency_key: Mapped[str | None] = mapped_column(String(256), default=None)
    probe_json: Mapped[str | None] = mapped_column(Text, default=None)

    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    cancel_requested_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)

    progress: Mapped[float] = mapped_column(Float, default=0.0)  # 0..1
    phase: Mapped[str | None] = mapped_column(String(64), default=None)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128), default=None)
    error_code: Mapped[str | None] = mapped_column(String(64), default=None)
    error_message: Mapped[str | None] = mapped_column(Text, default=None)
    report_json: Mapped[str | None] = mapped_column(Text, default=None)

    @property
    def report(self) -> dict[str, Any] | None:
        return json.loads(self.report_json) if self.report_json else None

    @property
    def probe(self) -> dict[str, Any] | None:
        return json.loads(self.probe_json) if self.probe_json else None

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def processing_seconds(self) -> float | None:
        if self.started_at is None:
            return None
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()


class WorkerRow(Base):
    """One worker process; `heartbeat_at` tells liveness, `current_task_id` tells busy."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str] = mapped_column(String(32), default="cpu")
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    models_loaded: Mapped[bool] = mapped_column(Boolean, default=False)
    current_task_id: Mapped[str | None] = mapped_column(String(32), default=None)


class WebhookDelivery(Base):
    """Outbox row: written in the same transaction that ends a task, so no event is lost on a crash."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_due", "delivered_at", "dead", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the webhook-id header, stable across retries
    task_id: Mapped[str] = mapped_column(String(32))
    url: Mapped[str] = mapped_column(String(2048))
    event: Mapped[str] = mapped_column(String(64))
    payload_json: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, default=None)
    dead: Mapped[bool] = mapped_column(Boolean, default=False)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
