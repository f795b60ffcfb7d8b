"""A streamed multipart/form-data body with an exact Content-Length and byte-level progress.

httpx can stream files too, but gives no progress hook and falls back to chunked encoding for some file objects;
proxies (nginx `client_max_body_size`) and the server's early 413 work best with a known length.
"""

from __future__ import annotations

import mimetypes
import os
import secrets
from collections.abc import Callable, Iterator
from typing import BinaryIO

ProgressFn = Callable[[int, int], None]  # (bytes_done, bytes_total)
CHUNK = 1 << 20


def _quote(value: str) -> bytes:
    # UTF-8 in a quoted-string with backslash escapes (python-multipart, werkzeug and httpx agree on it); a newline
    # cannot live in a header at all, so it becomes a space.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\r", " ").replace("\n", " ")
    return escaped.encode("utf-8")


class MultipartUpload:
    """One file part plus text fields. `stream()` may be called again for a retry (the file is re-read)."""

    def __init__(
        self,
        fileobj: BinaryIO,
        filename: str,
        fields: dict[str, str],
        *,
        field_name: str = "file",
        content_type: str | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.fileobj = fileobj
        self.start = fileobj.tell()
        self.file_size = _remaining_size(fileobj)
        self.boundary = secrets.token_hex(16)
        self.progress = progress
        ctype = content_type or mimetypes.guess_type(filename)[0] or "application/octet-stream"
        b = self.boundary.encode()
        head = b""
        for name, value in fields.items():
            head += b"--" + b + b'\r\nContent-Disposition: form-data; name="' + _quote(name) + b'"\r\n\r\n'
            head += value.encode("utf-8") + b"\r\n"
        head += b"--" + b + b'\r\nContent-Disposition: form-data; name="' + _quote(field_name) + b'"; filename="'
        head += _quote(filename) + b'"\r\nContent-Type: ' + ctype.encode("latin-1") + b"\r\n\r\n"
        self.head = head
        self.tail = b"\r\n--" + b + b"--\r\n"

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def content_length(self) -> int:
        return len(self.head) + self.file_size + len(self.tail)

    def headers(self) -> dict[str, str]:
        return {"Content-Type": self.content_type, "Content-Length": str(self.content_length)}

    def stream(self) -> Iterator[bytes]:
        total = self.content_length
        self.fileobj.seek(self.start)
        sent = len(self.head)
        yield self.head
        remaining = self.file_size
        while remaining > 0:
            chunk = self.fileobj.read(min(CHUNK, remaining))
            if not chunk:
                raise OSError(f"file shrank while uploading ({remaining} bytes missing)")
            remaining -= len(chunk)
            sent += len(chunk)
            yield chunk
            if self.progress:
                self.progress(sent, total)
        yield self.tail
        if self.progress:
            self.progress(total, total)


def _remaining_size(fileobj: BinaryIO) -> int:
    try:
        return os.fstat(fileobj.fileno()).st_size - fileobj.tell()
    except (AttributeError, OSError, ValueError):
        pos = fileobj.tell()
        end = fileobj.seek(0, os.SEEK_END)
        fileobj.seek(pos)
        return end - pos
