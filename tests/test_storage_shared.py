"""Shared-path storage: two "nodes" (own base dirs) on one shared directory, as on an NFS mount."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from media_cleaner.config import Settings
from media_cleaner.storage import open_storage
from media_cleaner.storage.shared import SharedPathStorage


def node(tmp_path: Path, name: str, shared: Path) -> SharedPathStorage:
    storage = open_storage(Settings(base_dir=tmp_path / name, storage_url=f"shared://{shared}"))
    assert isinstance(storage, SharedPathStorage)
    return storage


def test_upload_on_one_node_is_read_and_published_by_another(tmp_path: Path) -> None:
    shared = tmp_path / "mount"
    api, worker = node(tmp_path, "api", shared), node(tmp_path, "worker", shared)
    payload = os.urandom(3 * 1024 * 1024 + 17)

    sink = api.new_upload("abc123_clip.mp4")
    for start in range(0, len(payload), 65536):
        sink.write(payload[start : start + 65536])
    assert not (shared / "videos_input" / "abc123_clip.mp4").exists(), "invisible until committed"
    sink.commit()
    assert worker.local_path("input", "abc123_clip.mp4").read_bytes() == payload

    work = worker.work_dir("abc123")
    assert shared not in work.parents and (tmp_path / "worker") in work.parents, "scratch stays on the node"
    produced = work / "abc123_clip_protected.mp4"
    produced.write_bytes(payload[::-1])
    final = worker.publish_output(produced, "abc123_clip_protected.mp4")
    assert final.parent == shared / "videos_output"
    assert api.local_path("output", "abc123_clip_protected.mp4").read_bytes() == payload[::-1]
    assert api.size("output", "abc123_clip_protected.mp4") == len(payload)
    assert not produced.exists() and not list((shared / "videos_output").glob(".*.part"))
    worker.clear_work_dir("abc123")
    assert not work.exists()


def test_publish_across_filesystems_is_atomic_for_readers(tmp_path: Path) -> None:
    """Scratch on tmpfs, mount on disk: a plain rename would fail with EXDEV; readers never see a partial file."""
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the temp dir")
    scratch = Path("/dev/shm") / f"mc-scratch-{os.getpid()}"
    shared = tmp_path / "mount"
    storage = SharedPathStorage(Settings(base_dir=tmp_path / "n"), root=shared, scratch=scratch)
    try:
        produced = storage.work_dir("t1") / "out.mp4"
        payload = os.urandom(24 * 1024 * 1024)
        produced.write_bytes(payload)
        final = shared / "videos_output" / "t1_out.mp4"
        seen: list[int] = []
        done = threading.Event()

        def reader() -> None:
            while not done.is_set():
                if final.exists():
                    seen.append(final.stat().st_size)
                time.sleep(0.0005)

        thread = threading.Thread(target=reader)
        thread.start()
        storage.publish_output(produced, "t1_out.mp4")
        done.set()
        thread.join()
        assert final.read_bytes() == payload
        assert all(size == len(payload) for size in seen), "a reader saw a partial output"
    finally:
        storage.clear_work_dir("t1")
        scratch.rmdir()


def test_sweep_removes_old_scratch_and_half_published_outputs(tmp_path: Path) -> None:
    storage = node(tmp_path, "n", tmp_path / "mount")
    old_work = storage.work_dir("dead")
    (old_work / "x.mp4").write_bytes(b"x" * 1000)
    partial = storage.dirs["output"] / ".t9_out.mp4.abcd.part"
    partial.write_bytes(b"y" * 500)
    fresh = storage.work_dir("alive")
    past = time.time() - 7200
    for path in (old_work, partial):
        os.utime(path, (past, past))
    freed = storage.sweep_temp(3600)
    assert freed >= 1500
    assert not old_work.exists() and not partial.exists() and fresh.exists()


def test_unknown_storage_scheme_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="shared:///mount"):
        open_storage(Settings(base_dir=tmp_path, storage_url="s3://bucket/prefix"))
