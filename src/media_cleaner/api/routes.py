"""The REST endpoints of docs/api.md."""

from __future__ import annotations

import json
import logging
import mimetypes
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from starlette.concurrency import run_in_threadpool

from media_cleaner import __version__
from media_cleaner.api.auth import Principal, check_access, principal
from media_cleaner.api.context import AppContext, ctx_of
from media_cleaner.api.errors import NOT_FOUND, ApiError
from media_cleaner.api.maintenance import run_cleanup
from media_cleaner.api.schemas import CleanupResult, ErrorBody, Health, Ready, Stats, TaskList, TaskOut, UploadAccepted
from media_cleaner.api.uploads import receive_upload
from media_cleaner.config import check_audio_target, normalise_audio_level
from media_cleaner.errors import InvalidMediaError, UnsupportedMediaError
from media_cleaner.jobs import DuplicateIdempotencyKey, Task, TaskStatus, iso, utcnow
from media_cleaner.jobs.webhooks import WebhookTargetError, check_target
from media_cleaner.logs import SERVER_LOGGER
from media_cleaner.media import output_extension_for
from media_cleaner.storage import download_name, input_name, output_name

log = logging.getLogger(SERVER_LOGGER + ".api")
router = APIRouter()
Who = Annotated[Principal, Depends(principal)]
_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 403, 404, 409, 410, 413, 415, 422, 503)
}
FREE_SPACE_MARGIN = 256 * 1024**2
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


# ---------------------------------------------------------------------------------------------------- helpers
def task_out(task: Task) -> dict[str, Any]:
    eta = None
    if task.status == TaskStatus.PROCESSING and task.started_at and task.progress > 0.01:
        elapsed = (utcnow() - task.started_at).total_seconds()
        eta = max(elapsed * (1 - task.progress) / task.progress, 0.0)
    done = task.status == TaskStatus.COMPLETED
    return {
        "task_id": task.id,
        "status": task.status,
        "progress": round(task.progress * 100, 2),
        "phase": task.phase,
        "eta_seconds": eta,
        "original_filename": task.original_filename,
        "input_size_bytes": task.input_size_bytes,
        "output_size_bytes": task.output_size_bytes,
        "user_id": task.user_id,
        "parameters": {
            "epsilon": task.epsilon,
            "pixel_bound": round(task.epsilon * 0.226 * 255.0, 4),
            "audio_level": task.audio_level,
            "audio_objective": task.audio_objective or "untargeted",
            "audio_phrase": task.audio_phrase or "",
            "protect_video": task.protect_video,
            "protect_audio": task.protect_audio,
        },
        "created_at": iso(task.created_at),
        "started_at": iso(task.started_at),
        "finished_at": iso(task.finished_at),
        "attempts": task.attempts,
        "error": {"code": task.error_code, "message": task.error_message or ""} if task.error_code else None,
        "report": task.report if done else None,
        "download_url": f"/download/{task.id}" if done else None,
        "status_url": f"/task/{task.id}",
        "webhook_url": task.webhook_url,
        "media": task.probe,
    }


def authorised_task(request: Request, task_id: str, who: Principal) -> Task:
    """The task after auth and ownership checks (404 unknown, 403 someone else's). Also used by the web page."""
    task = ctx_of(request).store.get(task_id)
    if task is None:
        raise ApiError(*NOT_FOUND)
    check_access(who, task)
    return task


def _bool_field(fields: dict[str, str], name: str, default: bool) -> bool:
    raw = fields.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ApiError(422, "validation_error", f"{name}: expected true or false, got {raw!r}")


