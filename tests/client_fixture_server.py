"""A minimal in-memory implementation of the HTTP contract (notes/API.md), served by a real uvicorn on 127.0.0.1.

It exists to test client mechanics (streamed upload, Range resume, error mapping, idempotency, batch re-runs)
independently of the real server; it says nothing about the real server. "Processing" is a timer, the "protected"
file is b"PROTECTED:" + the input, a file whose name contains "fail" fails, content starting b"NOTAVIDEO" is a 415.
"""

from __future__ import annotations

import contextlib
import secrets
import socket
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

LEVELS = {
    "weak": "weak",
    "medium": "medium",
    "strong": "strong",
    "слабый": "weak",
    "средний": "medium",
    "сильный": "strong",
}


@dataclass
class FakeTask:
    id: str
    filename: str
    data: bytes
    user_id: str | None
    params: dict[str, Any]
    webhook_url: str | None
    created: float = field(default_factory=time.time)
    duration: float = 0.6  # fixed at upload, so changing state.process_seconds later does not re-label old tasks
    cancelled: bool = False
    fail: bool = False


@dataclass
class FakeState:
    process_seconds: float = 0.6
    api_keys: dict[str, str] = field(default_factory=dict)  # key -> user
    max_bytes: int = 50 * 1024 * 1024
    queue_full_answers: int = 0  # the next N uploads get 503 queue_full with Retry-After
    truncate_first_download_at: int | None = None  # bytes; the first full GET of each task is cut there
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    idempotency: dict[tuple[str | None, str], str] = field(default_factory=dict)
    uploads: list[dict[str, Any]] = field(default_factory=list)  # what each upload request looked like
    range_requests: list[str] = field(default_factory=list)
    truncated: set[str] = field(default_factory=set)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self, t: FakeTask) -> tuple[str, float]:
        if t.cancelled:
            return "cancelled", 0.0
        elapsed = time.time() - t.created
        if elapsed < 0.05:
            return "pending", 0.0
        if elapsed < t.duration:
            return "processing", min(99.0, 100.0 * elapsed / t.duration)
        return ("failed", 100.0) if t.fail else ("completed", 100.0)


def _iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()


def error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def output_bytes(t: FakeTask) -> bytes:
    return b"PROTECTED:" + t.data


