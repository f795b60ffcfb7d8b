"""Split roles on one machine: `media-cleaner api` (no workers) + `media-cleaner worker` sharing the SQLite queue and
storage directories, as the systemd units and compose file run them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from server_harness import REPO, ServerProcess

CLIP = REPO.parent / "shared" / "data" / "video" / "grid_brbk7n.mpg"


@pytest.mark.skipif(not CLIP.is_file(), reason="shared data missing")
def test_api_node_and_worker_node(tmp_path: Path) -> None:
    api = ServerProcess(tmp_path, workers=0).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_CLEANER_")} | api.env
    cli = [sys.executable, "-c", "import sys; from media_cleaner.cli import main; sys.exit(main())"]
    worker = subprocess.Popen(
        [*cli, "worker", "--concurrency", "1", "--device", "cpu"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        task_id = api.upload(CLIP, protect_video="false", protect_audio="false")["task_id"]
        task = api.wait(task_id, timeout=240)
        assert task["status"] == "completed", task
        assert api.http.get("/ready").status_code == 200  # the worker node registered with models loaded
        assert api.http.get("/stats").json()["workers"]["alive"] == 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            code = worker.wait(60)
        finally:
            try:
                os.killpg(worker.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        assert api.stop() == 0
    assert code == 0, worker.stdout.read() if worker.stdout else ""
    log = (tmp_path / "server_logs" / "queue.log").read_text()
    assert f"[task={task_id}] completed" in log
