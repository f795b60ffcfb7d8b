"""Progress callbacks and cooperative cancellation for long operations."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol

from media_cleaner.errors import Cancelled


class ProgressCallback(Protocol):
    def __call__(self, fraction: float, phase: str) -> None: ...


def no_progress(fraction: float, phase: str) -> None:
    """Default callback: ignores progress."""


class CancelToken:
    """Checked between batches; `check()` raises `Cancelled` once `cancel()` was called or `probe` says so.

    `probe` lets a worker poll an external source of truth (the task row) without threads.
    """

    def __init__(self, probe: Callable[[], bool] | None = None) -> None:
        self._event = threading.Event()
        self._probe = probe

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        if not self._event.is_set() and self._probe is not None and self._probe():
            self._event.set()
        return self._event.is_set()

    def check(self) -> None:
        if self.cancelled:
            raise Cancelled("operation cancelled")


def scaled(progress: ProgressCallback, start: float, end: float) -> ProgressCallback:
    """Map a sub-operation's 0..1 progress into [start, end] of the parent's."""

    def report(fraction: float, phase: str) -> None:
        progress(start + (end - start) * min(max(fraction, 0.0), 1.0), phase)

    return report
