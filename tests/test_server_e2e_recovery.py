"""End to end, the hard paths: crash and restart, graceful stop, task timeout, streamed-upload limits on a real
socket, and the `server_config.py` / `run_server.py` entry points refusing bad configuration."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server_harness import REPO, ServerProcess, free_port

FAST = {"protect_video": "false", "protect_audio": "false"}
SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="module")
def long_clip() -> Path:
    path = SHARED / "bench" / "talking_crowd_1080p.mp4"
    if not path.is_file():
        pytest.skip("shared bench clip missing")
    return path


def _processing(task: dict) -> bool:
    return task["status"] != "pending" and (task["status"] != "processing" or task["progress"] > 0)


def test_crash_then_restart_finishes_the_task(tmp_path: Path, long_clip: Path) -> None:
    first = ServerProcess(tmp_path, workers=1).start()
    try:
        task_id = first.upload(long_clip, **FAST)["task_id"]
        first.wait(task_id, until=_processing, timeout=120)
    finally:
        first.kill()  # kill -9 the server and its worker mid-task
    row = first.store().get(task_id)
    assert row.status == "processing" and row.attempts == 1  # what a crash leaves behind
    second = ServerProcess(tmp_path, workers=1).start()
    try:
        task = second.wait(task_id, timeout=300)
        assert task["status"] == "completed", task
        assert task["attempts"] == 2
        assert "recovered stale tasks: requeued" in second.output()
        assert second.http.get(f"/download/{task_id}").status_code == 200
    finally:
        assert second.stop() == 0


def test_graceful_stop_puts_the_running_task_back(tmp_path: Path, long_clip: Path) -> None:
    server = ServerProcess(tmp_path, workers=1).start()
    task_id = server.upload(long_clip, **FAST)["task_id"]
    server.wait(task_id, until=_processing, timeout=120)
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 30
    assert server.leftover == []
    row = server.store().get(task_id)
    assert row.status == "pending" and row.attempts == 0 and row.worker_id is None  # released, not failed
    assert not list((tmp_path / "videos_temp").glob(f"task_{task_id}*"))


def test_task_timeout_is_enforced(tmp_path: Path, long_clip: Path) -> None:
    server = ServerProcess(tmp_path, workers=1, env={"MEDIA_CLEANER_TASK_TIMEOUT_HOURS": str(3 / 3600)}).start()
    try:
        task_id = server.upload(long_clip, **FAST)["task_id"]
        task = server.wait(task_id, timeout=120)
        assert task["status"] == "failed" and task["error"]["code"] == "timeout", task
        assert "task_timeout_hours" in task["error"]["message"]
        deadline = time.monotonic() + 30
        while server.worker_pid(task_id) is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server.worker_pid(task_id) is None  # the worker let go of it
        assert not any(p.name.startswith(task_id) for p in (tmp_path / "videos_output").iterdir())
    finally:
        assert server.stop() == 0


@pytest.fixture(scope="module")
def api_only(tmp_path_factory: pytest.TempPathFactory):
    """No workers; max upload 64 MiB."""
    server = ServerProcess(
        tmp_path_factory.mktemp("api"), workers=0, env={"MEDIA_CLEANER_MAX_VIDEO_SIZE_GB": str(64 / 1024)}
    ).start()
    yield server
    assert server.stop() == 0


def _raw_request(port: int, head: bytes, body_chunks, pause: float = 0.0) -> bytes:
    """Send a request by hand (to control exactly how much body goes out) and return the response bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        try:
            for chunk in body_chunks:
                sock.sendall(chunk)
                if pause:
                    time.sleep(pause)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and closed while we were still sending: the point of the test
        sock.shutdown(socket.SHUT_WR) if False else None
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return data


