"""Typed client errors. Every HTTP error carries the server's `{"error": {"code", "message"}}` unchanged."""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base class of everything the client raises; `code` is stable, `message` is for people."""

    code = "client_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ApiError(ClientError):
    """The server answered with an error status."""

    code = "api_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str | None = None,
        body: Any = None,
        method: str = "",
        url: str = "",
    ) -> None:
        super().__init__(message, code=code)
        self.status_code = status_code
        self.body = body
        self.method = method
        self.url = url

    def __str__(self) -> str:
        return f"{self.message} (HTTP {self.status_code}, {self.code})"


class BadRequestError(ApiError):
    code = "bad_request"


class EmptyFileError(BadRequestError):
    code = "empty_file"


class AuthenticationError(ApiError):
    code = "unauthorized"


class AccessDeniedError(ApiError):
    code = "access_denied"


class TaskNotFoundError(ApiError):
    code = "not_found"


class ConflictError(ApiError):
    code = "conflict"


class NotReadyError(ConflictError):
    """Download asked for a task that is not completed yet."""

    code = "not_ready"


class NotCancellableError(ConflictError):
    code = "not_cancellable"


class GoneError(ApiError):
    """The result existed but was cleaned up."""

    code = "gone"


class FileTooLargeError(ApiError):
    code = "too_large"


class NotAVideoError(ApiError):
    code = "not_a_video"


class InvalidRequestError(ApiError):
    """Bad parameters (epsilon out of range, unknown audio level...)."""

    code = "validation_error"


class RateLimitedError(ApiError):
    code = "rate_limited"


class ServerError(ApiError):
    code = "server_error"


class ServerUnavailableError(ClientError, ConnectionError):
    """No HTTP answer at all: refused, DNS, TLS, timeout."""

    code = "server_unavailable"


class WaitTimeoutError(ClientError, TimeoutError):
    """`wait_for_completion` gave up; `task` is the last state seen (may be None)."""

    code = "wait_timeout"

    def __init__(self, message: str, *, task_id: str, task: dict[str, Any] | None) -> None:
        super().__init__(message)
        self.task_id = task_id
        self.task = task


class DownloadError(ClientError):
    """The download ended short after all resume attempts; the partial file is kept for the next try."""

    code = "download_incomplete"


_BY_CODE: dict[str, type[ApiError]] = {
    cls.code: cls
    for cls in (
        EmptyFileError,
        AuthenticationError,
        AccessDeniedError,
        TaskNotFoundError,
        NotReadyError,
        NotCancellableError,
        GoneError,
        FileTooLargeError,
        NotAVideoError,
        InvalidRequestError,
        RateLimitedError,
    )
}
_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: AccessDeniedError,
    404: TaskNotFoundError,
    409: ConflictError,
    410: GoneError,
    413: FileTooLargeError,
    415: NotAVideoError,
    422: InvalidRequestError,
    429: RateLimitedError,
}


def error_for(status_code: int, body: Any, *, reason: str = "", method: str = "", url: str = "") -> ApiError:
    """Build the most specific error for an HTTP answer; unknown shapes (a proxy's HTML page) still get a code."""
    code: str | None = None
    message = ""
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            code = str(err.get("code") or "") or None
            message = str(err.get("message") or "")
        elif isinstance(body.get("detail"), str):  # a bare FastAPI HTTPException
            message = body["detail"]
    elif isinstance(body, str) and body.strip():
        message = body.strip().splitlines()[0][:200]
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status_code) or (ServerError if status_code >= 500 else ApiError)
    if not message:
        message = f"{reason or 'HTTP error'} from {method} {url}".strip()
    return cls(message, status_code=status_code, code=code or cls.code, body=body, method=method, url=url)
