"""The storage interface the API and workers use. Local directories today; a shared path or S3 fits behind it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Literal

Area = Literal["input", "output", "temp"]


class UploadSink(ABC):
    """Receives an upload chunk by chunk; nothing is visible in the input area until `commit()`."""

    size: int = 0

    @abstractmethod
    def write(self, chunk: bytes) -> None: ...

    @abstractmethod
    def commit(self) -> Path:
        """Make the upload visible under its final name; returns a local path the prober can read."""

    @abstractmethod
    def abort(self) -> None:
        """Drop whatever was written (oversize, client gone, validation failed)."""

    @property
    @abstractmethod
    def path(self) -> Path:
        """Local path of the bytes written so far (probing happens before commit when useful)."""


class Storage(ABC):
    """Input, output and temp areas. Names are already sanitised (see `names`)."""

    @abstractmethod
    def new_upload(self, name: str) -> UploadSink: ...

    @abstractmethod
    def local_path(self, area: Area, name: str) -> Path:
        """A path on this machine for `name` in `area` (a remote backend would download into temp first)."""

    @abstractmethod
    def work_dir(self, task_id: str) -> Path:
        """A private scratch directory; workers key it `<task id>.<attempt>` so two runs never share one."""

    @abstractmethod
    def clear_work_dir(self, task_id: str) -> None:
        """Remove that directory; given a bare task id, every attempt's directory."""

    @abstractmethod
    def publish_output(self, produced: Path, name: str) -> Path:
        """Move a finished output from the work dir into the output area atomically."""

    @abstractmethod
    def size(self, area: Area, name: str) -> int | None:
        """Size in bytes, None when absent."""

    @abstractmethod
    def delete(self, area: Area, name: str) -> int:
        """Remove; returns bytes freed (0 when absent)."""

    @abstractmethod
    def usage(self) -> dict[str, int]:
        """`input_bytes`, `output_bytes`, `temp_bytes`, `free_bytes`."""

    def usage_free(self) -> int:
        """Free bytes where uploads and outputs go (cheap: no directory walk)."""
        return self.usage()["free_bytes"]

    @abstractmethod
    def check_writable(self) -> dict[str, bool]:
        """Per-area writability, for readiness checks."""

    @abstractmethod
    def sweep_temp(self, older_than_s: float) -> int:
        """Delete temp leftovers older than `older_than_s`; returns bytes freed."""
