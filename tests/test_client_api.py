"""MediaCleanerClient against a real HTTP server on 127.0.0.1 that implements the contract minimally (fixture)."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client_fixture_server import FakeState, ServerThread
from media_cleaner.client import (
    AccessDeniedError,
    AuthenticationError,
    EmptyFileError,
    FileTooLargeError,
    InvalidRequestError,
    MediaCleanerClient,
    NotAVideoError,
    NotCancellableError,
    NotReadyError,
    ServerUnavailableError,
    TaskNotFoundError,
    WaitTimeoutError,
)
from media_cleaner.client.api import _filename
from media_cleaner.client.errors import ServerError, error_for

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def state() -> FakeState:  # overrides conftest's: no processing delay here
    return FakeState()


@pytest.fixture
def client(server: ServerThread) -> Iterator[MediaCleanerClient]:
    with MediaCleanerClient(server.url, retries=1, backoff=0.05) as c:
        yield c


@pytest.fixture
def video(tmp_path: Path) -> Path:
    path = tmp_path / "clip.mp4"
    path.write_bytes(bytes(range(256)) * 4096)  # 1 MiB: several upload chunks
    return path


def test_upload_streams_multipart_with_length_progress_and_fields(client, state, video):
    seen: list[tuple[int, int]] = []
    answer = client.upload_video(
        video, epsilon=0.15, audio_level="сильный", idempotency_key="k1", progress=lambda s, t: seen.append((s, t))
    )
    assert answer["status"] == "pending" and len(answer["task_id"]) == 12
    rec = state.uploads[-1]
    # Exact Content-Length, no chunked encoding: proxies and the server's early 413 rely on it.
    assert rec["transfer_encoding"] is None and int(rec["content_length"]) > video.stat().st_size
    assert rec["fields"] == {"epsilon": "0.15", "audio_level": "сильный"}
    assert rec["filename"] == "clip.mp4" and rec["idempotency_key"] == "k1"
    assert state.tasks[answer["task_id"]].data == video.read_bytes()
    assert seen[-1][0] == seen[-1][1] == int(rec["content_length"])
    assert [s for s, _ in seen] == sorted(s for s, _ in seen) and len(seen) >= 2


def test_upload_non_ascii_filename_and_file_object(client, state, tmp_path):
    path = tmp_path / 'видео "1".mp4'
    path.write_bytes(b"\x00\x01" * 1000)
    client.upload_video(path)
    assert state.uploads[-1]["filename"] == 'видео "1".mp4'
    with path.open("rb") as fh:
        answer = client.upload_video(fh, filename="from_object.mp4", protect_audio=False)
    assert state.uploads[-1]["filename"] == "from_object.mp4"
    assert state.uploads[-1]["fields"] == {"protect_audio": "false"}
    assert state.tasks[answer["task_id"]].data == path.read_bytes()


def test_idempotency_key_returns_same_task(client, video):
    a = client.upload_video(video, idempotency_key="same")
    b = client.upload_video(video, idempotency_key="same")
    c = client.upload_video(video)
    assert a["task_id"] == b["task_id"] != c["task_id"]


def test_wait_download_and_task_fields(client, video, tmp_path):
    task_id = client.upload_video(video)["task_id"]
    updates: list[dict] = []
    task = client.wait_for_completion(task_id, timeout=10, poll_interval=0.1, on_update=updates.append)
    assert task["status"] == "completed" and task["progress"] == 100
    assert any(u["status"] == "processing" for u in updates)
    path = client.download_result(task_id, output_path=tmp_path / "results")
    assert path == tmp_path / "results" / "clip_protected.mp4"
    assert path.read_bytes() == b"PROTECTED:" + video.read_bytes()
    assert not list((tmp_path / "results").glob("*.part"))
    # An explicit file name is honoured.
    named = client.download_result(task_id, output_path=tmp_path / "named.mp4")
    assert named.read_bytes() == path.read_bytes()
    assert b"".join(client.iter_result(task_id)) == path.read_bytes()


def test_download_resumes_after_dropped_connection(client, state, video, tmp_path):
    state.truncate_first_download_at = 300_000
    task_id = client.upload_video(video)["task_id"]
    client.wait_for_completion(task_id, timeout=10, poll_interval=0.1)
    progress: list[tuple[int, int]] = []
    path = client.download_result(task_id, tmp_path, progress=lambda d, t: progress.append((d, t)))
    assert path.read_bytes() == b"PROTECTED:" + video.read_bytes()
    assert state.range_requests == ["bytes=300000-"]  # continued, not restarted
    assert progress[-1][0] == path.stat().st_size


def test_download_resumes_from_leftover_part_file(client, state, video, tmp_path):
    task_id = client.upload_video(video)["task_id"]
    client.wait_for_completion(task_id, timeout=10, poll_interval=0.1)
    full = b"PROTECTED:" + video.read_bytes()
    (tmp_path / f".{task_id}.download.part").write_bytes(full[:12345])
    path = client.download_result(task_id, tmp_path)
    assert path.read_bytes() == full and state.range_requests == ["bytes=12345-"]
    # A stale part longer than the file (416) is discarded and the download starts clean.
    (tmp_path / f".{task_id}.download.part").write_bytes(full + b"junk")
    assert client.download_result(task_id, tmp_path).read_bytes() == full


def test_error_mapping_carries_server_code_and_message(client, state, tmp_path, video):
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(EmptyFileError) as exc:
        client.upload_video(empty)
    assert exc.value.status_code == 400 and exc.value.code == "empty_file"
    text = tmp_path / "notes.mp4"
    text.write_bytes(b"NOTAVIDEO hello")
    with pytest.raises(NotAVideoError, match="no video stream"):
        client.upload_video(text)
    with pytest.raises(InvalidRequestError) as exc:
        client.upload_video(video, epsilon=5)
    assert exc.value.status_code == 422 and "between 0 and 1" in exc.value.message
    with pytest.raises(InvalidRequestError):
        client.upload_video(video, audio_level="loud")
    state.max_bytes = 100
    with pytest.raises(FileTooLargeError):
        client.upload_video(video)
    with pytest.raises(TaskNotFoundError) as exc:
        client.get_task("doesnotexist")
    assert exc.value.body == {"error": {"code": "not_found", "message": "Task doesnotexist not found"}}
    with pytest.raises(FileNotFoundError):
        client.upload_video(tmp_path / "missing.mp4")
    with pytest.raises(ValueError):
        client.get_task("../stats")


def test_not_ready_cancel_and_not_cancellable(client, state, video):
    state.process_seconds = 30
    task_id = client.upload_video(video)["task_id"]
    with pytest.raises(NotReadyError) as exc:
        client.download_result(task_id)
    assert exc.value.status_code == 409
    assert client.cancel_task(task_id)["status"] == "cancelled"
    with pytest.raises(NotCancellableError):
        client.cancel_task(task_id)
    assert client.wait_for_completion(task_id, timeout=5, poll_interval=0.05)["status"] == "cancelled"


def test_wait_timeout_is_a_timeout_error_with_last_state(client, state, video):
    state.process_seconds = 30
    task_id = client.upload_video(video)["task_id"]
    started = time.monotonic()
    with pytest.raises(TimeoutError) as exc:
        client.wait_for_completion(task_id, timeout=0.5, poll_interval=0.1)
    assert isinstance(exc.value, WaitTimeoutError) and exc.value.task["status"] == "processing"
    assert exc.value.task_id == task_id and time.monotonic() - started < 3


def test_failed_task_is_returned_not_raised(client, tmp_path):
    path = tmp_path / "will_fail.mp4"
    path.write_bytes(b"x" * 100)
    task = client.wait_for_completion(client.upload_video(path)["task_id"], timeout=10, poll_interval=0.1)
    assert task["status"] == "failed" and task["error"]["code"] == "processing_failed"


def test_user_isolation_and_api_keys(server, state, video):
    with MediaCleanerClient(server.url, user_id="alice") as alice, MediaCleanerClient(server.url, user_id="bob") as bob:
        task_id = alice.upload_video(video)["task_id"]
        assert alice.get_task(task_id)["user_id"] == "alice"
        with pytest.raises(AccessDeniedError) as exc:
            bob.get_task(task_id)
        assert exc.value.message == "Access denied"
        assert [t["task_id"] for t in alice.list_tasks()["tasks"]] == [task_id]
        assert bob.list_tasks()["total"] == 0
    state.api_keys = {"secret-key": "carol"}
    with MediaCleanerClient(server.url, retries=0) as anon, pytest.raises(AuthenticationError):
        anon.get_stats()
    with MediaCleanerClient(server.url, api_key="secret-key") as carol:
        assert carol.upload_video(video, user_id="ignored")["status"] == "pending"
        assert carol.list_tasks()["tasks"][0]["user_id"] == "carol"


def test_list_filters_pagination_stats_health_cleanup(client, state, video):
    state.process_seconds = 0.2
    ids = [client.upload_video(video)["task_id"] for _ in range(5)]
    client.wait_for_completion(ids[-1], timeout=10, poll_interval=0.1)
    page = client.list_tasks(limit=2, offset=1, status="completed")
    assert page["total"] == 5 and len(page["tasks"]) == 2 and page["offset"] == 1
    assert sorted(t["task_id"] for t in client.iter_tasks(page_size=2)) == sorted(ids)
    assert client.get_stats()["queue"]["completed"] == 5
    assert client.health() == {"status": "ok", "version": "fixture"}
    assert client.cleanup(older_than_hours=1)["deleted_tasks"] == 0
    assert client.cleanup(older_than_hours=0) == {"deleted_tasks": 5, "freed_bytes": 5 * video.stat().st_size}


def test_unreachable_server_raises_connection_error():
    with MediaCleanerClient("http://127.0.0.1:9", retries=1, backoff=0.01) as c:
        with pytest.raises(ServerUnavailableError) as exc:
            c.health()
    assert isinstance(exc.value, ConnectionError) and "127.0.0.1:9" in str(exc.value)


def test_error_for_handles_foreign_bodies():
    proxy = error_for(502, "<html>Bad Gateway</html>", reason="Bad Gateway", method="GET", url="http://x/health")
    assert isinstance(proxy, ServerError) and proxy.code == "server_error" and "Bad Gateway" in proxy.message
    bare = error_for(404, {"detail": "Not Found"})
    assert isinstance(bare, TaskNotFoundError) and bare.message == "Not Found"


def test_content_disposition_names_are_reduced_to_safe_basenames():
    assert _filename('attachment; filename="a_protected.mp4"', "t") == "a_protected.mp4"
    assert _filename("attachment; filename*=UTF-8''%D0%B2%D0%B8%D0%B4%D0%B5%D0%BE.mp4", "t") == "видео.mp4"
    assert _filename('attachment; filename="../../etc/passwd"', "t") == "passwd"
    assert _filename("attachment", "abc") == "abc_protected.mp4"
    assert _filename('attachment; filename=".."', "abc") == "abc_protected.mp4"


def test_client_imports_neither_torch_nor_server_packages():
    code = (
        "import sys; from client import MediaCleanerClient; "
        "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('media_cleaner.api', 'media_cleaner.jobs', "
        "'media_cleaner.worker', 'media_cleaner.storage', 'media_cleaner.protect', 'fastapi', 'sqlalchemy'))]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_download_from_unreachable_server_is_a_connection_error(tmp_path):
    with MediaCleanerClient("http://127.0.0.1:9", retries=1, backoff=0.01) as c:
        with pytest.raises(ServerUnavailableError):
            c.download_result("abc123", tmp_path)
    assert not list(tmp_path.iterdir())


def test_multipart_body_is_streamed_in_bounded_chunks(tmp_path):
    from media_cleaner.client.multipart import CHUNK, MultipartUpload

    big = tmp_path / "big.mp4"
    with big.open("wb") as fh:
        fh.truncate(40 * 1024 * 1024)  # sparse: cheap to create, 40 MiB to stream
    with big.open("rb") as fh:
        body = MultipartUpload(fh, big.name, {"epsilon": "0.1"})
        sizes = [len(chunk) for chunk in body.stream()]
        again = sum(len(chunk) for chunk in body.stream())  # a retry re-reads the file from the start
    assert sum(sizes) == again == body.content_length
    assert max(sizes) <= CHUNK and len(sizes) >= 40  # never the whole file in memory


def test_queue_full_is_retried_after_the_servers_delay(server, state, video):
    state.queue_full_answers = 2
    with MediaCleanerClient(server.url, retries=3) as patient:
        assert patient.upload_video(video)["status"] == "pending"
    assert len(state.uploads) == 3 and len(state.tasks) == 1
    state.queue_full_answers = 1
    with MediaCleanerClient(server.url, retries=0) as hasty, pytest.raises(ServerError) as exc:
        hasty.upload_video(video)
    assert exc.value.code == "queue_full" and exc.value.status_code == 503


def test_redirects_are_reported_not_followed(server):
    from media_cleaner.client import ApiError

    # Following would send X-API-Key to another host; the client says where the server points instead.
    with MediaCleanerClient(server.url + "/old", api_key="k") as c, pytest.raises(ApiError) as exc:
        c.health()
    assert exc.value.code == "redirect" and "https://elsewhere.example/health" in exc.value.message