def _upload_parameters(ctx: AppContext, fields: dict[str, str]) -> dict[str, Any]:
    settings = ctx.settings
    raw_eps = (fields.get("epsilon") or "").strip()
    try:
        epsilon = float(raw_eps) if raw_eps else settings.default_video_epsilon
    except ValueError:
        raise ApiError(422, "validation_error", f"epsilon: not a number: {raw_eps!r}") from None
    if not 0.0 <= epsilon <= 1.0:
        raise ApiError(422, "validation_error", f"epsilon must be within [0, 1], got {epsilon}")
    raw_level = (fields.get("audio_level") or "").strip()
    try:
        level = normalise_audio_level(raw_level) if raw_level else settings.default_audio_level
    except ValueError as exc:
        raise ApiError(422, "validation_error", f"audio_level: {exc}") from None
    raw_objective = (fields.get("audio_objective") or "").strip() or "untargeted"
    try:
        objective, phrase = check_audio_target(raw_objective, fields.get("audio_phrase"))
    except ValueError as exc:
        raise ApiError(422, "validation_error", f"audio_objective / audio_phrase: {exc}") from None
    return {
        "epsilon": epsilon,
        "audio_level": level,
        "audio_objective": objective,
        "audio_phrase": phrase,
        "protect_video": _bool_field(fields, "protect_video", True),
        "protect_audio": _bool_field(fields, "protect_audio", True),
    }


def _clean_user(raw: str | None) -> str | None:
    if raw is None or not raw.strip():
        return None
    user = raw.strip()
    if len(user) > 128 or any(ord(ch) < 32 for ch in user):
        raise ApiError(422, "validation_error", "user_id must be at most 128 printable characters")
    return user


def _accepted(task: Task, status: int = 202) -> JSONResponse:
    body = UploadAccepted(
        task_id=task.id, status=task.status, status_url=f"/task/{task.id}", download_url=f"/download/{task.id}"
    )
    return JSONResponse(body.model_dump(), status_code=status, headers={"Location": f"/task/{task.id}"})


# ---------------------------------------------------------------------------------------------------- upload
@router.post(
    "/upload",
    status_code=202,
    response_model=UploadAccepted,
    responses=_ERRORS,
    summary="Upload a video for protection (multipart: file, epsilon, audio_level, audio_objective, audio_phrase, "
    "user_id, webhook_url, protect_video, protect_audio)",
)
async def upload(request: Request, who: Who) -> JSONResponse:
    ctx = ctx_of(request)
    settings = ctx.settings
    metrics = request.app.state.metrics
    key = (request.headers.get("idempotency-key") or "").strip()[:256] or None
    early_user = who.user_id
    if key and who.authenticated:  # the owner is known before the body: answer without reading it
        existing = await run_in_threadpool(ctx.store.find_idempotent, early_user or "", key)
        if existing is not None:
            metrics.uploads.labels("idempotent").inc()
            return _accepted(existing)
    counts = await run_in_threadpool(ctx.store.counts)
    if counts["pending"] >= settings.max_pending_tasks:
        raise ApiError(503, "queue_full", "The queue is full; retry later", headers={"Retry-After": "30"})
    declared = request.headers.get("content-length", "")
    if (
        declared.isdigit()
        and int(declared) <= settings.max_upload_bytes  # larger: receive_upload answers 413 first
        and ctx.storage.usage_free() < 2 * int(declared) + FREE_SPACE_MARGIN
    ):
        # The upload and its protected output must both fit; refuse before reading rather than fail half-way.
        raise ApiError(507, "insufficient_storage", "The server has no space left for this upload")

    task_id = secrets.token_hex(6)
    async with ctx.upload_slots:
        parsed = await receive_upload(
            request,
            ctx.storage,
            max_bytes=settings.max_upload_bytes,
            stored_name=lambda name: input_name(task_id, name),
        )
        try:
            if parsed.sink is None:
                raise ApiError(422, "validation_error", "The multipart body has no 'file' part")
            if parsed.size == 0:
                raise ApiError(400, "empty_file", "The uploaded file is empty")
            params = _upload_parameters(ctx, parsed.fields)
            user = who.user_id if who.authenticated else _clean_user(parsed.fields.get("user_id")) or who.user_id
            webhook_url = (parsed.fields.get("webhook_url") or "").strip() or None
            if webhook_url:
                try:
                    await run_in_threadpool(check_target, webhook_url, settings.webhook_allow_private)
                except WebhookTargetError as exc:
                    raise ApiError(422, "validation_error", f"webhook_url: {exc}") from None
            if key and not who.authenticated:
                existing = await run_in_threadpool(ctx.store.find_idempotent, user or "", key)
                if existing is not None:
                    parsed.discard()
                    return _accepted(existing)
            stored = parsed.sink.commit()
            # Probed under its final name: some demuxers (MPEG-PS, raw streams) go by the extension.
            info = await run_in_threadpool(_probe, stored)
            original = parsed.filename or "video"
            extension = output_extension_for(stored.name)
        except BaseException:
            parsed.discard()
            raise
    fields = dict(
        id=task_id,
        user_id=user,
        original_filename=original[:512],
        input_name=stored.name,
        output_name=output_name(task_id, original, extension),
        download_name=download_name(original, extension),
        input_size_bytes=parsed.size,
        webhook_url=webhook_url,
        idempotency_scope=(user or "") if key else None,
        idempotency_key=key,
        probe_json=json.dumps(info, default=str),
        **params,
    )
    try:
        task = await run_in_threadpool(lambda: ctx.store.create(**fields))
    except DuplicateIdempotencyKey:
        ctx.storage.delete("input", stored.name)
        existing = await run_in_threadpool(ctx.store.find_idempotent, user or "", key or "")
        assert existing is not None
        return _accepted(existing)
    except BaseException:
        ctx.storage.delete("input", stored.name)
        raise
    ctx.backend.enqueue(task)
    metrics.upload_bytes.inc(parsed.size)
    metrics.uploads.labels("accepted").inc()
    log.info(
        "queued %s (%d bytes, user %s) epsilon=%g audio=%s objective=%s video=%s audio_on=%s",
        task.original_filename,
        task.input_size_bytes,
        task.user_id,
        task.epsilon,
        task.audio_level,
        task.audio_objective,
        task.protect_video,
        task.protect_audio,
        extra={"task_id": task.id},
    )
    return _accepted(task)