def test_declared_oversize_is_refused_before_the_body(api_only: ServerProcess) -> None:
    boundary = "b0undary"
    head = (
        f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {50 * 1024**3}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    response = _raw_request(api_only.port, head, [])
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert b'"too_large"' in response and time.monotonic() - started < 10


def test_streamed_oversize_stops_reading_early(api_only: ServerProcess) -> None:
    boundary = "b0undary"
    preamble = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.mp4"\r\n'
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    head = (
        f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    sent = {"bytes": 0}

    def chunks():
        yield b"%x\r\n%s\r\n" % (len(preamble), preamble)
        piece = os.urandom(256 * 1024)
        for _ in range(2000):  # would be 500 MiB; the limit is 64 MiB
            sent["bytes"] += len(piece)
            yield b"%x\r\n%s\r\n" % (len(piece), piece)

    response = _raw_request(api_only.port, head, chunks())
    assert response.startswith(b"HTTP/1.1 413"), response[:200]
    assert sent["bytes"] < 128 * 1024**2, sent  # cut off soon after the 64 MiB limit, not after 500 MiB
    for area in ("videos_input", "videos_temp"):
        assert list((api_only.base_dir / area).iterdir()) == []


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_upload_memory_does_not_grow_with_file_size(api_only: ServerProcess, tmp_path: Path) -> None:
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(os.urandom(60 * 1024**2))  # under the 64 MiB limit: streamed to disk, probed, refused
    before = _rss_kb(api_only.proc.pid)
    for _ in range(2):
        with open(junk, "rb") as fh:
            r = api_only.http.post("/upload", files={"file": ("junk.mp4", fh)})
        assert r.status_code == 415 and r.json()["error"]["code"] == "not_a_video"
    growth_mb = (_rss_kb(api_only.proc.pid) - before) / 1024
    print(f"API RSS {before / 1024:.0f} MiB before, growth {growth_mb:.1f} MiB after 2 x 60 MiB uploads")
    assert growth_mb < 30, growth_mb
    assert list((api_only.base_dir / "videos_input").iterdir()) == []


def test_ready_is_503_without_workers(api_only: ServerProcess) -> None:
    r = api_only.http.get("/ready")
    assert r.status_code == 503 and r.json()["checks"]["models_loaded"] is False
    assert r.json()["checks"]["database"] is True and r.json()["checks"]["storage"] is True


def _config(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_CLEANER_")}
    environ |= {"MEDIA_CLEANER_BASE_DIR": str(tmp_path), **env}
    return subprocess.run(
        [sys.executable, "server_config.py", *args], cwd=REPO, env=environ, capture_output=True, text=True, timeout=60
    )


def test_server_config_prints_effective_configuration(tmp_path: Path) -> None:
    port = str(free_port())
    result = _config(tmp_path, MEDIA_CLEANER_PORT=port, MEDIA_CLEANER_DEFAULT_AUDIO_LEVEL="средний")
    assert result.returncode == 0, result.stderr
    assert "configuration OK" in result.stdout
    assert f"port                       {port}" in result.stdout
    assert "default_audio_level        medium" in result.stdout  # env over SERVER_CONFIG's "слабый"
    assert "max_video_size_gb          2.0" in result.stdout  # from SERVER_CONFIG
    for directory in ("videos_input", "videos_output", "videos_temp", "server_logs", "queue_db"):
        assert (tmp_path / directory).is_dir()


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MEDIA_CLEANER_DEFAULT_AUDIO_LEVEL": "loud"}, "unknown audio level 'loud'"),
        ({"MEDIA_CLEANER_MAX_CONCURRENT_TASKS": "0"}, "max_concurrent_tasks"),
        ({"MEDIA_CLEANER_PORT": "not-a-port"}, "port"),
        ({"MEDIA_CLEANER_INPUT_DIR": "/dev/null/videos"}, "input_dir /dev/null/videos is not writable"),
    ],
)
def test_server_config_rejects_bad_values(tmp_path: Path, env: dict, needle: str) -> None:
    result = _config(tmp_path, "--no-port-check", **env)
    assert result.returncode != 0
    assert needle in result.stderr, result.stderr


def test_port_in_use_is_reported_by_both_entry_points(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = str(busy.getsockname()[1])
        result = _config(tmp_path, MEDIA_CLEANER_HOST="127.0.0.1", MEDIA_CLEANER_PORT=port)
        assert result.returncode == 1 and f"port {port} on 127.0.0.1 is not available" in result.stderr
        environ = {k: v for k, v in os.environ.items() if not k.startswith("MEDIA_CLEANER_")}
        run = subprocess.run(
            [sys.executable, "run_server.py", "--host", "127.0.0.1", "--port", port, "--workers", "0"],
            cwd=REPO,
            env=environ | {"MEDIA_CLEANER_BASE_DIR": str(tmp_path)},
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert run.returncode == 1 and "not available" in run.stderr


def test_sigint_stops_run_server_cleanly(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path, workers=1).start()
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(60) == 0
    deadline = time.monotonic() + 10
    while server.children() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert server.children() == []


def test_client_disconnect_mid_upload_leaves_nothing(api_only: ServerProcess) -> None:
    boundary = "b0undary"
    preamble = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="cut.mp4"\r\n\r\n'.encode()
    head = (
        f"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {10 * 1024**2}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", api_only.port), timeout=30) as sock:
        sock.sendall(head + preamble + os.urandom(2 * 1024**2))  # 2 of the 10 MiB announced, then hang up
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        leftovers = [p for area in ("videos_input", "videos_temp") for p in (api_only.base_dir / area).iterdir()]
        if not leftovers:
            break
        time.sleep(0.2)
    assert leftovers == []
    assert api_only.http.get("/health").status_code == 200


def test_server_config_reports_a_missing_model(tmp_path: Path) -> None:
    # A weights package without its files (a broken install) shadows the real one; downloads are off.
    stub = tmp_path / "stub" / "facenet_pytorch"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("")
    result = _config(
        tmp_path,
        "--no-port-check",
        PYTHONPATH=str(tmp_path / "stub"),
        MEDIA_CLEANER_ALLOW_MODEL_DOWNLOAD="false",
        MEDIA_CLEANER_MODEL_CACHE_DIR=str(tmp_path / "empty_cache"),
    )
    assert result.returncode == 1
    assert "model 'mtcnn' is missing (pnet.pt, rnet.pt, onet.pt)" in result.stderr, result.stderr
