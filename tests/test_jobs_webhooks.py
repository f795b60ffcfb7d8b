"""Webhook signing (Standard Webhooks reference vector), SSRF guard, and the dispatcher against a real receiver."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from media_cleaner.config import Settings
from media_cleaner.jobs import TaskStore, open_store
from media_cleaner.jobs.webhooks import WebhookDispatcher, WebhookTargetError, backoff, check_target, sign, verify


def test_signature_matches_the_standard_webhooks_reference_vector() -> None:
    # The example from the Standard Webhooks specification / reference libraries.
    signature = sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_verify_accepts_good_and_rejects_tampered() -> None:
    now = int(time.time())
    body = b'{"a":1}'
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(now),
        "webhook-signature": sign("s3cret", "msg_1", now, body),
    }
    assert verify("s3cret", headers, body)
    assert not verify("s3cret", headers, b'{"a":2}')
    assert not verify("other", headers, body)
    old = dict(headers, **{"webhook-timestamp": str(now - 3600)})
    assert not verify("s3cret", old, body)


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://localhost:8080/x",
        "http://10.1.2.3/x",
        "http://169.254.169.254/latest",
        "http://[::1]/x",
        "ftp://example.org/x",
        "http://user:pw@example.org/x",
        "not a url",
    ],
)
def test_private_and_odd_targets_are_refused(url: str) -> None:
    with pytest.raises(WebhookTargetError):
        check_target(url, allow_private=False)


def test_public_literal_and_allowed_private_pass() -> None:
    check_target("https://93.184.215.14/hook", allow_private=False)  # a public address literal: no DNS needed
    check_target("http://127.0.0.1:9/hook", allow_private=True)


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff(50) == 3600.0


class _Hook(BaseHTTPRequestHandler):
    status = 200
    seen: list[tuple[dict, bytes]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hook.seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
        self.send_response(_Hook.status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def receiver():
    _Hook.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def _cancelled_task_with_hook(store: TaskStore, url: str) -> str:
    store.create(
        id="t1",
        original_filename="a.mp4",
        input_name="t1_a.mp4",
        output_name="t1_a_protected.mp4",
        download_name="a_protected.mp4",
        input_size_bytes=1,
        epsilon=0.1,
        audio_level="weak",
        webhook_url=url,
    )
    store.cancel("t1")
    return "t1"


def test_dispatcher_delivers_signed_event(settings: Settings, receiver: str) -> None:
    settings = settings.model_copy(update={"webhook_allow_private": True, "webhook_secret": "s3cret"})
    store = open_store(settings)
    _cancelled_task_with_hook(store, receiver)
    dispatcher = WebhookDispatcher(settings, store)
    _Hook.status = 200
    assert dispatcher.run_once() == 1
    headers, body = _Hook.seen[0]
    assert verify("s3cret", headers, body)
    assert json.loads(body)["type"] == "task.cancelled"
    assert store.webhook_deliveries("t1")[0].delivered_at is not None
    assert dispatcher.run_once() == 0  # delivered once, not again


def test_dispatcher_gives_up_after_max_attempts(settings: Settings, receiver: str) -> None:
    settings = settings.model_copy(update={"webhook_allow_private": True, "webhook_max_attempts": 1})
    store = open_store(settings)
    _cancelled_task_with_hook(store, receiver)
    _Hook.status = 503
    WebhookDispatcher(settings, store).run_once()
    delivery = store.webhook_deliveries("t1")[0]
    assert delivery.dead and delivery.delivered_at is None and delivery.last_error == "HTTP 503"
    assert "webhook-signature" not in _Hook.seen[0][0]  # no secret configured: sent unsigned


def test_dispatcher_rechecks_the_target_at_send_time(settings: Settings, receiver: str, tmp_path: Path) -> None:
    store = open_store(settings)  # webhook_allow_private is off: the loopback receiver must not be called
    _cancelled_task_with_hook(store, receiver)
    WebhookDispatcher(settings, store).run_once()
    delivery = store.webhook_deliveries("t1")[0]
    assert delivery.dead and "non-public" in delivery.last_error
    assert _Hook.seen == []