def _probe(path: Any) -> dict[str, Any]:
    from media_cleaner.media import probe  # PyAV only, no torch

    try:
        info = probe(path)
    except (InvalidMediaError, UnsupportedMediaError) as exc:
        raise ApiError(415, "not_a_video", f"Not a usable video: {exc.message}") from None
    data = info.to_dict()
    data.pop("path", None)
    return data


# ---------------------------------------------------------------------------------------------------- reads
@router.get("/task/{task_id}", response_model=TaskOut, responses=_ERRORS, summary="Status of one task")
def get_task(task_id: str, request: Request, who: Who) -> dict[str, Any]:
    ctx = ctx_of(request)
    task = authorised_task(request, task_id, who)
    body = task_out(task)
    body["queue_position"] = position = ctx.store.queue_position(task)
    if position is not None:
        # Pending: wait for the tasks ahead to go through the workers, then run, at the recent mean duration.
        mean = ctx.store.throughput()["mean_processing_seconds"]
        if mean:
            body["eta_seconds"] = round(mean * (1 + (position - 1) / max(ctx.configured_workers, 1)), 1)
    return body


@router.get("/tasks", response_model=TaskList, responses=_ERRORS, summary="List tasks (filters + pagination)")
def list_tasks(
    request: Request,
    who: Who,
    user_id: str | None = None,
    status: TaskStatus | None = None,
    since: datetime | None = Query(None, description="ISO 8601; tasks created at or after"),
    limit: int = Query(50, ge=1, le=500),
    offset: int = Query(0, ge=0),
) -> dict[str, Any]:
    if since is not None and since.tzinfo is not None:
        since = since.astimezone(UTC).replace(tzinfo=None)
    # Keys on: always the caller's own tasks. Keys off: the spec's isolation, tasks of the given user_id, or the
    # tasks without an owner when none is given.
    user = who.user_id if who.authenticated else (user_id or who.user_id)
    tasks, total = ctx_of(request).store.list(
        user_id=user, status=status.value if status else None, since=since, limit=limit, offset=offset
    )
    return {"tasks": [task_out(t) for t in tasks], "total": total, "limit": limit, "offset": offset}


