"""The web page: `GET /` (the page), `/static/*` (its assets), `/web/config` and frame previews for comparison.

Included by the app factory when present. Torch-free: previews decode with PyAV only.
"""

from __future__ import annotations

import mimetypes
from functools import lru_cache
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response

from media_cleaner.api import web_access
from media_cleaner.api.web_preview import Frame, amplified_difference, downscale, encode_png, read_frame
from media_cleaner.config import Settings
from media_cleaner.errors import MediaCleanerError

STATIC_DIR = Path(__file__).resolve().parent / "static"
# The page changes with the server; the browser must not keep a stale copy across an upgrade.
_NO_CACHE = {"Cache-Control": "no-cache"}

router = APIRouter(tags=["web page"])


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
def index() -> FileResponse:
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_NO_CACHE)


@router.api_route("/static/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
def static(path: str) -> Response:
    target = (STATIC_DIR / path).resolve()
    # Resolve first, then check containment: `..`, symlinks and absolute paths all end up outside STATIC_DIR.
    if not target.is_relative_to(STATIC_DIR) or not target.is_file():
        return _error(404, "not_found", "No such file")
    media_type = mimetypes.guess_type(target.name)[0] or "application/octet-stream"
    if media_type.startswith("text/") or media_type in ("application/javascript", "image/svg+xml"):
        media_type += "; charset=utf-8"
    return FileResponse(target, media_type=media_type, headers=_NO_CACHE)


@router.get("/web/config", summary="What the web page needs to know before an upload")
def web_config(request: Request) -> dict:
    settings: Settings = web_access.settings_of(request)
    return {
        "max_upload_bytes": settings.max_upload_bytes,
        "max_video_size_gb": settings.max_video_size_gb,
        "auth_required": bool(settings.api_keys),
        "default_epsilon": settings.default_video_epsilon,
        "default_audio_level": settings.default_audio_level,
    }


@router.get(
    "/task/{task_id}/preview",
    summary="One frame of the original or protected video, or their amplified difference, as PNG",
    responses={200: {"content": {"image/png": {}}}},
)
def preview(
    request: Request,
    task_id: str,
    kind: Literal["original", "protected", "diff"] = Query("protected"),
    t: float = Query(1.0, ge=0.0, le=48 * 3600.0, description="seconds from the start"),
    max_width: int | None = Query(None, ge=16, le=8192, description="downscale wider frames by an integer factor"),
) -> Response:
    files = web_access.task_files(request, task_id)
    if files.status != "completed":
        return _error(409, "not_ready", "The task has not completed yet; previews need the protected video")
    needed = {"original": [files.original], "protected": [files.protected], "diff": [files.original, files.protected]}
    for path in needed[kind]:
        if path is None or not path.is_file():
            return _error(410, "gone", "The file for this preview has been removed from the server")
    try:
        png, headers = _render(kind, files.original, files.protected, t, max_width)
    except MediaCleanerError as exc:
        return _error(422, exc.code, "This frame could not be decoded")
    return Response(png, media_type="image/png", headers={**headers, "Cache-Control": "private, max-age=3600"})


@lru_cache(maxsize=6)
def _cached_frame(path: str, mtime_ns: int, size: int, t: float) -> Frame:
    """The page asks for the original, the protected and their difference at one time: decode each file once.
    Keyed by modification time and size so a replaced file is decoded again."""
    frame = read_frame(path, t)
    frame.rgb.flags.writeable = False  # shared between requests: nobody may draw on it
    return frame


def _frame(path: Path, t: float) -> Frame:
    stat = path.stat()
    return _cached_frame(str(path), stat.st_mtime_ns, stat.st_size, round(t, 3))


def _render(
    kind: str, original: Path | None, protected: Path | None, t: float, max_width: int | None
) -> tuple[bytes, dict[str, str]]:
    if kind == "diff":
        before, after = _frame(original, t), _frame(protected, t)
        image, gain, mean_abs = amplified_difference(before.rgb, after.rgb)
        headers = {"X-Diff-Gain": str(gain), "X-Diff-Mean": f"{mean_abs:.4f}", "X-Frame-Time": f"{after.time:.4f}"}
        return encode_png(downscale(image, max_width, keep_peaks=True)), headers
    frame = _frame(original if kind == "original" else protected, t)
    return encode_png(downscale(frame.rgb, max_width)), {"X-Frame-Time": f"{frame.time:.4f}"}
