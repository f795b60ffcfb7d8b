"""The API in-process (real app, real SQLite, real storage and probing; no workers): every endpoint's contract and
error path. The end-to-end flows with real worker processes are in test_server_e2e.py."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from media_cleaner.api import create_app
from media_cleaner.config import Settings
from media_cleaner.jobs import open_store

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def clip(shared_data: Path) -> Path:
    return shared_data / "video" / "grid_bbaf2n.mpg"


def make_client(settings: Settings, **updates) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=updates)))


@pytest.fixture
def client(settings: Settings):
    with make_client(settings) as c:
        yield c


def upload(client: TestClient, path: Path, name: str | None = None, headers=None, **fields):
    with open(path, "rb") as fh:
        return client.post(
            "/upload",
            files={"file": (name or path.name, fh, "video/mpeg")},
            data={k: str(v) for k, v in fields.items()},
            headers=headers or {},
        )


def error_code(response) -> str:
    return response.json()["error"]["code"]


def test_api_process_never_imports_torch(tmp_path: Path, clip: Path) -> None:
    code = f"""
import sys
from fastapi.testclient import TestClient
from media_cleaner.api import create_app
from media_cleaner.config import load_settings
app = create_app(load_settings(base_dir={str(tmp_path)!r}))
with TestClient(app) as c:
    with open({str(clip)!r}, "rb") as fh:
        r = c.post("/upload", files={{"file": ("a.mpg", fh)}})
    assert r.status_code == 202, r.text
    for path in ("/health", "/ready", "/stats", "/metrics", "/tasks"):
        c.get(path)
assert "torch" not in sys.modules, "the API process imported torch"
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_upload_accepts_probes_and_names_files(client: TestClient, settings: Settings, clip: Path) -> None:
    r = upload(client, clip, name="../../etc/My Clip (1).mpg", epsilon=0.2, audio_level="сильный", user_id="u1")
    assert r.status_code == 202
    body = r.json()
    task_id = body["task_id"]
    assert len(task_id) == 12 and body["status"] == "pending"
    assert body["status_url"] == f"/task/{task_id}" and body["download_url"] == f"/download/{task_id}"
    stored = list(settings.path("input").iterdir())
    assert [p.name for p in stored] == [f"{task_id}_My_Clip_1.mpg"]
    assert stored[0].read_bytes() == clip.read_bytes()
    task = client.get(f"/task/{task_id}", params={"user_id": "u1"}).json()
    assert task["parameters"]["epsilon"] == 0.2 and task["parameters"]["audio_level"] == "strong"
    assert task["original_filename"] == "../../etc/My Clip (1).mpg"
    assert task["input_size_bytes"] == clip.stat().st_size
    assert task["media"]["video"]["width"] == 360 and task["progress"] == 0 and task["download_url"] is None
    row = open_store(settings).get(task_id)
    assert row.output_name == f"{task_id}_My_Clip_1_protected.mp4"
    assert list(settings.path("temp").iterdir()) == []  # the upload was renamed, not copied


def test_defaults_come_from_settings(settings: Settings, clip: Path) -> None:
    with make_client(settings, default_video_epsilon=0.05, default_audio_level="medium") as c:
        task_id = upload(c, clip).json()["task_id"]
        params = c.get(f"/task/{task_id}").json()["parameters"]
    assert params == {
        "epsilon": 0.05,
        "pixel_bound": round(0.05 * 0.226 * 255, 4),
        "audio_level": "medium",
        "audio_objective": "untargeted",
        "audio_phrase": "",
        "protect_video": True,
        "protect_audio": True,
    }


def test_oversize_is_413_and_leaves_nothing(settings: Settings, clip: Path) -> None:
    with make_client(settings, max_video_size_gb=100_000 / 1024**3) as c:
        r = upload(c, clip)
    assert r.status_code == 413 and error_code(r) == "too_large"
    assert list(settings.path("input").iterdir()) == [] and list(settings.path("temp").iterdir()) == []


