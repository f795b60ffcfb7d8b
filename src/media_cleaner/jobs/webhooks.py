"""Webhooks: Standard Webhooks signing, SSRF guard, and a dispatcher thread draining the durable outbox.

Signature: `webhook-signature: v1,<base64 HMAC-SHA256(secret, "<webhook-id>.<webhook-timestamp>.<body>")>`.
A secret written as `whsec_<base64>` is decoded (the Standard Webhooks convention); any other string is used as
UTF-8 bytes.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import logging
import socket
import threading
import time
from datetime import timedelta
from urllib.parse import urlsplit

import httpx

from media_cleaner.config import Settings
from media_cleaner.jobs.models import utcnow
from media_cleaner.jobs.store import TaskStore
from media_cleaner.logs import QUEUE_LOGGER

log = logging.getLogger(QUEUE_LOGGER + ".webhooks")
BACKOFF_BASE_S = 2.0
BACKOFF_MAX_S = 3600.0
LEASE = timedelta(minutes=2)  # longer than one delivery attempt can take


class WebhookTargetError(ValueError):
    """The URL is malformed or points somewhere the server must not call."""


def secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret.removeprefix("whsec_"))
    return secret.encode("utf-8")


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def verify(secret: str, headers: dict[str, str], body: bytes, tolerance_s: float = 300) -> bool:
    """Receiver-side check (used by tests and the example receiver): any `v1,` signature may match."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = lower.get("webhook-id"), lower.get("webhook-timestamp"), lower.get("webhook-signature")
    if not (msg_id and stamp and signatures) or abs(time.time() - int(stamp)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(stamp), body)
    return any(hmac.compare_digest(expected, candidate) for candidate in signatures.split())


def check_target(url: str, allow_private: bool) -> None:
    """Refuse non-HTTP(S) URLs and, unless allowed, hosts resolving to private/loopback/link-local addresses."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise WebhookTargetError("webhook_url must be an absolute http(s) URL")
    if parts.username or parts.password:
        raise WebhookTargetError("webhook_url must not carry credentials")
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
    except socket.gaierror as exc:
        raise WebhookTargetError(f"webhook host {parts.hostname!r} does not resolve") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%")[0])
        if not address.is_global or address.is_multicast:
            raise WebhookTargetError(
                f"webhook host {parts.hostname!r} resolves to a non-public address ({address}); "
                "set webhook_allow_private to allow it"
            )


def backoff(attempt: int) -> float:
    """2 s, 4 s, 8 s... capped at an hour."""
    return min(BACKOFF_BASE_S * 2 ** max(attempt - 1, 0), BACKOFF_MAX_S)


class WebhookDispatcher:
    """Background thread: leases due deliveries, POSTs them, records success or schedules a retry."""

    def __init__(self, settings: Settings, store: TaskStore, interval_s: float = 0.5) -> None:
        self.settings = settings
        self.store = store
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        # Redirects are not followed: a public URL must not bounce the server into the private network.
        self._client = httpx.Client(timeout=settings.webhook_timeout_seconds, follow_redirects=False)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="webhook-dispatcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(timeout=5)
        self._client.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # the dispatcher must outlive a DB hiccup
                log.exception("webhook dispatcher iteration failed")
            self._stop.wait(self.interval_s)

    def run_once(self) -> int:
        sent = 0
        for delivery in self.store.lease_webhooks(LEASE):
            if self._stop.is_set():
                break
            self._deliver(delivery)
            sent += 1
        return sent

    def _deliver(self, delivery) -> None:  # type: ignore[no-untyped-def]
        extra = {"task_id": delivery.task_id}
        body = delivery.payload_json.encode("utf-8")
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "media-cleaner-webhooks/1",
            "webhook-id": delivery.id,
            "webhook-timestamp": str(stamp),
        }
        if self.settings.webhook_secret:
            headers["webhook-signature"] = sign(self.settings.webhook_secret, delivery.id, stamp, body)
        error: str | None = None
        try:
            check_target(delivery.url, self.settings.webhook_allow_private)  # again: DNS may have changed
            response = self._client.post(delivery.url, content=body, headers=headers)
            if 200 <= response.status_code < 300:
                self.store.webhook_result(delivery.id, ok=True)
                log.info(
                    "webhook %s delivered to %s (%s)", delivery.event, delivery.url, response.status_code, extra=extra
                )
                return
            error = f"HTTP {response.status_code}"
        except WebhookTargetError as exc:
            self.store.webhook_result(delivery.id, ok=False, error=str(exc))
            log.warning("webhook %s refused: %s", delivery.event, exc, extra=extra)
            return
        except httpx.HTTPError as exc:
            error = f"{type(exc).__name__}: {exc}"
        if delivery.attempts >= self.settings.webhook_max_attempts:
            self.store.webhook_result(delivery.id, ok=False, error=error)
            log.warning(
                "webhook %s to %s gave up after %d attempts: %s",
                delivery.event,
                delivery.url,
                delivery.attempts,
                error,
                extra=extra,
            )
            return
        retry_at = utcnow() + timedelta(seconds=backoff(delivery.attempts))
        self.store.webhook_result(delivery.id, ok=False, error=error, retry_at=retry_at)
        log.info(
            "webhook %s attempt %d failed (%s); retry at %s",
            delivery.event,
            delivery.attempts,
            error,
            retry_at.isoformat(),
            extra=extra,
        )
