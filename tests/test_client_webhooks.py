"""Standard Webhooks verification (media_cleaner.client.webhooks): signatures, rotation, tolerance, tampering."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import pytest

from media_cleaner.client.webhooks import (
    WebhookVerificationError,
    is_valid_webhook,
    sign,
    sign_headers,
    verify_webhook,
)

BODY = json.dumps({"type": "task.completed", "data": {"task_id": "a1b2c3d4e5f6"}}).encode()


def test_signature_matches_the_standard_construction():
    # Independent construction of the spec: base64(HMAC-SHA256(secret, "id.timestamp.body")).
    expected = base64.b64encode(hmac.new(b"s3cret", b"msg_1.1700000000." + BODY, hashlib.sha256).digest()).decode()
    assert sign("s3cret", "msg_1", 1700000000, BODY) == "v1," + expected
    # whsec_ secrets are base64 of the key bytes.
    assert sign("whsec_" + base64.b64encode(b"s3cret").decode(), "msg_1", 1700000000, BODY) == "v1," + expected


def test_verify_accepts_fresh_signed_event_and_returns_it():
    headers = sign_headers("s3cret", "msg_2", BODY)
    assert verify_webhook("s3cret", headers, BODY)["data"]["task_id"] == "a1b2c3d4e5f6"
    # Header names are case-insensitive; several signatures (secret rotation) are space-separated.
    rotated = {
        "Webhook-Id": headers["webhook-id"],
        "Webhook-Timestamp": headers["webhook-timestamp"],
        "Webhook-Signature": "v1,AAAA " + headers["webhook-signature"],
    }
    assert verify_webhook("s3cret", rotated, BODY)["type"] == "task.completed"


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda h, b: (h, b.replace(b"completed", b"failed")), "no v1 signature"),
        (lambda h, b: ({**h, "webhook-id": "other"}, b), "no v1 signature"),
        (lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b), "missing"),
        (lambda h, b: ({**h, "webhook-timestamp": "soon"}, b), "not an integer"),
        (lambda h, b: ({**h, "webhook-signature": h["webhook-signature"].replace("v1,", "v2,")}, b), "no v1"),
    ],
)
def test_verify_rejects_tampering(mutate, reason):
    headers, body = mutate(sign_headers("s3cret", "msg_3", BODY), BODY)
    with pytest.raises(WebhookVerificationError, match=reason):
        verify_webhook("s3cret", headers, body)
    assert not is_valid_webhook("s3cret", headers, body)


def test_wrong_secret_and_timestamp_tolerance():
    old = int(time.time()) - 600
    headers = sign_headers("s3cret", "msg_4", BODY, timestamp=old)
    assert not is_valid_webhook("other", sign_headers("s3cret", "msg_4", BODY), BODY)
    with pytest.raises(WebhookVerificationError, match="tolerance 300"):
        verify_webhook("s3cret", headers, BODY)  # a replay ten minutes later
    assert verify_webhook("s3cret", headers, BODY, tolerance_s=900)
    future = sign_headers("s3cret", "msg_5", BODY, timestamp=int(time.time()) + 600)
    assert not is_valid_webhook("s3cret", future, BODY)