def test_not_a_video_is_415(client: TestClient, settings: Settings, tmp_path: Path) -> None:
    junk = tmp_path / "notes.mp4"
    junk.write_bytes(os.urandom(50_000))
    r = upload(client, junk)
    assert r.status_code == 415 and error_code(r) == "not_a_video"
    assert "usable video" in r.json()["error"]["message"]
    assert list(settings.path("input").iterdir()) == []


def test_empty_file_is_400(client: TestClient, tmp_path: Path) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    r = upload(client, empty)
    assert r.status_code == 400 and error_code(r) == "empty_file"


@pytest.mark.parametrize(
    "fields",
    [
        {"epsilon": "1.5"},
        {"epsilon": "abc"},
        {"audio_level": "loud"},
        {"audio_objective": "phrase"},
        {"protect_video": "maybe"},
        {"user_id": "x" * 200},
    ],
)
def test_bad_parameters_are_422(client: TestClient, clip: Path, fields: dict) -> None:
    r = upload(client, clip, **fields)
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_missing_file_part_and_non_multipart(client: TestClient) -> None:
    r = client.post("/upload", data={"epsilon": "0.1"}, files={"other": ("x", b"1")})
    assert r.status_code == 422 and error_code(r) == "validation_error"
    r = client.post("/upload", json={"file": "x"})
    assert r.status_code == 422 and error_code(r) == "validation_error"


def test_private_webhook_target_refused(client: TestClient, clip: Path) -> None:
    r = upload(client, clip, webhook_url="http://127.0.0.1:9/hook")
    assert r.status_code == 422 and "non-public" in r.json()["error"]["message"]
    r = upload(client, clip, webhook_url="file:///etc/passwd")
    assert r.status_code == 422


def test_unknown_task_is_404_everywhere(client: TestClient) -> None:
    for method, path in (("get", "/task/nope"), ("get", "/download/nope"), ("post", "/cancel/nope")):
        r = getattr(client, method)(path)
        assert r.status_code == 404 and error_code(r) == "not_found"


def test_user_isolation_without_keys(client: TestClient, clip: Path) -> None:
    task_id = upload(client, clip, user_id="alice").json()["task_id"]
    for params, headers in (({}, {}), ({"user_id": "bob"}, {}), ({}, {"X-User-Id": "bob"})):
        for method, path in (
            ("get", f"/task/{task_id}"),
            ("get", f"/download/{task_id}"),
            ("post", f"/cancel/{task_id}"),
        ):
            r = getattr(client, method)(path, params=params, headers=headers)
            assert r.status_code == 403, (method, path, params)
            assert r.json() == {"error": {"code": "access_denied", "message": "Access denied"}}
    assert client.get(f"/task/{task_id}", headers={"X-User-Id": "alice"}).status_code == 200
    assert client.get("/tasks").json()["total"] == 0  # tasks with an owner are not listed to others
    assert client.get("/tasks", params={"user_id": "alice"}).json()["total"] == 1


