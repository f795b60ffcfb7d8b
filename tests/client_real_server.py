"""The REAL server (`python run_server.py`, spawned workers) for the client end-to-end tests, started once per run.

Webhooks are on (a known secret, private targets allowed) so the example receiver can be checked end to end.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parent.parent
WEBHOOK_SECRET = "whsec_" + "bWVkaWEtY2xlYW5lci1jbGllbnQtdGVzdHM="  # base64("media-cleaner-client-tests")


class RealServer:
    def __init__(self, base_dir: Path, workers: int = 1, env: dict[str, str] | None = None) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.base_dir = base_dir
        self.workers = workers
        self.extra_env = env or {}
        self.log = base_dir / "run_server.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 240) -> RealServer:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_CLEANER_")}
        env.update(
            MEDIA_CLEANER_BASE_DIR=str(self.base_dir),
            MEDIA_CLEANER_MODEL_CACHE_DIR=str(REPO / ".venv" / "model_cache"),
            MEDIA_CLEANER_WEBHOOK_SECRET=WEBHOOK_SECRET,
            MEDIA_CLEANER_WEBHOOK_ALLOW_PRIVATE="true",
            MEDIA_CLEANER_POLL_INTERVAL_SECONDS="0.2",
            MEDIA_CLEANER_TORCH_THREADS="1",
            MEDIA_CLEANER_VIDEO_PRESET="ultrafast",
        )
        env.update(self.extra_env)
        cmd = [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(self.port)]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                cmd + ["--workers", str(self.workers)],
                cwd=REPO,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        probe = "/ready" if self.workers else "/health"  # /ready wants a worker with models loaded
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"run_server.py exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(self.url + probe, timeout=5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


_shared: RealServer | None = None
_failed: str | None = None


def _stop_and_clean(server: RealServer) -> None:
    server.stop()
    shutil.rmtree(server.base_dir, ignore_errors=True)


def shared_real_server() -> RealServer:
    """One real server for all client/example e2e tests in this pytest process (start-up loads models)."""
    global _shared, _failed
    if not (REPO / "run_server.py").exists():
        pytest.skip("run_server.py not present")
    if _failed:  # do not pay the start-up timeout again for every test
        pytest.fail(_failed)
    if _shared is None:
        server = RealServer(Path(tempfile.mkdtemp(prefix="mc-client-e2e-")))
        try:
            _shared = server.start()
        except (RuntimeError, TimeoutError) as exc:
            _failed = str(exc)
            raise
        atexit.register(_stop_and_clean, _shared)
    return _shared
