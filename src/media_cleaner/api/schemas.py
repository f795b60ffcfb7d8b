"""Typed response bodies (they shape /docs); field names follow docs/api.md and never change."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Status = Literal["pending", "processing", "completed", "failed", "cancelled"]


class ErrorDetail(BaseModel):
    code: str
    message: str


class ErrorBody(BaseModel):
    error: ErrorDetail


class Parameters(BaseModel):
    epsilon: float
    pixel_bound: float = Field(description="epsilon in 8-bit levels (epsilon x 0.226 x 255)")
    audio_level: str
    audio_objective: str = Field("untargeted", description="untargeted | silence | phrase")
    audio_phrase: str = Field("", description="the phrase to be heard when audio_objective is phrase")
    protect_video: bool
    protect_audio: bool


class TaskOut(BaseModel):
    task_id: str
    status: Status
    progress: float = Field(ge=0, le=100)
    phase: str | None
    eta_seconds: float | None
    original_filename: str
    input_size_bytes: int
    output_size_bytes: int | None
    user_id: str | None
    parameters: Parameters
    created_at: str
    started_at: str | None
    finished_at: str | None
    attempts: int
    error: ErrorDetail | None
    report: dict[str, Any] | None
    download_url: str | None
    status_url: str
    webhook_url: str | None = None
    media: dict[str, Any] | None = Field(None, description="what probing the upload found")
    queue_position: int | None = Field(None, description="1-based place in the queue while pending (GET /task only)")


class UploadAccepted(BaseModel):
    task_id: str
    status: Status
    status_url: str
    download_url: str


class TaskList(BaseModel):
    tasks: list[TaskOut]
    total: int
    limit: int
    offset: int


class QueueStats(BaseModel):
    total: int
    pending: int
    processing: int
    completed: int
    failed: int
    cancelled: int


class WorkerStats(BaseModel):
    configured: int
    alive: int
    busy: int
    ready: int = 0


class Throughput(BaseModel):
    completed_last_hour: int
    mean_processing_seconds: float | None


class DiskStats(BaseModel):
    input_bytes: int
    output_bytes: int
    temp_bytes: int
    free_bytes: int


class Stats(BaseModel):
    queue: QueueStats
    workers: WorkerStats
    throughput: Throughput
    disk: DiskStats


class Health(BaseModel):
    status: Literal["ok"]
    version: str


class Ready(BaseModel):
    status: Literal["ready", "not_ready"]
    checks: dict[str, Any]


class CleanupResult(BaseModel):
    deleted_tasks: int
    freed_bytes: int
