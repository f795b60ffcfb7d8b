"""Receiver side of Standard Webhooks (https://www.standardwebhooks.com/): verify what the server signs.

Headers: `webhook-id`, `webhook-timestamp` (Unix seconds), `webhook-signature` = space-separated `v1,<base64>`
entries, each `base64(HMAC-SHA256(secret, f"{id}.{timestamp}.{body}"))`. A secret written `whsec_<base64>` is
base64-decoded (the Standard Webhooks convention); any other string is used as its UTF-8 bytes. Several entries let
a sender rotate secrets; the receiver accepts any that matches.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

DEFAULT_TOLERANCE_S = 300.0


class WebhookVerificationError(ValueError):
    """The request is not a valid, fresh, signed webhook from the server; the message says which check failed."""


def secret_bytes(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        return secret
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except binascii.Error as exc:
            raise ValueError("a whsec_ secret must be base64 after the prefix") from exc
    return secret.encode("utf-8")


def sign(secret: str | bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """One `v1,<base64>` signature entry (what a sender puts in `webhook-signature`)."""
    digest = hmac.new(secret_bytes(secret), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def sign_headers(secret: str | bytes, msg_id: str, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three headers for a body: handy for tests and for anyone relaying events."""
    stamp = int(time.time()) if timestamp is None else int(timestamp)
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, body),
    }


def verify_webhook(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Check signature and freshness, then return the parsed JSON event; raise WebhookVerificationError otherwise.

    Verify the raw body bytes exactly as received: re-serialising parsed JSON changes the bytes and the signature.
    The timestamp window (both directions) stops replays of captured requests.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature header")
    try:
        timestamp = int(stamp)
    except ValueError as exc:
        raise WebhookVerificationError(f"webhook-timestamp is not an integer: {stamp!r}") from exc
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s away from now (tolerance {tolerance_s:g} s)"
        )
    expected = sign(secret, msg_id, timestamp, body).encode()
    for candidate in signatures.split():
        version, _, _ = candidate.partition(",")
        if version == "v1" and hmac.compare_digest(expected, candidate.encode()):
            break
    else:
        raise WebhookVerificationError("no v1 signature matches")
    try:
        return json.loads(body)
    except ValueError as exc:
        raise WebhookVerificationError("body is not JSON") from exc


def is_valid_webhook(secret: str | bytes, headers: Mapping[str, str], body: bytes, **kwargs: Any) -> bool:
    """Boolean form of `verify_webhook` for callers that only branch on it."""
    try:
        verify_webhook(secret, headers, body, **kwargs)
    except WebhookVerificationError:
        return False
    return True
