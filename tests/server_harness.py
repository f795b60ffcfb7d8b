"""A real server for end-to-end tests: `python run_server.py` on 127.0.0.1 (free port) with spawned workers."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from media_cleaner.config import load_settings
from media_cleaner.jobs import TaskStore, open_store

REPO = Path(__file__).resolve().parent.parent
MODEL_CACHE = REPO / ".venv" / "model_cache"
TERMINAL = {"completed", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    def __init__(self, base_dir: Path, *, workers: int = 1, env: dict[str, Any] | None = None) -> None:
        self.base_dir = base_dir
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "MEDIA_CLEANER_BASE_DIR": str(base_dir),
            "MEDIA_CLEANER_MODEL_CACHE_DIR": str(MODEL_CACHE),
            "MEDIA_CLEANER_HEARTBEAT_TIMEOUT_SECONDS": "3",
            "MEDIA_CLEANER_POLL_INTERVAL_SECONDS": "0.2",
            "MEDIA_CLEANER_TORCH_THREADS": "1",
            "MEDIA_CLEANER_VIDEO_PRESET": "ultrafast",
            **{k: str(v) for k, v in (env or {}).items()},
        }
        self.log_path = base_dir / "run_server.out"
        self.proc: subprocess.Popen | None = None
        self.leftover: list[int] = []  # processes of the server's session still alive after a clean stop
        self.http = httpx.Client(base_url=self.url, timeout=60)

    def start(self, timeout: float = 180) -> ServerProcess:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_CLEANER_")} | self.env
        cmd = [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--workers", str(self.workers)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        path = "/ready" if self.workers else "/health"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if self.http.get(path).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"server not ready after {timeout} s:\n{self.output()}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 90) -> int | None:
        """SIGTERM and wait: the clean shutdown path."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout)
            deadline = time.monotonic() + 10  # the resource tracker exits a moment after its parent
            while (left := self.children()) and time.monotonic() < deadline:
                time.sleep(0.2)
            self.leftover = left
            return code
        finally:
            self.kill()

    def kill(self) -> None:
        """SIGKILL the whole process group (server and workers): a crash."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)

    def children(self) -> list[int]:
        """Live processes of the server's session (workers, resource tracker), excluding the server itself."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            state, session = fields[0], int(fields[3])
            if self.proc and session == self.proc.pid and int(entry.name) != self.proc.pid and state != "Z":
                pids.append(int(entry.name))
        return pids

    # -- helpers over the real DB and API ----------------------------------------------------------------------
    def store(self) -> TaskStore:
        return open_store(load_settings(base_dir=self.base_dir))

    def worker_pid(self, task_id: str) -> int | None:
        from sqlalchemy import select

        from media_cleaner.jobs.models import WorkerRow

        store = self.store()
        with store.engine.connect() as conn:
            return conn.execute(select(WorkerRow.pid).where(WorkerRow.current_task_id == task_id)).scalar()

    def upload(self, path: Path, **fields: Any) -> dict:
        headers = fields.pop("headers", {})
        with open(path, "rb") as fh:
            r = self.http.post(
                "/upload", files={"file": (path.name, fh)}, data={k: str(v) for k, v in fields.items()}, headers=headers
            )
        assert r.status_code == 202, r.text
        return r.json()

    def task(self, task_id: str, **params: Any) -> dict:
        r = self.http.get(f"/task/{task_id}", params=params)
        assert r.status_code == 200, r.text
        return r.json()

    def wait(self, task_id: str, until: Any = None, timeout: float = 300, **params: Any) -> dict:
        """Poll until `until(task)` (default: a terminal state)."""
        until = until or (lambda t: t["status"] in TERMINAL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            task = self.task(task_id, **params)
            if until(task):
                return task
            time.sleep(0.2)
        raise TimeoutError(f"task {task_id} stuck at {task}\n{self.output()[-4000:]}")