def test_download_before_done_is_409_and_cancel_pending(client: TestClient, clip: Path) -> None:
    task_id = upload(client, clip).json()["task_id"]
    r = client.get(f"/download/{task_id}")
    assert r.status_code == 409 and error_code(r) == "not_ready"
    r = client.post(f"/cancel/{task_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelled" and r.json()["finished_at"]
    r = client.post(f"/cancel/{task_id}")
    assert r.status_code == 409 and error_code(r) == "not_cancellable"
    assert client.get(f"/download/{task_id}").status_code == 409


def test_idempotency_key_returns_the_same_task(client: TestClient, settings: Settings, clip: Path) -> None:
    first = upload(client, clip, headers={"Idempotency-Key": "batch-1"}).json()
    second = upload(client, clip, headers={"Idempotency-Key": "batch-1"}).json()
    other = upload(client, clip, headers={"Idempotency-Key": "batch-1"}, user_id="carol").json()
    assert first["task_id"] == second["task_id"] != other["task_id"]
    assert len(list(settings.path("input").iterdir())) == 2


def test_api_keys(settings: Settings, clip: Path) -> None:
    with make_client(settings, api_keys={"key-a": "alice", "key-b": "bob"}) as c:
        r = upload(c, clip)
        assert r.status_code == 401 and error_code(r) == "unauthorized"
        assert c.get("/tasks", headers={"X-API-Key": "wrong"}).status_code == 401
        r = upload(c, clip, headers={"X-API-Key": "key-a"}, user_id="mallory")
        task_id = r.json()["task_id"]
        own = c.get(f"/task/{task_id}", headers={"Authorization": "Bearer key-a"}).json()
        assert own["user_id"] == "alice"  # the key's user, not the form field
        r = c.get(f"/task/{task_id}", headers={"X-API-Key": "key-b"})
        assert r.status_code == 403 and error_code(r) == "access_denied"
        assert c.post(f"/cancel/{task_id}", headers={"X-API-Key": "key-b"}).status_code == 403
        assert c.get("/tasks", headers={"X-API-Key": "key-b"}, params={"user_id": "alice"}).json()["total"] == 0
        assert c.get("/tasks", headers={"X-API-Key": "key-a"}).json()["total"] == 1
        assert c.get("/health").status_code == 200  # liveness stays open


def test_list_pagination_and_filters(client: TestClient, clip: Path) -> None:
    ids = [upload(client, clip, user_id="pat").json()["task_id"] for _ in range(3)]
    client.post(f"/cancel/{ids[0]}", params={"user_id": "pat"})
    page = client.get("/tasks", params={"user_id": "pat", "limit": 2, "offset": 0}).json()
    assert page["total"] == 3 and page["limit"] == 2 and [t["task_id"] for t in page["tasks"]] == ids[:0:-1]
    assert (
        client.get("/tasks", params={"user_id": "pat", "limit": 2, "offset": 2}).json()["tasks"][0]["task_id"] == ids[0]
    )
    assert client.get("/tasks", params={"user_id": "pat", "status": "cancelled"}).json()["total"] == 1
    assert client.get("/tasks", params={"user_id": "pat", "since": "2999-01-01T00:00:00Z"}).json()["total"] == 0
    r = client.get("/tasks", params={"status": "bogus"})
    assert r.status_code == 422 and error_code(r) == "validation_error"


def _complete_by_hand(settings: Settings, task_id: str, payload: bytes) -> None:
    """Play the worker's part through the real store: claim, write the output, complete."""
    store = open_store(settings)
    task = store.claim("test-worker")
    assert task.id == task_id
    (settings.path("output") / task.output_name).write_bytes(payload)
    assert store.complete(task_id, "test-worker", output_size=len(payload), report={"timings": {"total": 1.0}})


def test_download_range_and_gone(client: TestClient, settings: Settings, clip: Path) -> None:
    task_id = upload(client, clip, name="talk.mpg").json()["task_id"]
    payload = bytes(range(256)) * 40
    _complete_by_hand(settings, task_id, payload)
    task = client.get(f"/task/{task_id}").json()
    assert task["status"] == "completed" and task["progress"] == 100 and task["report"] == {"timings": {"total": 1.0}}
    r = client.get(f"/download/{task_id}")
    assert r.status_code == 200 and r.content == payload
    assert r.headers["content-disposition"] == 'attachment; filename="talk_protected.mp4"'
    r = client.get(f"/download/{task_id}", headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == payload[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(payload)}"
    (settings.path("output") / f"{task_id}_talk_protected.mp4").unlink()
    r = client.get(f"/download/{task_id}")
    assert r.status_code == 410 and error_code(r) == "gone"


def test_cleanup_deletes_finished_tasks_and_files(client: TestClient, settings: Settings, clip: Path) -> None:
    done = upload(client, clip).json()["task_id"]
    waiting = upload(client, clip).json()["task_id"]
    _complete_by_hand(settings, done, b"x" * 1000)
    assert client.post("/cleanup").json() == {"deleted_tasks": 0, "freed_bytes": 0}  # retention: a week
    r = client.post("/cleanup", params={"older_than_hours": 0})
    assert r.json() == {"deleted_tasks": 1, "freed_bytes": clip.stat().st_size + 1000}
    assert client.get(f"/task/{done}").status_code == 404
    assert client.get(f"/task/{waiting}").json()["status"] == "pending"
    assert [p.name for p in settings.path("input").iterdir()] == [f"{waiting}_grid_bbaf2n.mpg"]


def test_health_ready_stats_metrics(client: TestClient, settings: Settings, clip: Path) -> None:
    assert client.get("/health").json()["status"] == "ok"
    r = client.get("/ready")
    assert r.status_code == 503 and r.json()["status"] == "not_ready"
    assert r.json()["checks"]["database"] is True and r.json()["checks"]["models_loaded"] is False
    store = open_store(settings)
    store.register_worker("w1", "host", 1, "cpu")
    store.worker_heartbeat("w1", models_loaded=True)
    assert client.get("/ready").status_code == 200
    upload(client, clip)
    stats = client.get("/stats").json()
    assert stats["queue"] == {"total": 1, "pending": 1, "processing": 0, "completed": 0, "failed": 0, "cancelled": 0}
    assert stats["workers"]["configured"] == settings.max_concurrent_tasks and stats["workers"]["alive"] == 1
    assert stats["disk"]["input_bytes"] == clip.stat().st_size and stats["disk"]["free_bytes"] > 0
    assert stats["throughput"] == {"completed_last_hour": 0, "mean_processing_seconds": None}
    text = client.get("/metrics").text
    assert 'media_cleaner_tasks{state="pending"} 1.0' in text
    assert "media_cleaner_queue_depth 1.0" in text
    assert "media_cleaner_upload_bytes_total" in text and "media_cleaner_task_processing_seconds_bucket" in text
    store.claim("w1")
    store.expire(timedelta(seconds=-1))  # the pending task times out -> failed with code "timeout"
    assert 'media_cleaner_task_failures{code="timeout"} 1.0' in client.get("/metrics").text


def test_queue_full_is_503(settings: Settings, clip: Path) -> None:
    with make_client(settings, max_pending_tasks=1) as c:
        assert upload(c, clip).status_code == 202
        r = upload(c, clip)
    assert r.status_code == 503 and error_code(r) == "queue_full" and r.headers["retry-after"]


def test_openapi_lists_the_contract(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in (
        "/upload",
        "/task/{task_id}",
        "/tasks",
        "/download/{task_id}",
        "/cancel/{task_id}",
        "/stats",
        "/health",
        "/ready",
        "/cleanup",
        "/metrics",
    ):
        assert path in paths
    assert client.get("/docs").status_code == 200


def test_periodic_cleanup_runs_by_itself(settings: Settings, clip: Path) -> None:
    import time

    with make_client(settings, retention_hours=1 / 3600, cleanup_interval_minutes=1 / 60) as c:
        old = upload(c, clip).json()["task_id"]
        c.post(f"/cancel/{old}")
        deadline = time.monotonic() + 30
        while c.get(f"/task/{old}").status_code != 404 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert c.get(f"/task/{old}").status_code == 404  # deleted by the background cleanup, no request needed
        assert list(settings.path("input").iterdir()) == []


def test_json_logs_carry_the_task_id(settings: Settings, clip: Path) -> None:
    import json

    with make_client(settings, log_json=True) as c:
        task_id = upload(c, clip).json()["task_id"]
    lines = [json.loads(line) for line in (settings.path("log") / "server.log").read_text().splitlines()]
    queued = [entry for entry in lines if entry["task_id"] == task_id]
    assert queued and queued[0]["message"].startswith("queued grid_bbaf2n.mpg") and queued[0]["level"] == "INFO"


def test_queue_position_and_pending_eta(client: TestClient, settings: Settings, clip: Path) -> None:
    ids = [upload(client, clip).json()["task_id"] for _ in range(3)]
    assert [client.get(f"/task/{t}").json()["queue_position"] for t in ids] == [1, 2, 3]
    assert client.get(f"/task/{ids[2]}").json()["eta_seconds"] is None  # no finished task yet: no estimate
    _complete_by_hand(settings, ids[0], b"out")
    first = client.get(f"/task/{ids[0]}").json()
    assert first["queue_position"] is None
    second, third = (client.get(f"/task/{t}").json() for t in ids[1:])
    assert second["queue_position"] == 1 and third["queue_position"] == 2
    assert third["eta_seconds"] >= second["eta_seconds"] >= 0  # claimed-and-completed at once: mean ~0 s
