"""End to end: the client library, the CLI (subprocess) and the examples against the REAL server (run_server.py with
a spawned worker) on a real GRID clip. Most tasks switch both protections off (mechanics only: the pipeline still
decodes, re-encodes and muxes); one slow test runs the full protection as the spec's command line does."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import av
import pytest

from client_real_server import WEBHOOK_SECRET, RealServer, shared_real_server
from media_cleaner.client import (
    AccessDeniedError,
    EmptyFileError,
    InvalidRequestError,
    MediaCleanerClient,
    NotAVideoError,
    NotCancellableError,
    NotReadyError,
    TaskNotFoundError,
)

REPO = Path(__file__).resolve().parent.parent
MECHANICS = {"protect_video": False, "protect_audio": False}


@pytest.fixture(scope="module")
def real() -> RealServer:
    return shared_real_server()


@pytest.fixture
def clip(shared_data: Path) -> Path:
    return shared_data / "video" / "grid_bbaf2n.mpg"


def cli(real: RealServer, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "client.py", "--server", real.url, "--no-progress", *args]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def assert_playable(path: Path, seconds: float = 3.0) -> None:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = sum(1 for _ in container.decode(stream))
        assert frames >= int(seconds * 25) - 2
        assert container.streams.audio, "audio track kept"


def test_library_upload_wait_download_resume(real, clip, tmp_path):
    sent: list[int] = []
    with MediaCleanerClient(real.url) as client:
        answer = client.upload_video(clip, progress=lambda s, t: sent.append(s), **MECHANICS)
        assert answer["status"] == "pending" and answer["download_url"] == f"/download/{answer['task_id']}"
        phases: list[str] = []
        task = client.wait_for_completion(
            answer["task_id"], timeout=240, poll_interval=0.3, on_update=lambda t: phases.append(t["status"])
        )
        assert task["status"] == "completed", real.output()
        assert task["input_size_bytes"] == clip.stat().st_size and sent[-1] > clip.stat().st_size
        assert task["parameters"]["protect_video"] is False and task["report"] is not None
        path = client.download_result(answer["task_id"], tmp_path / "results")
        assert path.name == "grid_bbaf2n_protected.mp4" and path.stat().st_size == task["output_size_bytes"]
        assert_playable(path)
        # Resume from a leftover partial file: the real server answers the Range request with 206.
        again = tmp_path / "again"
        again.mkdir()
        (again / f".{answer['task_id']}.download.part").write_bytes(path.read_bytes()[:50_000])
        resumed = client.download_result(answer["task_id"], again)
        assert resumed.read_bytes() == path.read_bytes()
        with client.open_result(answer["task_id"]) as result:
            assert result.filename == path.name and result.size == path.stat().st_size


def test_real_server_errors_map_to_typed_exceptions(real, clip, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 100)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with MediaCleanerClient(real.url) as client:
        with pytest.raises(NotAVideoError) as exc:
            client.upload_video(text)
        assert exc.value.status_code == 415 and exc.value.message
        with pytest.raises(EmptyFileError):
            client.upload_video(empty)
        with pytest.raises(InvalidRequestError, match="epsilon"):
            client.upload_video(clip, epsilon=2.0)
        with pytest.raises(InvalidRequestError, match="audio_level"):
            client.upload_video(clip, audio_level="deafening")
        with pytest.raises(TaskNotFoundError):
            client.get_task("000000000000")


def test_isolation_not_ready_and_cancel(real, clip):
    with MediaCleanerClient(real.url, user_id="alice") as alice, MediaCleanerClient(real.url, user_id="bob") as bob:
        first = alice.upload_video(clip, **MECHANICS)["task_id"]
        second = alice.upload_video(clip, **MECHANICS)["task_id"]  # queued behind the first on the single worker
        with pytest.raises(AccessDeniedError):
            bob.get_task(first)
        assert bob.list_tasks()["total"] == 0
        assert {t["task_id"] for t in alice.list_tasks()["tasks"]} >= {first, second}
        with pytest.raises(NotReadyError):
            alice.download_result(second)
        assert alice.cancel_task(second)["status"] == "cancelled"
        with pytest.raises(NotCancellableError):
            alice.cancel_task(second)
        assert alice.wait_for_completion(second, timeout=60, poll_interval=0.3)["status"] == "cancelled"
        assert alice.wait_for_completion(first, timeout=240, poll_interval=0.3)["status"] == "completed"
        hour = timedelta(hours=1)
        assert alice.list_tasks(since=datetime.now(UTC) + hour)["total"] == 0
        assert alice.list_tasks(since=datetime.now(UTC) - hour, status="cancelled")["tasks"][0]["task_id"] == second
    as_alice = cli(real, "list", "--user", "alice", "--json")
    assert as_alice.returncode == 0 and {t["user_id"] for t in json.loads(as_alice.stdout)["tasks"]} == {"alice"}
    as_bob = cli(real, "status", first, "--user", "bob")
    assert as_bob.returncode == 1 and "Access denied" in as_bob.stderr


def test_cli_upload_rerun_and_verbs(real, clip, tmp_path):
    out = tmp_path / "results"
    first = cli(real, "upload", str(clip), "--no-video", "--no-audio", "--download", str(out), "--poll-interval", "0.3")
    assert first.returncode == 0, first.stdout + first.stderr + real.output()
    assert "1 ok, 0 failed" in first.stdout
    result = out / "grid_bbaf2n_protected.mp4"
    assert_playable(result)
    state = json.loads((out / ".media-cleaner-state.json").read_text())
    (entry,) = state["items"].values()
    task_id = entry["task_id"]
    with MediaCleanerClient(real.url) as client:
        total = client.list_tasks()["total"]
    rerun = cli(real, "upload", str(clip), "--no-video", "--no-audio", "--download", str(out))
    assert rerun.returncode == 0 and "skipped" in rerun.stdout
    with MediaCleanerClient(real.url) as client:
        assert client.list_tasks()["total"] == total  # nothing uploaded again

    status = cli(real, "status", task_id)
    assert status.returncode == 0 and "completed" in status.stdout and task_id in status.stdout
    listed = cli(real, "list", "--status", "completed", "--json")
    assert listed.returncode == 0 and task_id in {t["task_id"] for t in json.loads(listed.stdout)["tasks"]}
    fetched = cli(real, "download", task_id, str(tmp_path / "dl"))
    assert fetched.returncode == 0 and Path(fetched.stdout.strip()).read_bytes() == result.read_bytes()
    stats = cli(real, "stats", "--json")
    assert stats.returncode == 0 and json.loads(stats.stdout)["workers"]["configured"] == 1
    health = cli(real, "health")
    assert health.returncode == 0 and health.stdout.startswith("ok (version")
    missing = cli(real, "status", "000000000000")
    assert missing.returncode == 1 and missing.stderr.startswith("error:") and "Traceback" not in missing.stderr
    not_video = tmp_path / "x.mp4"
    not_video.write_text("nope")
    refused = cli(real, "upload", str(not_video))
    assert refused.returncode == 1 and "not_a_video" in refused.stdout
    cleaned = cli(real, "cleanup", "--older-than", "1000")
    assert cleaned.returncode == 0 and cleaned.stdout.startswith("deleted 0 task(s)")


def test_webhook_receiver_example_gets_a_signed_event(real, clip):
    spec = importlib.util.spec_from_file_location("example_webhook_receiver", REPO / "examples" / "webhook_receiver.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    events: list[dict] = []
    receiver = module.serve(WEBHOOK_SECRET, port=0, on_event=events.append)
    try:
        with MediaCleanerClient(real.url) as client:
            task_id = client.upload_video(clip, webhook_url=receiver.url, **MECHANICS)["task_id"]
            assert client.wait_for_completion(task_id, timeout=240, poll_interval=0.3)["status"] == "completed"
        deadline = time.monotonic() + 60
        while not events and time.monotonic() < deadline:
            time.sleep(0.2)
        assert events, real.output()
        assert events[0]["type"] == "task.completed" and events[0]["data"]["task_id"] == task_id
    finally:
        receiver.shutdown()


def test_batch_cron_example_against_real_server(real, clip, tmp_path):
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    shutil.copy(clip, incoming / "talk.mpg")  # a temp copy, outside the repo
    cmd = [sys.executable, "examples/batch_cron.py", str(incoming), str(tmp_path / "out"), "--server", real.url]
    cmd += ["--poll-interval", "0.5", "--no-video", "--no-audio"]
    first = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr + real.output()
    assert_playable(tmp_path / "out" / "talk_protected.mp4")
    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0 and "skipped" in second.stdout


@pytest.mark.slow
def test_spec_command_line_full_protection(real, clip, tmp_path):
    """`python client.py upload video --wait --download ./results`, exactly as the spec shows, full protection."""
    started = time.monotonic()
    done = cli(real, "upload", str(clip), "--wait", "--download", str(tmp_path / "results"), timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr + real.output()
    result = tmp_path / "results" / "grid_bbaf2n_protected.mp4"
    assert_playable(result)
    state = json.loads((tmp_path / "results" / ".media-cleaner-state.json").read_text())
    (entry,) = state["items"].values()
    with MediaCleanerClient(real.url) as client:
        task = client.get_task(entry["task_id"])
    assert task["parameters"]["protect_video"] and task["parameters"]["protect_audio"]
    assert task["report"] is not None
    print(f"full protection of a 3 s clip through the CLI: {time.monotonic() - started:.1f} s")


def test_flask_example_against_real_server(real, clip):
    """The Flask app forwards an upload to the real server and tracks it; cancelled early to spare the CPU."""
    import io

    spec = importlib.util.spec_from_file_location("example_flask_app", REPO / "examples" / "flask_app" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    web = module.create_app(real.url).test_client()
    answer = web.post(
        "/upload",
        data={"file": (io.BytesIO(clip.read_bytes()), clip.name), "epsilon": "0.1", "audio_level": "слабый"},
        content_type="multipart/form-data",
    )
    assert answer.status_code == 303, answer.data
    task_id = answer.headers["Location"].rsplit("/", 1)[-1]
    status = web.get(f"/api/tasks/{task_id}").get_json()
    assert status["task_id"] == task_id and status["original_filename"] == clip.name
    assert web.get(f"/tasks/{task_id}").status_code == 200
    with MediaCleanerClient(real.url) as client:
        task = client.get_task(task_id)
        assert task["parameters"]["epsilon"] == 0.1 and task["parameters"]["audio_level"] == "weak"
        if task["status"] in ("pending", "processing"):
            client.cancel_task(task_id)
        final = client.wait_for_completion(task_id, timeout=240, poll_interval=0.3)
    if final["status"] != "completed":
        assert web.get(f"/tasks/{task_id}/download").status_code == 409
    text = web.post("/upload", data={"file": (io.BytesIO(b"plain text"), "a.mp4")}, content_type="multipart/form-data")
    assert text.status_code == 415


def test_oversize_upload_is_refused_early_with_too_large(clip, tmp_path):
    """A second real server (API only) with a 200 kB limit: the client gets the 413, not a broken pipe."""
    from media_cleaner.client import FileTooLargeError

    small = RealServer(tmp_path / "small", workers=0, env={"MEDIA_CLEANER_MAX_VIDEO_SIZE_GB": "0.0002"}).start()
    try:
        big = tmp_path / "big.mp4"
        with big.open("wb") as fh:  # 64 MiB, sparse: the server must answer before the body is sent
            fh.truncate(64 * 1024 * 1024)
        sent: list[int] = []
        with MediaCleanerClient(small.url) as client:
            with pytest.raises(FileTooLargeError) as exc:
                client.upload_video(big, progress=lambda s, t: sent.append(s))
            assert exc.value.status_code == 413 and "max_video_size_gb" in exc.value.message
            assert sent == []  # refused from the server's published limit before a byte of the body went out
            with pytest.raises(FileTooLargeError) as exc:
                client.upload_video(clip)  # small file: sent, and the server's own 413 comes back
            assert exc.value.body["error"]["code"] == "too_large"
        proc = cli(small, "upload", str(clip))
        assert proc.returncode == 1 and "too_large" in proc.stdout
    finally:
        small.stop()