@router.get(
    "/download/{task_id}",
    responses={**_ERRORS, 200: {"content": {"video/mp4": {}}}, 206: {"description": "Partial content (Range)"}},
    summary="Download the protected video (Range supported)",
)
def download(task_id: str, request: Request, who: Who) -> Response:
    task = authorised_task(request, task_id, who)
    if task.status != TaskStatus.COMPLETED:
        raise ApiError(409, "not_ready", f"Task is {task.status}; the result is available once it is completed")
    storage = ctx_of(request).storage
    if storage.size("output", task.output_name) is None:
        raise ApiError(410, "gone", "The result file was removed (retention cleanup)")
    path = storage.local_path("output", task.output_name)
    media_type = mimetypes.guess_type(task.output_name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media_type, filename=task.download_name)


# ---------------------------------------------------------------------------------------------------- actions
@router.post("/cancel/{task_id}", response_model=TaskOut, responses=_ERRORS, summary="Cancel a pending/running task")
def cancel(task_id: str, request: Request, who: Who) -> dict[str, Any]:
    ctx = ctx_of(request)
    task = authorised_task(request, task_id, who)
    cancelled = ctx.store.cancel(task.id)
    if cancelled is None:
        current = ctx.store.get(task.id)
        state = current.status if current else "deleted"
        raise ApiError(409, "not_cancellable", f"Task is already {state}")
    ctx.backend.cancelled(cancelled)
    log.info("cancelled (was %s)", task.status, extra={"task_id": task.id})
    return task_out(cancelled)


@router.post("/cleanup", response_model=CleanupResult, responses=_ERRORS, summary="Delete old tasks and their files")
def cleanup(
    request: Request,
    who: Who,
    older_than_hours: float | None = Query(None, ge=0, description="default: retention_hours"),
) -> dict[str, int]:
    ctx = ctx_of(request)
    hours = ctx.settings.retention_hours if older_than_hours is None else older_than_hours
    # With API keys on, a user only cleans up their own tasks; the periodic job cleans everyone's.
    scope = {"any_user": False, "user_id": who.user_id} if who.authenticated else {"any_user": True}
    return run_cleanup(ctx, timedelta(hours=hours), **scope)


# ---------------------------------------------------------------------------------------------------- monitoring
@router.get("/stats", response_model=Stats, responses=_ERRORS, summary="Queue, workers, throughput, disk")
def stats(request: Request, who: Who) -> dict[str, Any]:
    ctx = ctx_of(request)
    alive_after = utcnow() - timedelta(seconds=ctx.settings.heartbeat_timeout_seconds)
    workers = ctx.store.workers(alive_after)
    return {
        "queue": ctx.store.counts(),
        "workers": {"configured": ctx.configured_workers, **workers},
        "throughput": ctx.store.throughput(),
        "disk": ctx.storage.usage(),
    }


@router.get("/health", response_model=Health, summary="Liveness (cheap)")
def health() -> dict[str, str]:
    return {"status": "ok", "version": __version__}


@router.get("/ready", response_model=Ready, responses={503: {"model": Ready}}, summary="Readiness")
def ready(request: Request) -> JSONResponse:
    ctx = ctx_of(request)
    checks: dict[str, Any] = {}
    t0 = time.perf_counter()
    try:
        checks["database"] = ctx.store.ping()
    except Exception as exc:
        checks["database"] = False
        checks["database_error"] = f"{type(exc).__name__}: {exc}"
    checks["database_ms"] = round((time.perf_counter() - t0) * 1000, 1)
    writable = ctx.storage.check_writable()
    checks["storage"] = all(writable.values())
    checks["storage_areas"] = writable
    try:
        alive_after = utcnow() - timedelta(seconds=ctx.settings.heartbeat_timeout_seconds)
        workers = ctx.store.workers(alive_after)
    except Exception:
        workers = {"alive": 0, "ready": 0, "busy": 0}
    checks["workers_alive"] = workers["alive"]
    checks["models_loaded"] = workers["ready"] > 0
    ok = checks["database"] and checks["storage"] and checks["models_loaded"]
    return JSONResponse({"status": "ready" if ok else "not_ready", "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    return Response(generate_latest(request.app.state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
