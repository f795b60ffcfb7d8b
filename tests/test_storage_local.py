"""Local storage and safe names."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from media_cleaner.config import Settings
from media_cleaner.storage import LocalStorage, download_name, input_name, open_storage, output_name, sanitise_filename


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("video.mp4", "video.mp4"),
        ("../../etc/passwd", "passwd"),
        ("..\\..\\boot.ini", "boot.ini"),
        ("my clip (final).MOV", "my_clip_final.mov"),
        ("\x00\x1b[31mevil\n.mp4", "31mevil.mp4"),
        ("Привет мир.mkv", "Привет_мир.mkv"),
        ("", "video"),
        ("...", "video"),
        (None, "video"),
        (".hidden.mp4", "hidden.mp4"),
        ("a" * 500 + ".mp4", "a" * 116 + ".mp4"),
    ],
)
def test_sanitise_filename(raw: str | None, expected: str) -> None:
    assert sanitise_filename(raw) == expected


def test_spec_names() -> None:
    assert input_name("a1b2c3d4", "original name.mp4") == "a1b2c3d4_original_name.mp4"
    assert output_name("a1b2c3d4", "original name.mp4", "mp4") == "a1b2c3d4_original_name_protected.mp4"
    assert download_name("clip.mpg", "mp4") == "clip_protected.mp4"


def test_upload_sink_commit_and_abort(settings: Settings) -> None:
    storage = open_storage(settings)
    assert isinstance(storage, LocalStorage)
    sink = storage.new_upload("t1_a.mp4")
    sink.write(b"abc")
    sink.write(b"def")
    assert sink.size == 6 and not storage.local_path("input", "t1_a.mp4").exists()
    final = sink.commit()
    assert final.read_bytes() == b"abcdef" and storage.size("input", "t1_a.mp4") == 6
    aborted = storage.new_upload("t2_b.mp4")
    aborted.write(b"x" * 10)
    aborted.abort()
    assert storage.size("input", "t2_b.mp4") is None and list(settings.path("temp").iterdir()) == []
    with pytest.raises(ValueError):
        storage.local_path("input", "../escape")


def test_work_dir_publish_usage_sweep(settings: Settings) -> None:
    storage = open_storage(settings)
    work = storage.work_dir("t1")
    produced = work / "t1_a_protected.mp4"
    produced.write_bytes(b"y" * 100)
    final = storage.publish_output(produced, "t1_a_protected.mp4")
    assert final.parent == settings.path("output") and not produced.exists()
    usage = storage.usage()
    assert usage["output_bytes"] == 100 and usage["free_bytes"] > 0
    assert all(storage.check_writable().values())
    stale = storage.work_dir("old")
    (stale / "partial").write_bytes(b"z" * 50)
    past = time.time() - 7200
    os.utime(stale, (past, past))
    assert storage.sweep_temp(3600) == 50 and not stale.exists() and work.exists()
    storage.clear_work_dir("t1")
    assert not work.exists()
    assert storage.delete("output", "t1_a_protected.mp4") == 100 and storage.delete("output", "missing") == 0


def test_shared_root_from_storage_url(settings: Settings, tmp_path: Path) -> None:
    shared = tmp_path / "nfs"
    storage = open_storage(settings.model_copy(update={"storage_url": f"file://{shared}"}))
    assert storage.local_path("input", "x") == shared / "videos_input" / "x"
    with pytest.raises(ValueError):
        open_storage(settings.model_copy(update={"storage_url": "s3://bucket"}))


def test_work_dirs_per_attempt(settings: Settings) -> None:
    storage = open_storage(settings)
    first, second = storage.work_dir("abc.1"), storage.work_dir("abc.2")
    (first / "partial.mp4").write_bytes(b"1")
    (second / "partial.mp4").write_bytes(b"2")
    storage.clear_work_dir("abc.1")  # the first run ends: only its own dir goes
    assert not first.exists() and (second / "partial.mp4").read_bytes() == b"2"
    storage.clear_work_dir("abc")  # the task is over: every attempt's dir goes
    assert not second.exists()
