"""The integration examples (batch cron script, Flask app, webhook receiver) against the contract fixture server."""

from __future__ import annotations

import importlib.util
import io
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import httpx

from media_cleaner.client.webhooks import sign_headers

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"


def load_example(relative: str) -> ModuleType:
    path = EXAMPLES / relative
    spec = importlib.util.spec_from_file_location("example_" + path.stem, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_batch_cron_protects_a_folder_and_reruns_cleanly(server, state, tmp_path):
    incoming, protected = tmp_path / "incoming", tmp_path / "protected"
    incoming.mkdir()
    for name in ("one.mp4", "two.mov", "three_fail.mp4"):
        (incoming / name).write_bytes(name.encode() * 1000)
    cmd = [sys.executable, str(EXAMPLES / "batch_cron.py"), str(incoming), str(protected), "--server", server.url]
    cmd += ["--poll-interval", "0.1"]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 1, first.stderr  # one file fails on the server
    assert "3 video(s): 2 ok, 1 failed" in first.stdout and "Traceback" not in first.stderr
    assert sorted(p.name for p in protected.glob("*_protected.*")) == ["one_protected.mp4", "two_protected.mov"]
    (incoming / "three_fail.mp4").unlink()  # the operator removes the bad file; a new one arrives
    (incoming / "four.mkv").write_bytes(b"four" * 1000)
    uploads = len(state.uploads)
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stdout + second.stderr
    assert second.stdout.count("skipped") == 2 and "four.mkv" in second.stdout
    assert len(state.uploads) == uploads + 1
    # Docstring carries the crontab line users copy.
    assert "*/10 * * * *" in (EXAMPLES / "batch_cron.py").read_text()


def test_batch_cron_unreachable_server_is_one_line(tmp_path):
    (tmp_path / "in").mkdir()
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / "batch_cron.py"), str(tmp_path / "in"), str(tmp_path / "out")]
        + ["--server", "http://127.0.0.1:9"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 3 and "cannot reach" in proc.stderr and "Traceback" not in proc.stderr


def test_flask_app_upload_status_download(server, state):
    flask_app = load_example("flask_app/app.py").create_app(server.url)
    web = flask_app.test_client()
    page = web.get("/")
    assert page.status_code == 200 and b'enctype="multipart/form-data"' in page.data
    sent = b"\x00video bytes\xff" * 5000
    answer = web.post(
        "/upload",
        data={"file": (io.BytesIO(sent), "holiday.mp4"), "epsilon": "0.2", "audio_level": "medium"},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 303
    task_id = answer.headers["Location"].rsplit("/", 1)[-1]
    assert state.tasks[task_id].data == sent and state.tasks[task_id].params["epsilon"] == 0.2
    status_page = web.get(f"/tasks/{task_id}")
    assert status_page.status_code == 200 and b"holiday.mp4" in status_page.data and b"fetch(api)" in status_page.data
    assert web.get(f"/tasks/{task_id}/download").status_code in (409, 200)
    deadline = time.monotonic() + 10
    while web.get(f"/api/tasks/{task_id}").get_json()["status"] != "completed":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    download = web.get(f"/tasks/{task_id}/download")
    assert download.status_code == 200 and download.data == b"PROTECTED:" + sent
    assert 'filename="holiday_protected.mp4"' in download.headers["Content-Disposition"]
    assert task_id.encode() in web.get("/").data  # the recent-tasks table links to it
    # Server errors keep their status and code through the app.
    missing = web.get("/api/tasks/nosuchtask")
    assert missing.status_code == 404 and missing.get_json()["error"]["code"] == "not_found"
    assert web.post("/upload", data={}, content_type="multipart/form-data").status_code == 400
    bad = web.post("/upload", data={"file": (io.BytesIO(b"NOTAVIDEO"), "x.txt")}, content_type="multipart/form-data")
    assert bad.status_code == 415 and b"Not a video" in bad.data


def test_flask_app_without_server_shows_an_error_page():
    web = load_example("flask_app/app.py").create_app("http://127.0.0.1:9").test_client()
    page = web.get("/")
    assert page.status_code == 200 and b"cannot reach" in page.data


def test_webhook_receiver_verifies_and_deduplicates():
    module = load_example("webhook_receiver.py")
    events: list[dict] = []
    receiver = module.serve("s3cret", port=0, on_event=events.append)
    try:
        body = json.dumps({"type": "task.completed", "data": {"task_id": "abc", "status": "completed"}}).encode()
        headers = {**sign_headers("s3cret", "msg_1", body), "content-type": "application/json"}
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 204
        assert httpx.post(receiver.url, content=body, headers=headers).status_code == 200  # retry of the same id
        assert events == [json.loads(body)]
        forged = {**sign_headers("wrong", "msg_2", body)}
        refused = httpx.post(receiver.url, content=body, headers=forged)
        assert refused.status_code == 401 and "no v1 signature" in refused.text
        stale = sign_headers("s3cret", "msg_3", body, timestamp=int(time.time()) - 3600)
        assert httpx.post(receiver.url, content=body, headers=stale).status_code == 401
        assert len(events) == 1
    finally:
        receiver.shutdown()
