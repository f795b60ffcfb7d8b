"""Python client of the Media Cleaner REST API: `MediaCleanerClient`, typed errors, batch runs, webhook checks.

Standalone on purpose: it needs httpx and tqdm only, never torch or the server packages.
"""

from media_cleaner.client.api import TERMINAL_STATUSES, MediaCleanerClient
from media_cleaner.client.batch import BatchItem, BatchRunner
from media_cleaner.client.errors import (
    AccessDeniedError,
    ApiError,
    AuthenticationError,
    BadRequestError,
    ClientError,
    ConflictError,
    DownloadError,
    EmptyFileError,
    FileTooLargeError,
    GoneError,
    InvalidRequestError,
    NotAVideoError,
    NotCancellableError,
    NotReadyError,
    RateLimitedError,
    ServerError,
    ServerUnavailableError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from media_cleaner.client.webhooks import WebhookVerificationError, verify_webhook

__all__ = [
    "TERMINAL_STATUSES",
    "AccessDeniedError",
    "ApiError",
    "AuthenticationError",
    "BadRequestError",
    "BatchItem",
    "BatchRunner",
    "ClientError",
    "ConflictError",
    "DownloadError",
    "EmptyFileError",
    "FileTooLargeError",
    "GoneError",
    "InvalidRequestError",
    "MediaCleanerClient",
    "NotAVideoError",
    "NotCancellableError",
    "NotReadyError",
    "RateLimitedError",
    "ServerError",
    "ServerUnavailableError",
    "TaskNotFoundError",
    "WaitTimeoutError",
    "WebhookVerificationError",
    "verify_webhook",
]
