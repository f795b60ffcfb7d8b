"""Streamed multipart parsing straight into storage: bytes are counted as they arrive and reading stops at the
limit (413), so neither memory nor disk ever holds more than `max_video_size_gb` (+ one chunk) of an upload.

Starlette's `UploadFile` would spool the whole body to a temp file before the route runs; this does not.
"""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field

from fastapi import Request
from python_multipart.multipart import MultipartParser, parse_options_header

from media_cleaner.api.errors import ApiError
from media_cleaner.storage import Storage, UploadSink

MAX_FIELD_BYTES = 64 * 1024  # form fields other than the file are short
MAX_FIELDS = 32
FORM_OVERHEAD_BYTES = 1024 * 1024  # boundaries, headers and small fields on top of the file itself


class _TooLarge(Exception):
    pass


class _BadForm(Exception):
    pass


@dataclass
class ParsedUpload:
    fields: dict[str, str] = field(default_factory=dict)
    sink: UploadSink | None = None
    filename: str | None = None

    @property
    def size(self) -> int:
        return self.sink.size if self.sink else 0

    def discard(self) -> None:
        if self.sink is not None:
            self.sink.abort()


def too_large(limit: int) -> ApiError:
    # Connection: close makes uvicorn drop the connection after answering instead of draining the rest of the
    # body to keep it alive; the client learns at once and no more bytes are read.
    return ApiError(
        413,
        "too_large",
        f"File exceeds the maximum size of {limit} bytes (max_video_size_gb)",
        headers={"Connection": "close"},
    )


async def receive_upload(
    request: Request, storage: Storage, *, max_bytes: int, stored_name: Callable[[str | None], str]
) -> ParsedUpload:
    """Parse the request body; the part named `file` streams into `storage.new_upload(stored_name(filename))`."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise ApiError(422, "validation_error", "Expected a multipart/form-data body with a 'file' part")
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + FORM_OVERHEAD_BYTES:
        raise too_large(max_bytes)  # refused before a single byte of the body is read

    result = ParsedUpload()
    state: dict = {"headers": {}, "field": b"", "name": None, "is_file": False, "header": b"", "value": b""}

    def on_part_begin() -> None:
        state.update(headers={}, field=b"", name=None, is_file=False)

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["header"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["header"].decode("latin-1").lower()] = state["value"]
        state["header"], state["value"] = b"", b""

    def on_headers_finished() -> None:
        _disp, options = parse_options_header(state["headers"].get("content-disposition", b""))
        name = options.get(b"name", b"").decode("utf-8", "replace")
        state["name"] = name
        if name == "file":
            if result.sink is not None:
                raise _BadForm("only one 'file' part is accepted")
            raw = options.get(b"filename")
            result.filename = raw.decode("utf-8", "replace") if raw is not None else None
            result.sink = storage.new_upload(stored_name(result.filename))
            state["is_file"] = True
        elif len(result.fields) >= MAX_FIELDS:
            raise _BadForm("too many form fields")

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["is_file"]:
            assert result.sink is not None
            if result.sink.size + (end - start) > max_bytes:
                raise _TooLarge()
            result.sink.write(data[start:end])
        else:
            state["field"] += data[start:end]
            if len(state["field"]) > MAX_FIELD_BYTES:
                raise _BadForm(f"form field {state['name']!r} is too long")

    def on_part_end() -> None:
        if not state["is_file"] and state["name"]:
            result.fields[state["name"]] = state["field"].decode("utf-8", "replace")

    parser = MultipartParser(
        boundary,
        {
            "on_part_begin": on_part_begin,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
    except _TooLarge:
        result.discard()
        raise too_large(max_bytes) from None
    except _BadForm as exc:
        result.discard()
        raise ApiError(422, "validation_error", str(exc)) from None
    except ApiError:
        result.discard()
        raise
    except OSError as exc:
        result.discard()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ApiError(507, "insufficient_storage", "The server has no space left for this upload") from None
        raise ApiError(500, "storage_error", f"Could not store the upload: {exc.strerror or exc}") from None
    except Exception as exc:  # malformed multipart, client disconnect
        result.discard()
        raise ApiError(400, "bad_request", f"Could not read the upload: {type(exc).__name__}: {exc}") from None
    return result
