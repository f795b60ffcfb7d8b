"""MediaCleanerClient: the Python client of the Media Cleaner REST API (httpx, no server imports, no torch)."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import unquote

import httpx

from media_cleaner.client.errors import (
    ApiError,
    DownloadError,
    FileTooLargeError,
    ServerError,
    ServerUnavailableError,
    WaitTimeoutError,
    error_for,
)
from media_cleaner.client.multipart import MultipartUpload, ProgressFn

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
RETRY_STATUSES = frozenset({502, 503, 504})
SMALL_UPLOAD = 8 << 20  # below this, sending the file costs less than asking the server for its limit first
DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=120.0, pool=30.0)
TaskCallback = Callable[[dict[str, Any]], None]


class MediaCleanerClient:
    """Talks to one server. Thread-safe (one pooled httpx.Client); use as a context manager or call `close()`.

    `api_key` is sent as `X-API-Key`; `user_id` (no keys configured) is sent as `X-User-Id` on every request so the
    spec's per-user isolation lets this client read its own tasks. Idempotent requests are retried on connection
    errors and 502/503/504 (`retries` times, exponential backoff).
    """

    def __init__(
        self,
        base_url: str = "http://localhost:8000",
        *,
        api_key: str | None = None,
        user_id: str | None = None,
        timeout: float | httpx.Timeout | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        max_connections: int = 16,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.user_id = user_id
        self.retries = retries
        self.backoff = backoff
        self._upload_limit: int | None | bool = False  # False: not asked yet
        headers = {"User-Agent": "media-cleaner-client/0.1", "Accept": "application/json"}
        if api_key:
            headers["X-API-Key"] = api_key
        if user_id:
            headers["X-User-Id"] = user_id
        self._http = httpx.Client(
            base_url=self.base_url,
            headers=headers,
            timeout=timeout
            if isinstance(timeout, httpx.Timeout)
            else (DEFAULT_TIMEOUT if timeout is None else timeout),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            transport=transport,
            # Not followed: X-API-Key would travel to whatever host a redirect names. A redirect is reported instead.
            follow_redirects=False,
        )

    # -- lifecycle -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MediaCleanerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MediaCleanerClient({self.base_url!r})"

    # -- plumbing ------------------------------------------------------------------------------------------------
    def _raise_for(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        if response.is_redirect:
            target = response.headers.get("location", "?")
            raise ApiError(
                f"the server answers with a redirect to {target}; use that address as the server URL",
                status_code=response.status_code,
                code="redirect",
                method=response.request.method,
                url=str(response.request.url),
            )
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_for(
            response.status_code,
            body,
            reason=response.reason_phrase,
            method=response.request.method,
            url=str(response.request.url),
        )

    def _send(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> httpx.Response:
        """One request with retries; `retry=False` retries only when nothing can have reached the server."""
        attempt = 0
        while True:
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                error: Exception = exc
            except httpx.TransportError as exc:
                if not retry:
                    raise ServerUnavailableError(f"{method} {self.base_url}{path} failed: {_describe(exc)}") from exc
                error = exc
            else:
                if not (retry and response.status_code in RETRY_STATUSES and attempt < self.retries):
                    return response
                error = error_for(response.status_code, _safe_json(response), reason=response.reason_phrase)
            if attempt >= self.retries:
                if isinstance(error, ApiError):
                    raise error
                raise ServerUnavailableError(
                    f"cannot reach the Media Cleaner server at {self.base_url}: {_describe(error)}"
                ) from error
            time.sleep(self.backoff * 2**attempt)
            attempt += 1

    def _json(self, method: str, path: str, *, retry: bool = True, **kwargs: Any) -> Any:
        response = self._send(method, path, retry=retry, **kwargs)
        self._raise_for(response)
        return response.json()

    # -- the API -------------------------------------------------------------------------------------------------
    def upload_video(
        self,
        path: str | os.PathLike[str] | BinaryIO,
        epsilon: float | None = None,
        audio_level: str | None = None,
        user_id: str | None = None,
        webhook_url: str | None = None,
        idempotency_key: str | None = None,
        progress: ProgressFn | None = None,
        *,
        protect_video: bool | None = None,
        protect_audio: bool | None = None,
        filename: str | None = None,
        audio_objective: str | None = None,
        audio_phrase: str | None = None,
    ) -> dict[str, Any]:
        """Upload a video (streamed, never read whole into memory) and queue it; returns the 202 body.

        `path` may be an open binary file (then pass `filename`). `progress(sent, total)` is called as bytes go out.
        With an `idempotency_key` a retry after a lost answer attaches to the same task instead of creating another.
        `audio_objective` is untargeted (default), silence or phrase; phrase needs `audio_phrase`, the text speech
        recognisers should hear. The server checks both and answers 422 on a bad pair.
        """
        fields: dict[str, str] = {}
        if epsilon is not None:
            fields["epsilon"] = repr(float(epsilon))
        if audio_level is not None:
            fields["audio_level"] = str(audio_level)
        if audio_objective is not None:
            fields["audio_objective"] = str(audio_objective)
        if audio_phrase is not None:
            fields["audio_phrase"] = str(audio_phrase)
        if user_id is not None or self.user_id is not None:
            fields["user_id"] = str(user_id if user_id is not None else self.user_id)
        if webhook_url is not None:
            fields["webhook_url"] = webhook_url
        if protect_video is not None:
            fields["protect_video"] = "true" if protect_video else "false"
        if protect_audio is not None:
            fields["protect_audio"] = "true" if protect_audio else "false"
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        if isinstance(path, str | os.PathLike):
            file_path = Path(path)
            if not file_path.is_file():
                raise FileNotFoundError(f"no such file: {file_path}")
            with file_path.open("rb") as fh:
                return self._upload(fh, filename or file_path.name, fields, headers, progress, bool(idempotency_key))
        name = filename or Path(getattr(path, "name", "") or "upload.bin").name
        return self._upload(path, name, fields, headers, progress, bool(idempotency_key))

    def upload_limit(self) -> int | None:
        """The server's largest accepted upload in bytes, from `GET /web/config` (cached); None if not published.

        The server refuses an oversize body from its Content-Length, but the client has pushed the whole file by the
        time it reads that 413; asking first saves sending gigabytes to be refused.
        """
        if self._upload_limit is False:
            try:
                response = self._http.get("/web/config", timeout=10)
                value = response.json().get("max_upload_bytes") if response.status_code == 200 else None
                self._upload_limit = int(value) if isinstance(value, int | float) and value > 0 else None
            except (httpx.HTTPError, ValueError, AttributeError):
                self._upload_limit = None
        return self._upload_limit

    def _upload(
        self,
        fh: BinaryIO,
        filename: str,
        fields: dict[str, str],
        headers: dict[str, str],
        progress: ProgressFn | None,
        retry: bool,
    ) -> dict[str, Any]:
        body = MultipartUpload(fh, filename, fields, progress=progress)
        limit = self.upload_limit() if body.file_size > SMALL_UPLOAD else None
        if limit is not None and body.file_size > limit:
            raise FileTooLargeError(
                f"{filename} is {body.file_size} bytes; the server accepts at most {limit} bytes (max_video_size_gb)",
                status_code=413,
                method="POST",
                url=f"{self.base_url}/upload",
            )
        # A fresh generator per attempt: `_send` may retry, and a consumed generator cannot be replayed.
        attempt = 0
        while True:
            try:
                response = self._http.post("/upload", content=body.stream(), headers={**headers, **body.headers()})
            except httpx.TransportError as exc:
                # Without an idempotency key only a refused connection is safe to repeat (nothing was queued).
                safe = retry or isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if not safe or attempt >= self.retries:
                    raise ServerUnavailableError(f"upload to {self.base_url} failed: {_describe(exc)}") from exc
                time.sleep(self.backoff * 2**attempt)
                attempt += 1
                continue
            # 503 queue_full: nothing was queued, and the server says when to come back.
            wait = _retry_after(response) if response.status_code == 503 else None
            if wait is None or attempt >= self.retries:
                break
            time.sleep(wait)
            attempt += 1
        self._raise_for(response)
        return response.json()

    def get_task(self, task_id: str) -> dict[str, Any]:
        return self._json("GET", f"/task/{_id(task_id)}")

    def list_tasks(
        self,
        user_id: str | None = None,
        status: str | None = None,
        since: str | datetime | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> dict[str, Any]:
        """One page: `{"tasks": [...], "total", "limit", "offset"}`. See `iter_tasks` for all pages."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if user_id is not None or self.user_id is not None:
            params["user_id"] = user_id if user_id is not None else self.user_id
        if status is not None:
            params["status"] = status
        if since is not None:
            params["since"] = since.isoformat() if isinstance(since, datetime) else since
        return self._json("GET", "/tasks", params=params)

    def iter_tasks(self, page_size: int = 100, **filters: Any) -> Iterator[dict[str, Any]]:
        offset = 0
        while True:
            page = self.list_tasks(limit=page_size, offset=offset, **filters)
            tasks = page.get("tasks", [])
            yield from tasks
            offset += len(tasks)
            if not tasks or offset >= int(page.get("total", offset)):
                return

    def wait_for_completion(
        self,
        task_id: str,
        timeout: float | None = 24 * 3600,
        poll_interval: float = 2.0,
        on_update: TaskCallback | None = None,
    ) -> dict[str, Any]:
        """Poll until the task is completed, failed or cancelled and return it; `WaitTimeoutError` after `timeout`.

        Transient outages (server restarting, proxy 502) are ridden out until the deadline: the task row survives
        a restart, so giving up on the first refused connection would be wrong.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        task: dict[str, Any] | None = None
        while True:
            try:
                task = self.get_task(task_id)
            except (ServerUnavailableError, ServerError):
                if deadline is not None and time.monotonic() >= deadline:
                    raise
            else:
                if on_update:
                    on_update(task)
                if task.get("status") in TERMINAL_STATUSES:
                    return task
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    state = f"{task.get('status')} at {task.get('progress', 0):.0f}%" if task else "unknown"
                    raise WaitTimeoutError(
                        f"task {task_id} did not finish within {timeout:g} s (last seen: {state})",
                        task_id=task_id,
                        task=task,
                    )
                time.sleep(min(poll_interval, left))
            else:
                time.sleep(poll_interval)

    def download_result(
        self,
        task_id: str,
        output_path: str | os.PathLike[str] = ".",
        progress: ProgressFn | None = None,
        *,
        max_resumes: int = 5,
    ) -> Path:
        """Stream the protected video to disk and return its path.

        `output_path` is a directory (the server's file name is used) or a file path (it has a suffix and is not an
        existing directory). Data goes to a `.part` file first; if one is left from an interrupted run, or the
        connection drops midway, the download resumes with a Range request instead of starting over.
        """
        out = Path(output_path)
        explicit = out if (out.suffix and not out.is_dir()) else None
        folder = explicit.parent if explicit else out
        folder.mkdir(parents=True, exist_ok=True)
        part = folder / f".{_id(task_id)}.download.part"
        resumes = 0
        while True:
            offset = part.stat().st_size if part.exists() else 0
            try:
                final, done, total = self._download_once(task_id, part, offset, explicit, folder, progress)
            except httpx.TransportError as exc:
                if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) and resumes >= self.retries:
                    raise ServerUnavailableError(
                        f"cannot reach the Media Cleaner server at {self.base_url}: {_describe(exc)}"
                    ) from exc
                if resumes >= max_resumes:
                    raise DownloadError(
                        f"download of {task_id} interrupted ({_describe(exc)}); "
                        f"{part.stat().st_size if part.exists() else 0} bytes kept in {part}, run again to resume"
                    ) from exc
                resumes += 1
                time.sleep(self.backoff * resumes)
                continue
            if total is not None and done < total:
                if resumes >= max_resumes:
                    raise DownloadError(f"download of {task_id} ended at {done} of {total} bytes; kept in {part}")
                resumes += 1
                continue
            os.replace(part, final)
            return final

    def _download_once(
        self,
        task_id: str,
        part: Path,
        offset: int,
        explicit: Path | None,
        folder: Path,
        progress: ProgressFn | None,
    ) -> tuple[Path, int, int | None]:
        headers = {"Range": f"bytes={offset}-", "Accept": "*/*"} if offset else {"Accept": "*/*"}
        with self._http.stream("GET", f"/download/{_id(task_id)}", headers=headers) as response:
            if response.status_code == 416 and offset:  # the part is stale or already complete: start clean
                part.unlink(missing_ok=True)
                return self._download_once(task_id, part, 0, explicit, folder, progress)
            if not response.is_success:
                response.read()
                self._raise_for(response)
            total: int | None = None
            if response.status_code == 206:
                start, total = _content_range(response.headers.get("content-range", ""))
                if start != offset:  # the server resumed somewhere else: do not splice mismatched bytes
                    if not offset:
                        raise DownloadError(f"unexpected partial answer for {task_id}: {response.headers}")
                    response.close()
                    part.unlink(missing_ok=True)
                    return self._download_once(task_id, part, 0, explicit, folder, progress)
                mode = "ab"
            else:
                offset = 0
                mode = "wb"
                length = response.headers.get("content-length")
                total = int(length) if length and length.isdigit() else None
            name = explicit or folder / _filename(response.headers.get("content-disposition", ""), task_id)
            done = offset
            with part.open(mode) as fh:
                if progress:
                    progress(done, total or 0)
                # No chunk_size: httpx would buffer up to it, and bytes buffered when the connection drops are lost.
                for chunk in response.iter_bytes():
                    fh.write(chunk)
                    done += len(chunk)
                    if progress:
                        progress(done, total or 0)
            return name, done, total

    def open_result(self, task_id: str) -> ResultStream:
        """The protected video as a byte stream (e.g. to proxy it from a web app) with the server's file name.

        Errors (not ready, gone, denied) are raised here, before any byte is consumed. Close it or iterate it to
        the end to free the connection.
        """
        request = self._http.build_request("GET", f"/download/{_id(task_id)}", headers={"Accept": "*/*"})
        response = self._http.send(request, stream=True)
        if not response.is_success:
            response.read()
            response.close()
            self._raise_for(response)
        return ResultStream(response, _filename(response.headers.get("content-disposition", ""), task_id))

    def iter_result(self, task_id: str, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        with self.open_result(task_id) as result:
            yield from result.iter_bytes(chunk_size)

    def cancel_task(self, task_id: str) -> dict[str, Any]:
        return self._json("POST", f"/cancel/{_id(task_id)}", retry=False)

    def get_stats(self) -> dict[str, Any]:
        return self._json("GET", "/stats")

    def health(self) -> dict[str, Any]:
        return self._json("GET", "/health")

    def ready(self) -> dict[str, Any]:
        """The readiness check; a 503 'not_ready' answer is returned (not raised): it is a state, not a failure."""
        response = self._send("GET", "/ready", retry=True)
        if response.status_code == 503 and isinstance(_safe_json(response), dict):
            return response.json()
        self._raise_for(response)
        return response.json()

    def cleanup(self, older_than_hours: float | None = None) -> dict[str, Any]:
        params = {} if older_than_hours is None else {"older_than_hours": older_than_hours}
        return self._json("POST", "/cleanup", params=params, retry=False)


class ResultStream:
    """An open download: iterate for bytes; `filename`, `content_type`, `size` come from the response headers."""

    def __init__(self, response: httpx.Response, filename: str) -> None:
        self.response = response
        self.filename = filename
        self.content_type = response.headers.get("content-type", "application/octet-stream")
        length = response.headers.get("content-length")
        self.size = int(length) if length and length.isdigit() else None

    def iter_bytes(self, chunk_size: int = 1 << 16) -> Iterator[bytes]:
        try:
            yield from self.response.iter_bytes(chunk_size)
        finally:
            self.close()

    def __iter__(self) -> Iterator[bytes]:
        return self.iter_bytes()

    def close(self) -> None:
        self.response.close()

    def __enter__(self) -> ResultStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _id(task_id: str) -> str:
    # Task ids are path segments; refusing odd characters keeps a typo from turning into another URL.
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", str(task_id)):
        raise ValueError(f"not a task id: {task_id!r}")
    return str(task_id)


def _retry_after(response: httpx.Response, cap: float = 60.0) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return min(max(float(value), 0.0), cap)
    except ValueError:
        return None


def _safe_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return response.text


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0]


def _content_range(value: str) -> tuple[int, int | None]:
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not match:
        return -1, None
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), total


def _filename(disposition: str, task_id: str) -> str:
    """The server's file name from Content-Disposition (RFC 6266 `filename*` first), reduced to a safe base name."""
    name = ""
    star = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", disposition, re.IGNORECASE)
    if star:
        name = unquote(star.group(2).strip().strip('"'), encoding=star.group(1) or "utf-8", errors="replace")
    else:
        plain = re.search(r'filename\s*=\s*"((?:[^"\\]|\\.)*)"|filename\s*=\s*([^;]+)', disposition, re.IGNORECASE)
        if plain:
            name = (plain.group(1) if plain.group(1) is not None else plain.group(2)).strip()
    name = name.replace("\\", "/").rsplit("/", 1)[-1]
    name = "".join(ch for ch in name if ch.isprintable()).strip(" .")
    return name or f"{task_id}_protected.mp4"
