"""Scale-out on a real PostgreSQL: two API processes and two Procrastinate worker processes on 127.0.0.1 share one
database and one storage directory.

Mechanics use protect_video=false / protect_audio=false (a real transcode, no attack) so CPU stays bounded:
20 GRID clips spread over both workers; kill -9 of a worker mid-task (the other finishes it); cancel of a task
running on a worker from the other API node; an API node killed and restarted loses nothing; a pending task whose
job never got queued is picked up anyway.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from media_cleaner.jobs.backends.procrastinate_backend import current_job_states
from media_cleaner.jobs.store import TaskStore
from pg import PgCluster, free_port, start_cluster

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data"
SHORT = DATA / "video" / "grid_bbaf2n.mpg"  # 3 s 360x288: ~1-2 s of transcoding
LONG = DATA / "bench" / "talking_crowd_720p.mp4"  # 11 s 720p: long enough to interrupt mid-task
MECHANICS = {"protect_video": "false", "protect_audio": "false"}
CLI = [sys.executable, "-c", "import sys; from media_cleaner.cli import main; sys.exit(main())"]


def wait_for(what: str, check: Callable[[], Any], timeout: float, every: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; last: {last!r}")


class Node:
    """One `media-cleaner api` or `media-cleaner worker` process with its own base dir and log file."""

    def __init__(self, kind: str, env: dict[str, str], home: Path, args: list[str]) -> None:
        self.kind, self.env, self.home, self.args = kind, env, home, args
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = int(args[args.index("--port") + 1]) if "--port" in args else None

    def start(self) -> Node:
        self.home.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "MEDIA_CLEANER_BASE_DIR": str(self.home)}
        with open(self.home / "node.log", "ab") as log:
            self.proc = subprocess.Popen([*CLI, self.kind, *self.args], env=env, stdout=log, stderr=log, cwd=self.home)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, lines: int = 40) -> str:
        path = self.home / "node.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


class Cluster:
    def __init__(self, pg: PgCluster, root: Path) -> None:
        self.url = pg.create_database("media_cleaner_cluster")
        self.shared = root / "shared"
        self.env = {
            **os.environ,
            "MEDIA_CLEANER_DATABASE_URL": self.url,
            "MEDIA_CLEANER_STORAGE_URL": f"shared://{self.shared}",
            "MEDIA_CLEANER_MODEL_CACHE_DIR": str(REPO / ".venv" / "model_cache"),
            "MEDIA_CLEANER_HEARTBEAT_TIMEOUT_SECONDS": "6",
            "MEDIA_CLEANER_CANCEL_GRACE_SECONDS": "3",
            "MEDIA_CLEANER_TORCH_THREADS": "1",
            "MEDIA_CLEANER_ALLOW_MODEL_DOWNLOAD": "false",
            # Halves the CPU of the long transcodes; at 720p a task still runs for seconds, time to interrupt it.
            "MEDIA_CLEANER_VIDEO_PRESET": "veryfast",
        }
        self.root = root
        self.apis = [
            Node("api", self.env, root / f"api{i}", ["--host", "127.0.0.1", "--port", str(free_port())])
            for i in range(2)
        ]
        self.workers = [Node("worker", self.env, root / f"worker{i}", ["--concurrency", "1"]) for i in range(2)]
        self.store = TaskStore(self.url)

    def start(self) -> None:
        for node in [*self.apis, *self.workers]:
            node.start()
        for api in self.apis:
            wait_for(f"{api.url}/health", lambda api=api: httpx.get(f"{api.url}/health").status_code == 200, 120)
        self.wait_workers(2)

    def wait_workers(self, count: int) -> None:
        def ready() -> bool:
            stats = httpx.get(f"{self.apis[0].url}/stats").json()
            return stats["workers"]["alive"] >= count and stats["workers"].get("ready", count) >= count

        wait_for(f"{count} ready workers", ready, 300, every=1.0)

    def stop(self) -> None:
        for node in [*self.apis, *self.workers]:
            node.stop()
        self.store.engine.dispose()

    def upload(self, api: Node, clip: Path = SHORT, **fields: str) -> str:
        with clip.open("rb") as fh:
            reply = httpx.post(
                f"{api.url}/upload", files={"file": (clip.name, fh)}, data={**MECHANICS, **fields}, timeout=60
            )
        assert reply.status_code == 202, reply.text
        return reply.json()["task_id"]

    def task(self, task_id: str, api: Node | None = None) -> dict[str, Any]:
        reply = httpx.get(f"{(api or self.apis[0]).url}/task/{task_id}", timeout=30)
        assert reply.status_code == 200, reply.text
        return reply.json()

    def wait_status(self, task_id: str, status: str, timeout: float, api: Node | None = None) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            task = self.task(task_id, api)
            if task["status"] in ("completed", "failed", "cancelled") and task["status"] != status:
                raise AssertionError(f"task {task_id} ended {task['status']}: {task['error']}")
            return task if task["status"] == status else None

        return wait_for(f"task {task_id} {status}", reached, timeout)

    def worker_pid(self, task_id: str) -> int:
        row = self.store.get(task_id)
        assert row is not None and row.worker_id, f"task {task_id} has no worker"
        return int(row.worker_id.split(":")[-2])

    def logs(self) -> str:
        return "\n".join(f"--- {n.kind} {n.home.name}\n{n.log_tail()}" for n in [*self.apis, *self.workers])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    for clip in (SHORT, LONG):
        if not clip.is_file():
            pytest.skip(f"clip missing: {clip}")
    pg = start_cluster()
    cl = Cluster(pg, tmp_path_factory.mktemp("cluster"))
    try:
        cl.start()
        yield cl
    except BaseException:
        print(cl.logs())
        raise
    finally:
        cl.stop()
        pg.stop()


def test_twenty_tasks_spread_over_both_workers(cluster: Cluster) -> None:
    ids = [cluster.upload(cluster.apis[i % 2]) for i in range(20)]
    done = [cluster.wait_status(task_id, "completed", 240) for task_id in ids]
    assert all(task["progress"] == 100.0 and task["output_size_bytes"] > 0 for task in done)
    pids = {cluster.worker_pid(task_id) for task_id in ids}
    assert pids == {w.pid for w in cluster.workers}, "both worker processes took tasks"
    # Storage is shared: an output written by a worker downloads from either API node, whichever took the upload.
    for api, task_id in ((cluster.apis[1], ids[0]), (cluster.apis[0], ids[1])):
        reply = httpx.get(f"{api.url}/download/{task_id}", timeout=60)
        assert reply.status_code == 200 and len(reply.content) == done[ids.index(task_id)]["output_size_bytes"]
    assert all(current_job_states(cluster.store, task_id) == ["succeeded"] for task_id in ids)


def test_api_node_restart_loses_nothing(cluster: Cluster) -> None:
    first, second = cluster.apis
    before = httpx.get(f"{second.url}/tasks", params={"limit": 200}).json()["total"]
    via_first = [cluster.upload(first) for _ in range(3)]
    first.kill()  # kill -9: no shutdown hooks
    via_second = [cluster.upload(second) for _ in range(2)]
    first.start()
    wait_for("restarted API", lambda: httpx.get(f"{first.url}/health").status_code == 200, 120)
    for task_id in via_first + via_second:
        assert cluster.wait_status(task_id, "completed", 180, api=first)["attempts"] == 1
    listed = httpx.get(f"{first.url}/tasks", params={"limit": 200}).json()
    assert listed["total"] == before + 5
    assert {t["task_id"] for t in listed["tasks"]} >= set(via_first + via_second)


def test_pending_task_without_a_job_is_requeued(cluster: Cluster) -> None:
    """An API node that died between writing the task row and deferring its job: workers find the row anyway."""
    task_id = "orphan" + os.urandom(3).hex()
    name = f"{task_id}_{SHORT.name}"
    shutil.copyfile(SHORT, cluster.shared / "videos_input" / name)
    cluster.store.create(
        id=task_id,
        original_filename=SHORT.name,
        input_name=name,
        output_name=f"{task_id}_grid_protected.mp4",
        download_name="grid_protected.mp4",
        input_size_bytes=SHORT.stat().st_size,
        epsilon=0.12,
        audio_level="weak",
        protect_video=False,
        protect_audio=False,
    )
    assert current_job_states(cluster.store, task_id) == []
    cluster.wait_status(task_id, "completed", 90)
    assert current_job_states(cluster.store, task_id) == ["succeeded"]


def test_cancel_running_task_on_remote_worker(cluster: Cluster) -> None:
    task_id = cluster.upload(cluster.apis[0], LONG)
    wait_for("processing", lambda: cluster.task(task_id)["progress"] > 1.0, 120, every=0.1)
    pid = cluster.worker_pid(task_id)
    assert pid in {w.pid for w in cluster.workers}
    t0 = time.monotonic()
    reply = httpx.post(f"{cluster.apis[1].url}/cancel/{task_id}", timeout=30)  # the other API node
    assert reply.status_code == 200 and reply.json()["status"] == "cancelled"

    def job_stopped() -> list[str] | None:
        states = current_job_states(cluster.store, task_id)
        return states if states and states[-1] != "doing" else None

    states = wait_for("the job to stop", job_stopped, 20, every=0.2)
    stopped_after = time.monotonic() - t0
    assert stopped_after < 10, f"running job took {stopped_after:.1f} s to stop"
    assert states[-1] in ("aborted", "succeeded")
    task = cluster.task(task_id)
    assert task["status"] == "cancelled" and task["download_url"] is None
    row = cluster.store.get(task_id)
    assert row is not None and not (cluster.shared / "videos_output" / row.output_name).exists()
    # The worker is free again: the next task runs.
    cluster.wait_status(cluster.upload(cluster.apis[1]), "completed", 120)


def test_worker_stopped_mid_task_hands_the_task_back(cluster: Cluster) -> None:
    """SIGTERM (systemctl stop, docker stop): the job gets cancel_grace_seconds, then the task returns to the queue
    without counting an attempt and the other worker runs it."""
    task_id = cluster.upload(cluster.apis[0], LONG)
    wait_for("processing", lambda: cluster.task(task_id)["progress"] > 1.0, 120, every=0.1)
    stopping = next(w for w in cluster.workers if w.pid == cluster.worker_pid(task_id))
    other = next(w for w in cluster.workers if w is not stopping)
    assert stopping.proc is not None
    stopping.proc.terminate()
    assert stopping.proc.wait(timeout=60) == 0, stopping.log_tail()
    task = cluster.wait_status(task_id, "completed", 300)
    assert task["attempts"] == 1, "a hand-back is not a failed attempt"
    assert cluster.worker_pid(task_id) == other.pid
    assert current_job_states(cluster.store, task_id) == ["succeeded", "succeeded"]
    stopping.start()
    cluster.wait_workers(2)


def test_kill_worker_mid_task_other_worker_finishes(cluster: Cluster) -> None:
    task_id = cluster.upload(cluster.apis[1], LONG)
    wait_for("processing", lambda: cluster.task(task_id)["progress"] > 1.0, 120, every=0.1)
    victim_pid = cluster.worker_pid(task_id)
    victim = next(w for w in cluster.workers if w.pid == victim_pid)
    survivor = next(w for w in cluster.workers if w.pid != victim_pid)
    victim.kill()
    task = cluster.wait_status(task_id, "completed", 300)
    assert task["attempts"] == 2
    assert cluster.worker_pid(task_id) == survivor.pid
    reply = httpx.get(f"{cluster.apis[0].url}/download/{task_id}", timeout=60)
    assert reply.status_code == 200 and len(reply.content) == task["output_size_bytes"]
    # Procrastinate saw the stalled job and retried it on the survivor.
    assert current_job_states(cluster.store, task_id) == ["succeeded"]
    victim.start()  # leave two workers for whatever runs next