def create_fake_app(state: FakeState) -> FastAPI:
    app = FastAPI()

    def caller(request: Request) -> tuple[str | None, JSONResponse | None]:
        """(user, error): with keys on the key decides the user; otherwise X-User-Id / user_id param."""
        if state.api_keys:
            key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix("Bearer ")
            if key not in state.api_keys:
                return None, error(401, "unauthorized", "Missing or unknown API key")
            return state.api_keys[key], None
        return request.headers.get("x-user-id") or request.query_params.get("user_id"), None

    def task_json(t: FakeTask) -> dict[str, Any]:
        status, progress = state.status(t)
        done = status in ("completed", "failed", "cancelled")
        return {
            "task_id": t.id,
            "status": status,
            "progress": progress,
            "phase": "video" if status == "processing" else None,
            "eta_seconds": max(0.0, t.duration - (time.time() - t.created)) if not done else None,
            "original_filename": t.filename,
            "input_size_bytes": len(t.data),
            "output_size_bytes": len(output_bytes(t)) if status == "completed" else None,
            "user_id": t.user_id,
            "parameters": t.params,
            "created_at": _iso(t.created),
            "started_at": _iso(t.created + 0.05) if status != "pending" else None,
            "finished_at": _iso(t.created + t.duration) if done else None,
            "attempts": 1,
            "error": {"code": "processing_failed", "message": "synthetic failure"} if status == "failed" else None,
            "report": {"frames": 1} if status == "completed" else None,
            "download_url": f"/download/{t.id}" if status == "completed" else None,
        }

    def lookup(request: Request, task_id: str) -> tuple[FakeTask | None, JSONResponse | None]:
        user, err = caller(request)
        if err:
            return None, err
        t = state.tasks.get(task_id)
        if t is None:
            return None, error(404, "not_found", f"Task {task_id} not found")
        if t.user_id is not None and t.user_id != user:
            return None, error(403, "access_denied", "Access denied")
        return t, None

    @app.post("/upload")
    async def upload(request: Request) -> Response:
        user, err = caller(request)
        if err:
            return err
        form = await request.form()
        upload = form.get("file")
        record = {
            "content_length": request.headers.get("content-length"),
            "transfer_encoding": request.headers.get("transfer-encoding"),
            "fields": {k: v for k, v in form.items() if k != "file"},
            "filename": getattr(upload, "filename", None),
            "idempotency_key": request.headers.get("idempotency-key"),
        }
        state.uploads.append(record)
        if state.queue_full_answers > 0:
            state.queue_full_answers -= 1
            busy = error(503, "queue_full", "The queue is full; retry later")
            busy.headers["Retry-After"] = "0.1"
            return busy
        if upload is None or isinstance(upload, str):
            return error(422, "validation_error", "file is required")
        data = await upload.read()
        if not data:
            return error(400, "empty_file", "The uploaded file is empty")
        if len(data) > state.max_bytes:
            return error(413, "too_large", "File is larger than the limit")
        if data.startswith(b"NOTAVIDEO"):
            return error(415, "not_a_video", "Not a video: no video stream found")
        try:
            epsilon = float(form.get("epsilon", 0.12))
        except ValueError:
            return error(422, "validation_error", "epsilon must be a number")
        if not 0.0 <= epsilon <= 1.0:
            return error(422, "validation_error", "epsilon must be between 0 and 1")
        level = str(form.get("audio_level", "weak")).lower()
        if level not in LEVELS:
            return error(422, "validation_error", f"unknown audio level {level!r}")
        owner = user if state.api_keys else (form.get("user_id") or None)
        key = request.headers.get("idempotency-key")
        with state.lock:
            if key and (owner, key) in state.idempotency:
                t = state.tasks[state.idempotency[(owner, key)]]
                return JSONResponse(
                    {**{k: task_json(t)[k] for k in ("task_id", "status")}, "status_url": f"/task/{t.id}"}, 202
                )
            t = FakeTask(
                id=secrets.token_hex(6),
                filename=upload.filename or "upload",
                data=data,
                user_id=owner,
                params={
                    "epsilon": epsilon,
                    "pixel_bound": epsilon * 8,
                    "audio_level": LEVELS[level],
                    "protect_video": form.get("protect_video", "true") != "false",
                    "protect_audio": form.get("protect_audio", "true") != "false",
                },
                webhook_url=form.get("webhook_url"),
                fail="fail" in (upload.filename or ""),
                duration=state.process_seconds,
            )
            state.tasks[t.id] = t
            if key:
                state.idempotency[(owner, key)] = t.id
        body = {
            "task_id": t.id,
            "status": "pending",
            "status_url": f"/task/{t.id}",
            "download_url": f"/download/{t.id}",
        }
        return JSONResponse(body, status_code=202)

    @app.get("/task/{task_id}")
    def get_task(task_id: str, request: Request) -> Response:
        t, err = lookup(request, task_id)
        return err or JSONResponse(task_json(t))

    @app.get("/tasks")
    def list_tasks(request: Request, status: str | None = None, limit: int = 50, offset: int = 0) -> Response:
        user, err = caller(request)
        if err:
            return err
        visible = [t for t in state.tasks.values() if t.user_id is None or t.user_id == user]
        if user is not None:
            visible = [t for t in visible if t.user_id == user]
        rows = [task_json(t) for t in sorted(visible, key=lambda t: t.created, reverse=True)]
        if status:
            rows = [r for r in rows if r["status"] == status]
        return JSONResponse(
            {"tasks": rows[offset : offset + limit], "total": len(rows), "limit": limit, "offset": offset}
        )

    @app.get("/download/{task_id}")
    def download(task_id: str, request: Request) -> Response:
        t, err = lookup(request, task_id)
        if err:
            return err
        if state.status(t)[0] != "completed":
            return error(409, "not_ready", "Task is not completed yet")
        data = output_bytes(t)
        name = t.filename.rsplit(".", 1)
        headers = {
            "content-disposition": f'attachment; filename="{name[0]}_protected.{name[-1]}"',
            "accept-ranges": "bytes",
        }
        rng = request.headers.get("range")
        if rng:
            state.range_requests.append(rng)
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                return Response(status_code=416, headers={"content-range": f"bytes */{len(data)}"})
            headers["content-range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return Response(data[start:], status_code=206, headers=headers, media_type="video/mp4")
        cut = state.truncate_first_download_at
        if cut is not None and task_id not in state.truncated:
            state.truncated.add(task_id)

            def broken() -> Any:
                yield data[:cut]
                raise ConnectionAbortedError("fixture: simulated dropped connection")

            headers["content-length"] = str(len(data))
            return StreamingResponse(broken(), headers=headers, media_type="video/mp4")
        return Response(data, headers=headers, media_type="video/mp4")

    @app.post("/cancel/{task_id}")
    def cancel(task_id: str, request: Request) -> Response:
        t, err = lookup(request, task_id)
        if err:
            return err
        if state.status(t)[0] in ("completed", "failed", "cancelled"):
            return error(409, "not_cancellable", f"Task is already {state.status(t)[0]}")
        t.cancelled = True
        return JSONResponse(task_json(t))

    @app.get("/stats")
    def stats(request: Request) -> Response:
        if err := caller(request)[1]:
            return err
        counts = {s: 0 for s in ("pending", "processing", "completed", "failed", "cancelled")}
        for t in state.tasks.values():
            counts[state.status(t)[0]] += 1
        return JSONResponse(
            {
                "queue": {"total": len(state.tasks), **counts},
                "workers": {"configured": 1, "alive": 1, "busy": counts["processing"]},
                "throughput": {"completed_last_hour": counts["completed"], "mean_processing_seconds": None},
                "disk": {"input_bytes": 0, "output_bytes": 0, "temp_bytes": 0, "free_bytes": 10**9},
            }
        )

    @app.get("/old/health")
    def moved() -> Response:
        return Response(status_code=308, headers={"location": "https://elsewhere.example/health"})

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "version": "fixture"}

    @app.post("/cleanup")
    def cleanup(older_than_hours: float = 24.0) -> dict[str, int]:
        cutoff = time.time() - older_than_hours * 3600
        old = [k for k, t in state.tasks.items() if t.created <= cutoff]
        freed = sum(len(state.tasks.pop(k).data) for k in old)
        return {"deleted_tasks": len(old), "freed_bytes": freed}

    return app


class ServerThread:
    """uvicorn in a daemon thread on a socket we bound ourselves (so the port is known before start)."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="critical", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("fixture server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self.sock.close()
