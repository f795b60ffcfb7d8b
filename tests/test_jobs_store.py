"""TaskStore on a real SQLite (WAL) file: claims, leases, recovery, timeouts, cancel races, webhook outbox."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest

from media_cleaner.jobs import DuplicateIdempotencyKey, TaskStatus, TaskStore, open_store, utcnow


def _task(store: TaskStore, task_id: str, **extra) -> None:
    fields = dict(
        id=task_id,
        original_filename=f"{task_id}.mp4",
        input_name=f"{task_id}_in.mp4",
        output_name=f"{task_id}_in_protected.mp4",
        download_name="in_protected.mp4",
        input_size_bytes=10,
        epsilon=0.1,
        audio_level="weak",
    )
    fields.update(extra)
    store.create(**fields)


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(f"sqlite:///{tmp_path / 'q' / 'tasks.db'}", max_attempts=2)


def test_default_database_is_sqlite_wal_under_queue_db(settings) -> None:
    store = open_store(settings)
    store.ping()
    db = settings.path("queue") / "tasks.db"
    assert db.is_file()
    assert sqlite3.connect(db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_claim_is_fifo_and_exclusive(store: TaskStore) -> None:
    for i in range(3):
        _task(store, f"t{i}")
    first = store.claim("w1")
    second = store.claim("w2")
    assert (first.id, second.id) == ("t0", "t1")
    assert first.status == TaskStatus.PROCESSING and first.worker_id == "w1" and first.attempts == 1
    assert store.claim("w3").id == "t2"
    assert store.claim("w4") is None


def _claimer(url: str, worker: str, out: mp.Queue) -> None:
    store = TaskStore(url)
    got = []
    while (task := store.claim(worker)) is not None:
        got.append(task.id)
    out.put(got)


def test_concurrent_claims_from_processes_never_share_a_task(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tasks.db'}"
    store = TaskStore(url)
    for i in range(60):
        _task(store, f"t{i:03d}")
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claimer, args=(url, f"w{i}", out)) for i in range(4)]
    for p in procs:
        p.start()
    claimed = [tid for _ in procs for tid in out.get(timeout=60)]
    for p in procs:
        p.join(30)
    assert sorted(claimed) == sorted(f"t{i:03d}" for i in range(60))  # each exactly once
    assert store.counts()["processing"] == 60


def test_complete_after_cancel_is_refused(store: TaskStore) -> None:
    _task(store, "a")
    store.claim("w1")
    assert store.cancel("a").status == TaskStatus.CANCELLED
    assert not store.still_owned("a", "w1")
    assert not store.heartbeat("a", "w1")
    assert store.complete("a", "w1", output_size=5, report={}) is None
    assert store.get("a").status == TaskStatus.CANCELLED
    assert store.cancel("a") is None  # already terminal


def test_recovery_retries_then_fails(store: TaskStore) -> None:
    _task(store, "a")
    store.claim("w1")
    rec = store.recover(worker_ids=["w1"])
    assert rec.requeued == ["a"] and store.get("a").status == TaskStatus.PENDING
    store.claim("w2")
    assert store.get("a").attempts == 2
    rec = store.recover(stale_before=utcnow() + timedelta(seconds=1))  # every lease is stale now
    task = store.get("a")
    assert rec.failed == ["a"] and task.status == TaskStatus.FAILED and task.error_code == "worker_lost"


def test_fresh_heartbeat_is_not_recovered(store: TaskStore) -> None:
    _task(store, "a")
    store.claim("w1")
    assert store.heartbeat("a", "w1")
    assert store.recover(stale_before=utcnow() - timedelta(seconds=30)).requeued == []
    assert store.get("a").status == TaskStatus.PROCESSING


def test_expire_enforces_timeout(store: TaskStore) -> None:
    _task(store, "a")
    _task(store, "b")
    store.claim("w1")
    assert store.expire(timedelta(hours=1)) == []
    assert store.expire(timedelta(seconds=-1)) == ["a"]
    task = store.get("a")
    assert task.status == TaskStatus.FAILED and task.error_code == "timeout"
    assert store.get("b").status == TaskStatus.PENDING  # pending tasks do not time out


def test_release_does_not_count_an_attempt(store: TaskStore) -> None:
    _task(store, "a")
    store.claim("w1")
    assert store.release("a", "w1")
    task = store.get("a")
    assert task.status == TaskStatus.PENDING and task.attempts == 0 and task.worker_id is None


def test_idempotency_key_is_unique_per_user(store: TaskStore) -> None:
    _task(store, "a", idempotency_scope="alice", idempotency_key="k1")
    _task(store, "b", idempotency_scope="bob", idempotency_key="k1")
    with pytest.raises(DuplicateIdempotencyKey):
        _task(store, "c", idempotency_scope="alice", idempotency_key="k1")
    assert store.find_idempotent("alice", "k1").id == "a"


def test_list_filters_and_counts(store: TaskStore) -> None:
    _task(store, "a", user_id="alice")
    _task(store, "b", user_id="alice")
    _task(store, "c")
    store.claim("w")  # a
    tasks, total = store.list(user_id="alice", limit=1)
    assert total == 2 and len(tasks) == 1 and tasks[0].id == "b"  # newest first
    assert [t.id for t in store.list(user_id=None)[0]] == ["c"]
    assert store.list(user_id="alice", status="processing")[1] == 1
    assert store.list(user_id=None, any_user=True)[1] == 3
    assert store.counts() == {"pending": 2, "processing": 1, "completed": 0, "failed": 0, "cancelled": 0, "total": 3}


def test_terminal_transitions_write_webhook_outbox(store: TaskStore) -> None:
    _task(store, "a", webhook_url="https://example.org/hook")
    _task(store, "b")
    store.claim("w")
    store.complete("a", "w", output_size=7, report={"ok": True})
    store.cancel("b")  # no webhook_url: nothing queued
    leased = store.lease_webhooks(timedelta(minutes=1))
    assert [d.event for d in leased] == ["task.completed"]
    assert '"task_id":"a"' in leased[0].payload_json and leased[0].attempts == 1
    assert store.lease_webhooks(timedelta(minutes=1)) == []  # leased: a second dispatcher skips it
    store.webhook_result(leased[0].id, ok=True)
    assert store.webhook_deliveries("a")[0].delivered_at is not None


def test_delete_older_than_keeps_active_tasks(store: TaskStore) -> None:
    _task(store, "a")
    _task(store, "b")
    store.cancel("a")
    gone = store.delete_older_than(utcnow() + timedelta(seconds=1))
    assert [t.id for t in gone] == ["a"]
    assert store.get("a") is None and store.get("b") is not None
