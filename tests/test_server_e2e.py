"""End to end: a real uvicorn (`python run_server.py`) on 127.0.0.1 with real spawned worker processes.

Queue mechanics use protect_video=false/protect_audio=false (a real decode + H.264 encode, no models) to stay
cheap; one test runs the full protection through the Python client.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from media_cleaner.media import probe
from server_harness import ServerProcess

SECRET = "whsec_" + base64.b64encode(b"test-secret-0123456789").decode()
FAST = {"protect_video": "false", "protect_audio": "false"}


@pytest.fixture(scope="module")
def clip(shared_data: Path) -> Path:
    path = shared_data / "video" / "grid_bbaf2n.mpg"
    if not path.is_file():
        pytest.skip("shared data missing")
    return path


@pytest.fixture(scope="module")
def long_clip(shared_data: Path) -> Path:
    """~10-60 s of real work without models: 11 s of 1080p decoded, re-encoded and measured."""
    path = shared_data / "bench" / "talking_crowd_1080p.mp4"
    if not path.is_file():
        pytest.skip("shared bench clip missing")
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    srv = ServerProcess(
        tmp_path_factory.mktemp("server"),
        workers=2,
        env={
            "MEDIA_CLEANER_WEBHOOK_SECRET": SECRET,
            "MEDIA_CLEANER_WEBHOOK_ALLOW_PRIVATE": "true",
            "MEDIA_CLEANER_MAX_CONCURRENT_UPLOADS": "4",
            "MEDIA_CLEANER_CANCEL_GRACE_SECONDS": "5",
        },
    )
    srv.start()
    yield srv
    code = srv.stop()
    assert code == 0, srv.output()[-3000:]  # SIGTERM: clean shutdown
    assert srv.leftover == [], "worker processes outlived the server"


def test_transcode_end_to_end_with_download_and_range(server: ServerProcess, clip: Path, tmp_path: Path) -> None:
    task_id = server.upload(clip, **FAST)["task_id"]
    task = server.wait(task_id, timeout=180)
    assert task["status"] == "completed", task
    assert task["progress"] == 100 and task["attempts"] == 1 and task["eta_seconds"] is None
    assert task["started_at"] and task["finished_at"] and task["output_size_bytes"] > 0
    assert task["report"]["timings"]["total"] > 0 and task["report"]["input"] == clip.name
    assert task["download_url"] == f"/download/{task_id}"
    r = server.http.get(f"/download/{task_id}")
    assert r.status_code == 200 and len(r.content) == task["output_size_bytes"]
    assert r.headers["content-disposition"] == 'attachment; filename="grid_bbaf2n_protected.mp4"'
    out = tmp_path / "out.mp4"
    out.write_bytes(r.content)
    info = probe(out)
    assert (info.video.width, info.video.height) == (360, 288) and info.has_audio
    part = server.http.get(f"/download/{task_id}", headers={"Range": "bytes=10-"})
    assert part.status_code == 206 and part.content == r.content[10:]
    stored = sorted(p.name for p in (server.base_dir / "videos_output").iterdir())
    assert f"{task_id}_grid_bbaf2n_protected.mp4" in stored
    log = (server.base_dir / "server_logs" / "queue.log").read_text()
    assert f"[task={task_id}] start attempt 1" in log and f"[task={task_id}] completed" in log
    assert f"[task={task_id}] queued" in (server.base_dir / "server_logs" / "server.log").read_text()


def test_twenty_concurrent_uploads_are_bounded(server: ServerProcess, clip: Path) -> None:
    peak = {"processing": 0}
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            stats = server.http.get("/stats").json()
            peak["processing"] = max(peak["processing"], stats["queue"]["processing"], stats["workers"]["busy"])
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    t0 = time.monotonic()
    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(lambda i: server.upload(clip, user_id=f"batch{i % 2}", **FAST), range(20)))
    uploaded = time.monotonic() - t0
    ids = [r["task_id"] for r in results]
    assert len(set(ids)) == 20
    tasks = [server.wait(t, timeout=600, user_id=f"batch{i % 2}") for i, t in enumerate(ids)]
    print(f"20 concurrent uploads accepted in {uploaded:.1f} s; all 20 processed in {time.monotonic() - t0:.1f} s")
    stop.set()
    watcher.join()
    assert [t["status"] for t in tasks] == ["completed"] * 20
    assert 1 <= peak["processing"] <= 2  # two workers: never more than two jobs at once
    assert server.http.get("/tasks", params={"user_id": "batch0"}).json()["total"] == 10
    stats = server.http.get("/stats").json()
    assert stats["queue"]["completed"] >= 20 and stats["throughput"]["completed_last_hour"] >= 20
    assert stats["workers"] == {"configured": 2, "alive": 2, "busy": 0, "ready": 2}
    metrics = server.http.get("/metrics").text
    assert "media_cleaner_task_processing_seconds_count" in metrics
    assert 'media_cleaner_uploads_total{outcome="accepted"}' in metrics


class _Receiver(BaseHTTPRequestHandler):
    calls: list[dict] = []
    fail_first = True

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        _Receiver.calls.append({"headers": dict(self.headers.items()), "body": body})
        status = 500 if _Receiver.fail_first and len(_Receiver.calls) == 1 else 204
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def test_webhook_is_signed_and_retried(server: ServerProcess, clip: Path) -> None:
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=receiver.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{receiver.server_address[1]}/hook"
        task_id = server.upload(clip, webhook_url=url, **FAST)["task_id"]
        assert server.wait(task_id, timeout=180)["status"] == "completed"
        deadline = time.monotonic() + 30
        while len(_Receiver.calls) < 2 and time.monotonic() < deadline:  # first answer 500 -> retry after backoff
            time.sleep(0.2)
    finally:
        receiver.shutdown()
    assert len(_Receiver.calls) == 2
    first, second = _Receiver.calls
    headers = {k.lower(): v for k, v in second["headers"].items()}
    assert headers["webhook-id"] == {k.lower(): v for k, v in first["headers"].items()}["webhook-id"]
    # Verify as any Standard Webhooks receiver would, independently of the server's code.
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + second["body"]
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert abs(time.time() - int(headers["webhook-timestamp"])) < 120
    event = json.loads(second["body"])
    assert event["type"] == "task.completed" and event["data"]["task_id"] == task_id
    assert event["data"]["download_url"] == f"/download/{task_id}"


def _processing(task: dict) -> bool:
    return task["status"] != "pending" and (task["status"] != "processing" or task["progress"] > 0)


def test_cancel_running_task_stops_it(server: ServerProcess, long_clip: Path, clip: Path) -> None:
    task_id = server.upload(long_clip, **FAST)["task_id"]
    task = server.wait(task_id, until=_processing, timeout=120)
    assert task["status"] == "processing", task
    pid = server.worker_pid(task_id)
    cancelled_at = time.monotonic()
    r = server.http.post(f"/cancel/{task_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    deadline = time.monotonic() + 30
    while server.worker_pid(task_id) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    stopped_after = time.monotonic() - cancelled_at
    assert server.worker_pid(task_id) is None, "the worker is still running the cancelled task"
    assert stopped_after < 15, stopped_after
    assert server.task(task_id)["status"] == "cancelled"
    assert not list((server.base_dir / "videos_temp").glob(f"task_{task_id}*"))  # partial output removed
    assert not any(p.name.startswith(task_id) for p in (server.base_dir / "videos_output").iterdir())
    assert server.http.post(f"/cancel/{task_id}").status_code == 409
    assert server.http.get(f"/download/{task_id}").status_code == 409
    # The worker (or its replacement if it had to be killed) takes the next task.
    after = server.upload(clip, **FAST)["task_id"]
    assert server.wait(after, timeout=180)["status"] == "completed"
    print(f"cancel stopped the running job in {stopped_after:.1f} s (worker pid {pid})")


def test_kill_9_worker_mid_task_then_task_finishes(server: ServerProcess, long_clip: Path) -> None:
    pid = None
    for _ in range(3):  # on a fast machine a task may finish before we catch it running: try another
        task_id = server.upload(long_clip, **FAST)["task_id"]
        server.wait(task_id, until=_processing, timeout=120)
        pid = server.worker_pid(task_id)
        if pid:
            break
        server.wait(task_id, timeout=300)
    assert pid
    os.kill(pid, signal.SIGKILL)
    task = server.wait(task_id, timeout=300)
    assert task["status"] == "completed", task
    assert task["attempts"] == 2
    assert server.worker_pid(task_id) is None
    assert "exited (code -9" in (server.base_dir / "server_logs" / "queue.log").read_text()
    assert server.http.get("/stats").json()["workers"]["alive"] == 2  # replaced


@pytest.mark.slow
def test_full_protection_through_the_client(server: ServerProcess, clip: Path, tmp_path: Path) -> None:
    from media_cleaner.client import MediaCleanerClient

    client = MediaCleanerClient(server.url)
    result = client.upload_video(str(clip), epsilon=0.12, audio_level="слабый")
    task = client.wait_for_completion(result["task_id"], timeout=900, poll_interval=1.0)
    assert task["status"] == "completed", task
    report = task["report"]
    assert report["parameters"]["epsilon"] == 0.12 and report["parameters"]["audio_level"] == "weak"
    assert report["timings"]["total"] > 0
    path = client.download_result(result["task_id"], output_path=tmp_path)
    info = probe(path)
    assert info.video.width == 360 and info.has_audio
    print(
        f"full protection of {clip.name}: {report['timings']['total']:.1f} s engine time; notes {report.get('notes')}"
    )
