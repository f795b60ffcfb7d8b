"""Typed errors shared by the engine, the server and the CLI. Each carries a stable machine code."""

from __future__ import annotations


class MediaCleanerError(Exception):
    """Base class; `code` is stable and safe to show to users and return in JSON."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidMediaError(MediaCleanerError):
    """The input cannot be read as a video (empty, truncated, not media, absurd header...)."""

    code = "invalid_media"


class UnsupportedMediaError(MediaCleanerError):
    """The input is media but something in it is not supported (codec, stream layout)."""

    code = "unsupported_media"


class ModelNotAvailableError(MediaCleanerError):
    """Model weights cannot be resolved; the message says what is missing and how to get it."""

    code = "model_missing"


class ConfigError(MediaCleanerError):
    code = "config_error"


class Cancelled(MediaCleanerError):
    """Raised from inside a long operation when its cancel token is set."""

    code = "cancelled"
