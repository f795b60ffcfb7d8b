"""Who is asking: API keys when configured (the key's user owns the task), else the spec's optional user_id."""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from fastapi import Request

from media_cleaner.api.errors import ACCESS_DENIED, ApiError
from media_cleaner.config import Settings
from media_cleaner.jobs import Task


@dataclass(frozen=True)
class Principal:
    user_id: str | None
    authenticated: bool  # True when API keys are on and a valid key was sent


def _presented_key(request: Request) -> str | None:
    key = request.headers.get("x-api-key")
    if key:
        return key.strip()
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return None


def principal(request: Request) -> Principal:
    """FastAPI dependency. With keys on: 401 without a known key. Without keys: user from query/header."""
    settings: Settings = request.app.state.settings
    if settings.api_keys:
        presented = _presented_key(request)
        if presented:
            for key, user in settings.api_keys.items():
                if hmac.compare_digest(presented.encode(), key.encode()):
                    return Principal(user_id=user, authenticated=True)
        raise ApiError(
            401,
            "unauthorized",
            "A valid API key is required (X-API-Key or Authorization: Bearer)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    user = request.query_params.get("user_id") or request.headers.get("x-user-id") or None
    return Principal(user_id=user, authenticated=False)


def check_access(who: Principal, task: Task) -> None:
    """A task with an owner is visible only to that owner (403 otherwise); ownerless tasks to everyone
    (without keys)."""
    if who.authenticated:
        if task.user_id != who.user_id:
            raise ApiError(*ACCESS_DENIED)
        return
    if task.user_id is not None and task.user_id != who.user_id:
        raise ApiError(*ACCESS_DENIED)
