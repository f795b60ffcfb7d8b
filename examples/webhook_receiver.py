"""A webhook receiver that verifies Media Cleaner's Standard Webhooks signatures (stdlib HTTP server).

Run it, then upload with `--webhook-url http://<this host>:9000/hooks/media-cleaner`; the server signs each event
with its `webhook_secret` (set the same secret here). Invalid or stale requests get 401, events are handled once
per `webhook-id` (senders retry, so a receiver must be idempotent), and the handler answers fast.

    MEDIA_CLEANER_WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 9000

The server refuses private/loopback webhook targets unless `webhook_allow_private` is on (SSRF guard).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from media_cleaner.client.webhooks import DEFAULT_TOLERANCE_S, WebhookVerificationError, verify_webhook

EventHandler = Callable[[dict[str, Any]], None]
MAX_BODY = 1 << 20


class WebhookServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, address: tuple[str, int], secret: str, on_event: EventHandler, tolerance_s: float = DEFAULT_TOLERANCE_S
    ) -> None:
        super().__init__(address, _Handler)
        self.secret = secret
        self.on_event = on_event
        self.tolerance_s = tolerance_s
        self.seen: set[str] = set()
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/hooks/media-cleaner"


class _Handler(BaseHTTPRequestHandler):
    server: WebhookServer

    def do_POST(self) -> None:  # noqa: N802 (the stdlib's naming)
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY:
            return self._answer(413, "body too large")
        body = self.rfile.read(length)
        try:
            event = verify_webhook(
                self.server.secret, dict(self.headers.items()), body, tolerance_s=self.server.tolerance_s
            )
        except WebhookVerificationError as exc:
            return self._answer(401, str(exc))
        msg_id = self.headers["webhook-id"]
        with self.server.lock:
            duplicate = msg_id in self.server.seen
            self.server.seen.add(msg_id)
        if not duplicate:
            self.server.on_event(event)
        self._answer(200 if duplicate else 204, "duplicate" if duplicate else "")

    def _answer(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: events are printed by the handler
        pass


def print_event(event: dict[str, Any]) -> None:
    data = event.get("data", {})
    print(json.dumps({"type": event.get("type"), "task_id": data.get("task_id"), "status": data.get("status")}))
    sys.stdout.flush()


def serve(
    secret: str, host: str = "127.0.0.1", port: int = 9000, on_event: EventHandler = print_event
) -> WebhookServer:
    """A started receiver (port 0 picks a free one); call `.shutdown()` to stop it."""
    server = WebhookServer((host, port), secret, on_event)
    threading.Thread(target=server.serve_forever, daemon=True, name="webhook-receiver").start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Receive and verify Media Cleaner webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", default=os.environ.get("MEDIA_CLEANER_WEBHOOK_SECRET", ""))
    args = parser.parse_args(argv)
    if not args.secret:
        print("error: pass --secret or set MEDIA_CLEANER_WEBHOOK_SECRET (the server's webhook_secret)", file=sys.stderr)
        return 2
    server = WebhookServer((args.host, args.port), args.secret, print_event)
    print(f"listening on {server.url}", file=sys.stderr)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
